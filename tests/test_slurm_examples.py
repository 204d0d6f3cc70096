"""examples/slurm/*.sbatch: their train.py commands parse, and the scripts run under a simulated SLURM.

The simulation puts stand-ins for `srun` and `scontrol` first on PATH: srun starts SLURM_NTASKS local
processes with the variables a real job step has (SLURM_PROCID, SLURM_LOCALID, SLURM_STEP_ID, ...)
and passes signals on to them, as srun does; scontrol records requeues and names the node.
"""
import glob
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from stylegan2_fair import checkpoint
from stylegan2_fair.cli.train import train
from stylegan2_fair.preemption import PREEMPTED_EXIT_CODE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(REPO, 'examples', 'slurm', '*.sbatch')))
# Appended to each script's command (click keeps the last value): a CPU run of a few iterations.
FEW_ITERATIONS = ('--cfg=tiny --kimg=1 --batch=64 --workers=0 --device=cpu --aug=noaug --kimg-per-tick=0.5 '
                  '--snap=1 --dist-timeout=60')

FAKE_SRUN = '''#!{python}
"""srun on one machine: SLURM_NTASKS local tasks with a job step's variables; signals passed on."""
import os, signal, subprocess, sys
command = sys.argv[1:]
while command and command[0].startswith('-'):
    command.pop(0)
ntasks = int(os.environ.get('SLURM_NTASKS', '1'))
tasks = []
for rank in range(ntasks):
    env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NODEID='0', SLURM_STEP_ID='0',
               SLURM_STEP_NUM_TASKS=str(ntasks), SLURM_STEP_NODELIST=os.environ['SLURM_JOB_NODELIST'])
    tasks.append(subprocess.Popen(command, env=env))

def forward(signum, _frame):
    for task in tasks:
        if task.poll() is None:
            task.send_signal(signum)
for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
    signal.signal(sig, forward)
codes = [task.wait() for task in tasks]
sys.exit(max(code if code >= 0 else 128 - code for code in codes))
'''

FAKE_SCONTROL = '''#!/bin/bash
case "$1" in
    requeue) echo "requeue $2" >> "$SCONTROL_LOG" ;;
    show) echo localhost ;;
esac
'''


def script(name):
    return os.path.join(REPO, 'examples', 'slurm', name)


def training_command(path):
    """train.py's arguments in an sbatch script (continuation lines joined, shell variables kept)."""
    text = re.sub(r'\\\n', ' ', open(path).read())
    commands = [words for words in (shlex.split(line, comments=True) for line in text.splitlines())
                if 'train.py' in words]
    assert len(commands) == 1, f'{path}: expected one command running train.py, found {len(commands)}'
    words = [word for word in commands[0] if word != '&']
    return words[words.index('train.py') + 1:]


def expand(words, **values):
    out = []
    for word in words:
        if word == '${TRAIN_ARGS:-}':
            continue
        for name, value in values.items():
            word = word.replace(f'${name}', value)
        out.append(word)
    return out


def test_there_are_single_node_multi_node_torchrun_and_requeue_examples():
    names = {os.path.basename(path) for path in SCRIPTS}
    assert {'train_single_node.sbatch', 'train_multi_node.sbatch', 'train_multi_node_torchrun.sbatch',
            'train_requeue.sbatch'} <= names
    assert os.path.isfile(os.path.join(REPO, 'examples', 'slurm', 'README.md'))


@pytest.mark.parametrize('path', SCRIPTS, ids=os.path.basename)
def test_sbatch_script_is_valid_bash_and_its_train_command_parses(path, toy_zip, tmp_path):
    subprocess.run(['bash', '-n', path], check=True)
    assert re.search(r'^#SBATCH --nodes=\d+', open(path).read(), re.M)
    words = training_command(path)
    assert '--auto-resume' in words  # a resubmitted or requeued job continues the run, finetunes included
    assert not any(word.startswith('--gpus') for word in words)  # the world size comes from srun/torchrun
    args = expand(words, OUTDIR=str(tmp_path / 'runs'), DATA=toy_zip)
    result = CliRunner().invoke(train, args + ['--device=cpu', '--dry-run'])
    assert result.exit_code == 0, result.output
    assert 'Dry run' in result.output


def test_requeue_script_requeues_on_the_exit_status_train_py_uses():
    text = open(script('train_requeue.sbatch')).read()
    assert re.search(r'^#SBATCH --signal=B:USR1@\d+', text, re.M) and re.search(r'^#SBATCH --requeue', text, re.M)
    assert f'PREEMPTED={PREEMPTED_EXIT_CODE} ' in text
    assert 'scontrol requeue "$SLURM_JOB_ID"' in text and "trap 'forward USR1' USR1" in text


# Running the scripts ------------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def slurm_env(tmp_path, data, outdir, ntasks=2, **extra):
    bin_dir = tmp_path / 'fake-slurm-bin'
    if not bin_dir.exists():
        bin_dir.mkdir()
        (bin_dir / 'srun').write_text(FAKE_SRUN.format(python=sys.executable))
        (bin_dir / 'scontrol').write_text(FAKE_SCONTROL)
        for tool in ('srun', 'scontrol'):
            (bin_dir / tool).chmod(0o755)
    env = dict(os.environ, PATH=f'{bin_dir}:{os.path.dirname(sys.executable)}:{os.environ["PATH"]}',
               SLURM_JOB_ID='4242', SLURM_NTASKS=str(ntasks), SLURM_NNODES='1', SLURM_JOB_NODELIST='localhost',
               MASTER_PORT=str(free_port()), SCONTROL_LOG=str(tmp_path / 'scontrol.log'),
               DATA=data, OUTDIR=str(outdir), PYTHON=sys.executable, OMP_NUM_THREADS='1', TRAIN_ARGS=FEW_ITERATIONS)
    env.update(extra)
    return env


def start_script(name, env):
    # A session of its own, so that cleaning up also stops srun's tasks.
    return subprocess.Popen(['bash', script(name)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def stop_all(*procs):
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def run_script(name, env, timeout=600):
    proc = start_script(name, env)
    try:
        output, _ = proc.communicate(timeout=timeout)
    finally:
        stop_all(proc)
    return proc.returncode, output


def final_snapshot(outdir):
    (path,) = outdir.glob('*/network-snapshot-000001.pkl')
    return checkpoint.load_network_pkl(path)


def test_single_node_script_trains_two_ranks_under_simulated_srun(tmp_path, toy_zip):
    code, output = run_script('train_single_node.sbatch', slurm_env(tmp_path, toy_zip, tmp_path / 'runs'))
    assert code == 0, output[-3000:]
    assert 'Number of GPUs:     2' in output  # the world size came from SLURM_STEP_NUM_TASKS
    (run_dir,) = (tmp_path / 'runs').iterdir()
    assert (run_dir / 'network-snapshot-000001.pkl').exists()
    log = (run_dir / 'log.txt').read_text()
    assert log.count('Training for 1 kimg') == 1  # rank 0 alone logs


@pytest.mark.slow
@pytest.mark.parametrize('name, ntasks, extra', [('train_multi_node.sbatch', 2, {}),
                                                  ('train_multi_node_torchrun.sbatch', 1, dict(GPUS_PER_NODE='2'))])
def test_multi_node_scripts_train_under_simulated_srun(tmp_path, toy_zip, name, ntasks, extra):
    env = slurm_env(tmp_path, toy_zip, tmp_path / 'runs', ntasks=ntasks, **extra)
    code, output = run_script(name, env)
    assert code == 0, output[-3000:]
    assert 'Number of GPUs:     2' in output
    assert final_snapshot(tmp_path / 'runs')['G_ema'] is not None


@pytest.mark.slow
def test_requeue_script_stops_on_usr1_requeues_and_the_requeued_job_continues_exactly(tmp_path, toy_zip):
    reference = start_script('train_single_node.sbatch', slurm_env(tmp_path, toy_zip, tmp_path / 'reference'))
    env = slurm_env(tmp_path, toy_zip, tmp_path / 'runs')
    job = start_script('train_requeue.sbatch', env)
    try:
        deadline = time.monotonic() + 300
        while not any((tmp_path / 'runs').glob('*/training-state-*.pt')):
            assert job.poll() is None, job.stdout.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@120 does before the time limit
        output, _ = job.communicate(timeout=300)
        assert job.returncode == PREEMPTED_EXIT_CODE, output[-3000:]
        assert 'got SIGUSR1' in output and 'on SIGUSR1' in output
        assert (tmp_path / 'scontrol.log').read_text() == 'requeue 4242\n'
        code, output = run_script('train_requeue.sbatch', env)  # the requeued job: the same script again
        assert code == 0, output[-3000:]
        assert 'Continuing' in output and 'training finished' in output
        assert (tmp_path / 'scontrol.log').read_text() == 'requeue 4242\n'  # no second requeue
        assert reference.wait(timeout=600) == 0, reference.stdout.read()[-3000:]
    finally:
        stop_all(job, reference)
    a, b = final_snapshot(tmp_path / 'reference'), final_snapshot(tmp_path / 'runs')
    for name in ('G', 'D', 'G_ema'):
        sa, sb = a[name].state_dict(), b[name].state_dict()
        assert all(torch.equal(sa[key], sb[key]) for key in sa), name
