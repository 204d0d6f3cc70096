"""Several processes: launch detection, a 2-process run, dead and hung ranks.

What is and is not bit-identical across process counts (batch size fixed):
- identical: the initial networks (seeded independently of the rank), the stream of dataset indices
  (one global stream, rank r taking positions r, r+W, ...), hence how often each image is drawn;
  and, within a run, the weights of G/D/G_ema and the optimiser states on every rank (averaged
  gradients). The buffer mapping.w_avg (running mean of W, used only for truncation) is tracked by
  each rank from its own latents, as in the official code; snapshots hold rank 0's.
- not identical: per-rank latents, labels and augmentations (each rank has its own RNG stream), the
  minibatch-std groups (they never span ranks), the order of float sums in the gradient all-reduce,
  so the trained weights of a 1-process and a 2-process run differ.
"""
import collections
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

import training_hooks
from stylegan2_fair import distributed
from stylegan2_fair.cli.train import train
from stylegan2_fair.training_loop import TrainingLoop
from test_training import tiny_args

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


# Launch detection ---------------------------------------------------------------------------------

@pytest.mark.parametrize('nodelist, first', [('gpu07', 'gpu07'), ('gpu[03-05,07],cpu1', 'gpu03'),
                                              ('a1,b[1-2]', 'a1'), ('rack1-[2-3]-n[04-05]', 'rack1-2-n04'),
                                              ('node[010,002]', 'node010')])
def test_first_slurm_host_expands_the_first_bracket_entry(nodelist, first):
    assert distributed.first_slurm_host(nodelist) == first


def test_launch_env_reads_torchrun_and_srun_steps_but_not_the_batch_script():
    torchrun = dict(RANK='3', WORLD_SIZE='8', LOCAL_RANK='1', MASTER_ADDR='n1', MASTER_PORT='1234')
    assert distributed.launch_env(torchrun) == (3, 8, 1, 'n1', '1234')
    srun = dict(SLURM_PROCID='5', SLURM_NTASKS='8', SLURM_STEP_NUM_TASKS='8', SLURM_LOCALID='1', SLURM_STEP_ID='0',
                SLURM_STEP_NODELIST='gpu[03-04]', SLURM_JOB_ID='123456')
    assert distributed.launch_env(srun) == (5, 8, 1, 'gpu03', str(20000 + 123456 % 20000))
    batch_script = {k: v for k, v in srun.items() if not k.startswith('SLURM_STEP')}
    assert distributed.launch_env(batch_script) is None  # its `train.py --gpus=8` spawns the ranks itself
    assert distributed.launch_env(dict(srun, SLURM_STEP_ID='4294967291')) is None  # the batch step's id
    assert distributed.launch_env(dict(srun, SLURM_STEP_NUM_TASKS='1', SLURM_NTASKS='1')) is None


def test_gpus_that_disagree_with_torchrun_is_a_clear_error(tmp_path, toy_zip, monkeypatch):
    monkeypatch.setenv('RANK', '0')
    monkeypatch.setenv('WORLD_SIZE', '2')
    args = ['--outdir', str(tmp_path), '--data', toy_zip, '--cfg=tiny', '--device=cpu', '--dry-run']
    result = CliRunner().invoke(train, args + ['--gpus=4'])
    assert result.exit_code != 0 and '--gpus=4 but torchrun started 2 processes' in result.output
    result = CliRunner().invoke(train, args)  # no --gpus: the world size is taken from torchrun
    assert result.exit_code == 0, result.output
    assert 'Number of GPUs:     2' in result.output


# Watchdog -----------------------------------------------------------------------------------------

def test_watchdog_names_a_silent_rank_and_a_failed_one():
    port = free_port()
    master = torch.distributed.TCPStore('127.0.0.1', port, is_master=True, wait_for_workers=False)
    calls = []
    watchdog = distributed.PeerWatchdog(0, 2, timeout_sec=1.0, host='127.0.0.1', port=port,
                                        exit_fn=lambda: calls.append(time.monotonic()))
    try:
        start = time.monotonic()
        watchdog.start()
        while not calls and time.monotonic() - start < 30:
            time.sleep(0.05)
        assert calls, 'the watchdog never noticed that rank 1 sends no heartbeat'
        assert calls[0] - start >= 1.0  # not before the timeout
        assert master.get(watchdog.prefix + 'lost').decode().startswith('rank 1 stopped responding')
        assert watchdog.explain(wait_sec=0.3) == 'rank 1 stopped responding (killed, crashed or hung)'
        master.set(watchdog.prefix + 'failed/1', 'ValueError: bad pixel')
        master.get(watchdog.prefix + 'failed/1')  # set() does not wait for the server: a round trip does
        assert watchdog.explain(wait_sec=0.3) == 'rank 1 failed: ValueError: bad pixel'
    finally:
        watchdog.stop()


# A 2-process run ----------------------------------------------------------------------------------

class IndexRecorder(training_hooks.TrainingHook):
    """Records the dataset indices of each step's reals and a hash of the initial G."""
    name = 'index-recorder'

    def __init__(self):
        self.steps, self.current, self.init_digest = [], [], None

    def setup(self, run):
        self.init_digest = distributed.digest(run.G.state_dict())

    def on_real_logits(self, run, logits, indices):
        self.current.extend(indices.tolist())

    def on_step_end(self, run):
        self.steps.append(self.current)
        self.current = []


def _record_run(local_rank, world, port, run_dir, data, out):
    torch.set_num_threads(1)
    if world > 1:
        distributed.init_process_group(local_rank, world, '127.0.0.1', port, 'cpu', timeout_sec=120)
    hook = IndexRecorder()
    loop = TrainingLoop(run_dir=run_dir, hooks=[hook], progress=False, **tiny_args(data))
    loop.train()
    result = dict(steps=hook.steps, init=hook.init_digest, G=loop.G.state_dict(), G_ema=loop.G_ema.state_dict(),
                  G_opt=distributed.digest(loop.phases[0]['opt'].state_dict()))
    torch.save(result, os.path.join(out, f'rank{local_rank}.pt'))
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


def test_two_processes_draw_each_image_as_often_as_one_and_keep_identical_weights(tmp_path, toy_zip):
    threads = torch.get_num_threads()
    try:
        _record_run(0, 1, None, str(tmp_path / 'one'), toy_zip, str(tmp_path))
    finally:
        torch.set_num_threads(threads)
    one = torch.load(tmp_path / 'rank0.pt', weights_only=False)
    (tmp_path / 'two').mkdir()
    codes = distributed.spawn(_record_run, 2, (2, free_port(), str(tmp_path / 'two'), toy_zip, str(tmp_path / 'two')),
                              grace_sec=60)
    assert codes == [0, 0]
    ranks = [torch.load(tmp_path / 'two' / f'rank{r}.pt', weights_only=False) for r in range(2)]

    # Rank r takes global stream positions r, r+2, ...: interleaved, the ranks draw what one process draws.
    assert len(ranks[0]['steps']) == len(one['steps']) == 4
    for step, indices in enumerate(one['steps']):
        merged = [None] * len(indices)
        merged[0::2], merged[1::2] = ranks[0]['steps'][step], ranks[1]['steps'][step]
        assert merged == indices
    drawn = lambda run: collections.Counter(i for step in run['steps'] for i in step)
    assert drawn(one) == drawn(ranks[0]) + drawn(ranks[1])

    # Same initial networks for any process count; the ranks stay identical while training, except
    # the running mean of W, which (as in the official code) each rank tracks from its own latents.
    assert one['init'] == ranks[0]['init'] == ranks[1]['init']
    for name in ('G', 'G_ema'):
        for key, value in ranks[0][name].items():
            assert torch.equal(value, ranks[1][name][key]) != (key == 'mapping.w_avg'), (name, key)
    assert ranks[0]['G_opt'] == ranks[1]['G_opt']
    # Different latents per rank: the 2-process weights differ from the 1-process ones.
    assert not all(torch.equal(v, ranks[0]['G'][k]) for k, v in one['G'].items())
    # Rank 0 alone writes the outputs: one stats line per tick (0 after the first step, 1, 2), not one per rank.
    assert len((tmp_path / 'two' / 'stats.jsonl').read_text().splitlines()) == 3


# A dead rank --------------------------------------------------------------------------------------

def _train_command(outdir, data, *extra):
    return [sys.executable, os.path.join(REPO, 'train.py'), f'--outdir={outdir}', f'--data={data}', '--cfg=tiny',
            '--batch=32', '--workers=0', '--device=cpu', '--aug=noaug', '--kimg-per-tick=0.25', *extra]


def _wait_for(predicate, timeout, procs=()):
    deadline = time.monotonic() + timeout
    while not predicate():
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f'process exited early with {p.returncode}:\n{p.stdout.read()}')
        if time.monotonic() > deadline:
            raise AssertionError('timed out waiting')
        time.sleep(0.2)


def test_a_rank_killed_with_sigkill_makes_the_other_exit_nonzero_naming_it(tmp_path, toy_zip):
    timeout = 30
    command = _train_command(tmp_path, toy_zip, '--kimg=10', '--snap=1', f'--dist-timeout={timeout}')
    port = str(free_port())
    procs = []
    try:
        for rank in range(2):  # what torchrun does: env:// with RANK and WORLD_SIZE
            env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE='2', MASTER_ADDR='127.0.0.1',
                       MASTER_PORT=port, OMP_NUM_THREADS='1')
            procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True))
        _wait_for(lambda: any(tmp_path.glob('*/training-state-*.pt')), 240, procs)
        procs[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        output, _ = procs[0].communicate(timeout=timeout + 60)
        assert time.monotonic() - killed < timeout + 30
        assert procs[0].returncode != 0
        assert 'rank 1 stopped responding' in output, output[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.slow
def test_spawned_ranks_a_killed_one_makes_the_command_fail_naming_it(tmp_path, toy_zip):
    import psutil
    command = _train_command(tmp_path, toy_zip, '--kimg=10', '--snap=1', '--gpus=2', '--dist-timeout=30')
    proc = subprocess.Popen(command, env=dict(os.environ, OMP_NUM_THREADS='1'), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: any(tmp_path.glob('*/training-state-*.pt')), 240, [proc])
        children = psutil.Process(proc.pid).children()
        ranks = [child for child in children if 'spawn_main' in ' '.join(child.cmdline())]  # not the resource tracker
        assert len(ranks) == 2
        ranks[1].kill()
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 1
        assert re.search(r'training failed: .*rank [01] was killed by SIGKILL', output), output[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
