"""Preemption: stop on a signal at any step, save everything, and continue to the very same weights."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import training_hooks
from stylegan2_fair import checkpoint, distributed
from stylegan2_fair.classifiers import Classifier
from stylegan2_fair.cli.train import find_resume_state, plan_run_dir, setup_training_options
from stylegan2_fair.preemption import PREEMPTED_EXIT_CODE, StopSignals
from stylegan2_fair.training_loop import TrainingLoop
from test_training import tiny_args

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stop_after(steps):
    calls = []

    def abort_fn():
        calls.append(1)
        return len(calls) == steps
    return abort_fn


def run_loop(run_dir, data, hooks=(), **overrides):
    args = tiny_args(data)
    args.update(total_kimg=0.028, **overrides)  # 7 steps of 4 images; ticks end at steps 1, 3, 5, 7
    loop = TrainingLoop(run_dir=str(run_dir), hooks=list(hooks), progress=False, **args)
    status = loop.train()
    return loop, status


def assert_same_networks(a, b):
    for name in ('G', 'D', 'G_ema'):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f'{name}.{key} differs'


# Signals ------------------------------------------------------------------------------------------

def test_stop_signals_set_a_flag_instead_of_killing_and_restore_the_old_handlers():
    before = signal.getsignal(signal.SIGUSR1)
    with StopSignals() as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while not stop() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stop() and stop.received == 'SIGUSR1'
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal changes nothing
        time.sleep(0.05)
        assert stop.received == 'SIGUSR1'
    assert signal.getsignal(signal.SIGUSR1) is before


# The loop -----------------------------------------------------------------------------------------

class EndRecorder(training_hooks.TrainingHook):
    name = 'end-recorder'
    ended = False

    def on_train_end(self, run):
        self.ended = True


def test_stop_mid_tick_then_resume_gives_the_uninterrupted_weights(tmp_path, toy_zip, one_thread):
    full, status = run_loop(tmp_path / 'full', toy_zip, ada_interval=1)
    assert status == 'done'
    hook = EndRecorder()
    half, status = run_loop(tmp_path / 'run', toy_zip, hooks=[hook], abort_fn=stop_after(4), ada_interval=1)
    assert status == 'stopped' and half.cur_nimg == 16 and not hook.ended  # the run is not over
    state = checkpoint.load_training_state(tmp_path / 'run' / 'training-state-000000.pt')
    # Stopped after step 4, in the middle of tick 2 (steps 4-5).
    assert (state['cur_nimg'], state['cur_tick'], state['tick_start_nimg'], state['batch_idx']) == (16, 2, 12, 4)
    resumed, status = run_loop(tmp_path / 'run', toy_zip, ada_interval=1, resume_state=state,
                               resume_pkl=str(tmp_path / 'run' / 'network-snapshot-000000.pkl'))
    assert status == 'done' and resumed.cur_nimg == full.cur_nimg == 28
    assert resumed.cur_tick == full.cur_tick
    assert_same_networks(full, resumed)
    assert float(resumed.augment_pipe.p) == float(full.augment_pipe.p) > 0
    assert float(resumed.loss.pl_mean) == float(full.loss.pl_mean)


def snapshot_counting_loop(saved):
    """A TrainingLoop that appends cur_nimg to `saved` at every snapshot."""
    class CountingLoop(TrainingLoop):
        def save_snapshot(self):
            saved.append(self.cur_nimg)
            super().save_snapshot()
    return CountingLoop


def test_a_stop_at_a_snapshot_tick_writes_the_state_once(tmp_path, toy_zip):
    saved = []
    CountingLoop = snapshot_counting_loop(saved)
    args = tiny_args(toy_zip)
    args.update(total_kimg=0.028)
    status = CountingLoop(run_dir=str(tmp_path), progress=False, abort_fn=stop_after(3), **args).train()
    assert status == 'stopped' and saved == [4, 12]  # tick 0's snapshot, then tick 1's, which the stop shares


def test_snap_minutes_and_kimg_per_tick_reach_the_loop(tmp_path, toy_zip):
    _, args = setup_training_options(data=toy_zip, cfg='tiny', snap=100, snap_minutes=0.0, kimg_per_tick=0.5)
    assert (args['snapshot_minutes'], args['kimg_per_tick'], args['network_snapshot_ticks']) == (0.0, 0.5, 100)
    saved = []
    CountingLoop = snapshot_counting_loop(saved)
    args = tiny_args(toy_zip)
    args.update(total_kimg=0.036, kimg_per_tick=0.012, network_snapshot_ticks=100, image_snapshot_ticks=100,
                snapshot_minutes=0.0)  # every tick is at least 0 minutes after the last snapshot
    CountingLoop(run_dir=str(tmp_path), progress=False, **args).train()
    assert saved == [4, 16, 28, 36]  # by ticks (tick 0 after the first step, the end) only [4, 36]
    ticks = (tmp_path / 'stats.jsonl').read_text().splitlines()
    assert len(ticks) == 4


# Finding the state to continue --------------------------------------------------------------------

def test_resume_auto_takes_the_newest_complete_state_of_the_same_run(tmp_path):
    def touch(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b'x')
    run0, run1 = tmp_path / '00000-toy-tiny', tmp_path / '00001-toy-tiny'
    touch(run0 / 'network-snapshot-000004.pkl')
    touch(run0 / 'training-state-000004.pt')
    touch(run1 / 'network-snapshot-000002.pkl')
    touch(run1 / 'training-state-000002.pt')
    touch(run1 / 'training-state-000003.pt')       # its snapshot was never written: not complete
    touch(run1 / 'network-snapshot-000005.pkl')   # a snapshot whose state was not written yet
    touch(tmp_path / '00002-other-tiny' / 'network-snapshot-000009.pkl')
    touch(tmp_path / '00002-other-tiny' / 'training-state-000009.pt')
    found = find_resume_state(str(tmp_path), 'toy-tiny', 'auto')
    assert found == (str(run1), str(run1 / 'network-snapshot-000002.pkl'), str(run1 / 'training-state-000002.pt'))
    assert plan_run_dir(str(tmp_path), 'toy-tiny', 'auto')[1:] == ((found[1], found[2]), False)
    assert plan_run_dir(str(tmp_path), 'new-desc', 'auto') == (str(tmp_path / '00003-new-desc'), None, True)


def finetune_run_with_a_state(run, start_pkl):
    run.mkdir(parents=True)
    (run / 'training_options.json').write_text(json.dumps(dict(resume_pkl=str(start_pkl))))
    (run / 'network-snapshot-000008.pkl').write_bytes(b'x')
    (run / 'training-state-000008.pt').write_bytes(b'x')
    return str(run), (str(run / 'network-snapshot-000008.pkl'), str(run / 'training-state-000008.pt'))


def test_auto_resume_continues_a_finetune_and_only_starts_from_its_pickle_once(tmp_path):
    out, desc, start = str(tmp_path / 'out'), 'toy-tiny-resumebiased', str(tmp_path / 'biased.pkl')
    assert plan_run_dir(out, desc, start, auto_resume=True, start_pkl=start)[1:] == (None, True)
    run_dir, files = finetune_run_with_a_state(tmp_path / 'out' / f'00000-{desc}', start)
    assert plan_run_dir(out, desc, start, auto_resume=True, start_pkl=start) == (run_dir, files, False)
    # Without --auto-resume the official meaning holds: every launch is a new run from the pickle.
    assert plan_run_dir(out, desc, start, start_pkl=start)[1:] == (None, True)


def test_auto_resume_does_not_continue_a_finetune_of_another_pickle_with_the_same_run_name(tmp_path):
    # The run name keeps 20 characters of the pickle's name: snapshots 100 and 108 both give ...snapshot00010.
    out, desc = str(tmp_path / 'out'), 'toy-tiny-resumenetworksnapshot00010'
    start_a, start_b = tmp_path / 'network-snapshot-000100.pkl', tmp_path / 'network-snapshot-000108.pkl'
    run_a, files_a = finetune_run_with_a_state(tmp_path / 'out' / f'00000-{desc}', start_a)
    assert plan_run_dir(out, desc, str(start_b), auto_resume=True, start_pkl=str(start_b)) == \
        (str(tmp_path / 'out' / f'00001-{desc}'), None, True)
    run_b, files_b = finetune_run_with_a_state(tmp_path / 'out' / f'00001-{desc}', start_b)
    assert plan_run_dir(out, desc, str(start_a), auto_resume=True, start_pkl=str(start_a)) == (run_a, files_a, False)
    assert plan_run_dir(out, desc, str(start_b), auto_resume=True, start_pkl=str(start_b)) == (run_b, files_b, False)


def test_resume_auto_pairs_state_and_snapshot_by_file_name_whatever_the_folder_names(tmp_path):
    outdir = tmp_path / 'exp.pth-runs'   # '.pt' and 'training-state-' in folder names must not be rewritten
    run = outdir / '00000-training-state-toy.pt-tiny'
    run.mkdir(parents=True)
    (run / 'network-snapshot-000001.pkl').write_bytes(b'x')
    (run / 'training-state-000001.pt').write_bytes(b'x')
    assert find_resume_state(str(outdir), 'training-state-toy.pt-tiny', 'auto') == \
        (str(run), str(run / 'network-snapshot-000001.pkl'), str(run / 'training-state-000001.pt'))


def test_resume_auto_finds_runs_whose_names_hold_glob_characters(tmp_path):
    outdir = tmp_path / 'runs[v2]'
    run = outdir / '00000-faces[a]-tiny'
    run.mkdir(parents=True)
    (run / 'network-snapshot-000001.pkl').write_bytes(b'x')
    (run / 'training-state-000001.pt').write_bytes(b'x')
    (outdir / '00001-facesa-tiny').mkdir()  # what the unescaped pattern [a] would match instead
    assert find_resume_state(str(outdir), 'faces[a]-tiny', 'auto')[0] == str(run)


# The command line, killed with SIGTERM ------------------------------------------------------------

def train_command(outdir, data, *extra):
    return [sys.executable, os.path.join(REPO, 'train.py'), f'--outdir={outdir}', f'--data={data}', '--cfg=tiny',
            '--kimg=1', '--batch=32', '--workers=0', '--device=cpu', '--kimg-per-tick=0.25', '--snap=2',
            '--resume=auto', '--dist-timeout=60', *extra]


def wait_for(predicate, proc, timeout=300):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f'train.py exited early ({proc.returncode}):\n{proc.stdout.read()[-3000:]}')
        assert time.monotonic() < deadline, 'timed out waiting for train.py'
        time.sleep(0.1)


def final_networks(outdir):
    (pkl,) = outdir.glob('*/network-snapshot-000001.pkl')
    return checkpoint.load_network_pkl(pkl)


def assert_same_snapshots(a, b):
    for name in ('G', 'D', 'G_ema', 'augment_pipe'):
        sa, sb = a[name].state_dict(), b[name].state_dict()
        assert all(torch.equal(sa[key], sb[key]) for key in sa), name


def sigterm_then_same_command(tmp_path, data, extra=()):
    """Run train.py uninterrupted and, beside it, the same command killed with SIGTERM after its first
    snapshot and started again; return both outdirs and the stopped run's output."""
    env = dict(os.environ, OMP_NUM_THREADS='1')
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    reference = subprocess.Popen(train_command(tmp_path / 'reference', data, *extra), **pipes)
    stopped = subprocess.Popen(train_command(tmp_path / 'preempted', data, *extra), **pipes)
    try:
        wait_for(lambda: any((tmp_path / 'preempted').glob('*/training-state-*.pt')), stopped)
        stopped.send_signal(signal.SIGTERM)
        output, _ = stopped.communicate(timeout=300)
        assert stopped.returncode == PREEMPTED_EXIT_CODE, output[-3000:]
        assert 'Stopping after' in output and 'on SIGTERM' in output
        assert not any((tmp_path / 'preempted').glob('*/network-snapshot-000001.pkl'))  # it stopped early
        again = subprocess.run(train_command(tmp_path / 'preempted', data, *extra), timeout=600, **pipes)
        assert again.returncode == 0, again.stdout[-3000:]
        assert 'Continuing' in again.stdout
        assert reference.wait(timeout=600) == 0, reference.stdout.read()[-3000:]
    finally:
        for proc in (reference, stopped):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert len(list((tmp_path / 'preempted').iterdir())) == 1  # continued in the same run dir
    return output


def test_sigterm_then_the_same_command_ends_with_the_uninterrupted_weights(tmp_path, toy_zip):
    sigterm_then_same_command(tmp_path, toy_zip)
    assert_same_snapshots(final_networks(tmp_path / 'reference'), final_networks(tmp_path / 'preempted'))


def test_sigterm_during_a_finetune_then_the_same_command_continues_it_exactly(tmp_path, toy_zip):
    run_loop(tmp_path / 'start', toy_zip)  # the biased model a retrofit finetunes
    start = tmp_path / 'start' / 'network-snapshot-000000.pkl'
    output = sigterm_then_same_command(tmp_path, toy_zip, extra=[f'--resume={start}', '--resume-arch=1',
                                                                 '--lr-scale=0.1', '--auto-resume'])
    assert 'Resuming from' in output  # the first launch started from the pickle
    (run_dir,) = (tmp_path / 'preempted').iterdir()
    assert '-resumenetworksnapshot' in run_dir.name
    assert_same_snapshots(final_networks(tmp_path / 'reference'), final_networks(tmp_path / 'preempted'))


@pytest.mark.slow
def test_sigterm_on_two_spawned_processes_then_the_same_command_continues_exactly(tmp_path, toy_zip):
    output = sigterm_then_same_command(tmp_path, toy_zip, extra=['--gpus=2'])
    assert 'Number of GPUs:     2' in output
    assert_same_snapshots(final_networks(tmp_path / 'reference'), final_networks(tmp_path / 'preempted'))


# Every fairness method continues exactly ---------------------------------------------------------

class MeanColour(Classifier):
    def __init__(self):
        super().__init__(['red', 'green', 'blue'])

    def class_probabilities(self, images):
        return (4 * images.mean(dim=(2, 3))).softmax(dim=1)


# Small settings under which each method does its periodic work (records, re-matches, phase
# switches, sampler swaps) within the 7 steps, before and after the stop.
HOOK_SETTINGS = dict(
    dia=dict(record_every=0.004, phase2_kimg=0.008, window=2, aux_reg_interval=1, record_batch=64,
             refresh_kimg=0.012),
    imle=dict(lpips_backbone='random', proj_dim=16, pool_factor=2, render_batch=64, rematch='kimg:0.012'),
    fairness=dict(classifier=MeanColour()),
    reweight=dict(classifier=MeanColour()),
)


def test_every_registered_method_has_preemption_settings_here():
    missing = sorted(set(training_hooks.list_hooks()) - set(HOOK_SETTINGS))
    assert not missing, f'add settings for {missing} to HOOK_SETTINGS so their exact continuation is tested'


@pytest.mark.slow
@pytest.mark.parametrize('method', sorted(HOOK_SETTINGS))
def test_each_method_stopped_mid_tick_continues_exactly(tmp_path, toy_zip, one_thread, method):
    make = lambda: training_hooks.get_hook_class(method)(**HOOK_SETTINGS[method])
    full, _ = run_loop(tmp_path / 'full', toy_zip, hooks=[make()])
    _, status = run_loop(tmp_path / 'run', toy_zip, hooks=[make()], abort_fn=stop_after(3))
    assert status == 'stopped'
    state = checkpoint.load_training_state(tmp_path / 'run' / 'training-state-000000.pt')
    resumed, _ = run_loop(tmp_path / 'run', toy_zip, hooks=[make()], resume_state=state,
                          resume_pkl=str(tmp_path / 'run' / 'network-snapshot-000000.pkl'))
    assert_same_networks(full, resumed)
    assert distributed.digest(full.hooks[0].state_dict()) == distributed.digest(resumed.hooks[0].state_dict())


def _two_rank_run(local_rank, port, run_dir, data, method, stop_on_rank1_after, resume, out):
    torch.set_num_threads(1)
    distributed.init_process_group(local_rank, 2, '127.0.0.1', port, 'cpu', timeout_sec=120)
    overrides = {}
    if resume:
        overrides = dict(resume_state=checkpoint.load_training_state(os.path.join(run_dir, 'training-state-000000.pt')),
                         resume_pkl=os.path.join(run_dir, 'network-snapshot-000000.pkl'))
    if stop_on_rank1_after and local_rank == 1:  # only one rank is asked: both must stop together
        overrides['abort_fn'] = stop_after(stop_on_rank1_after)
    loop, status = run_loop(run_dir, data, hooks=[training_hooks.get_hook_class(method)(**HOOK_SETTINGS[method])],
                            **overrides)
    torch.save(dict(status=status, nimg=loop.cur_nimg, G=loop.G.state_dict(), D=loop.D.state_dict(),
                    G_ema=loop.G_ema.state_dict(), hook=distributed.digest(loop.hooks[0].state_dict())),
               os.path.join(out, f'{os.path.basename(run_dir)}-{"resumed-" if resume else ""}rank{local_rank}.pt'))
    torch.distributed.destroy_process_group()
    return 0


@pytest.mark.slow
@pytest.mark.parametrize('method', sorted(HOOK_SETTINGS))
def test_each_method_on_two_processes_stopped_by_one_rank_continues_exactly(tmp_path, toy_zip, method):
    import socket

    def spawn(run_dir, stop, resume):
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
        args = (port, str(tmp_path / run_dir), toy_zip, method, stop, resume, str(tmp_path))
        assert distributed.spawn(_two_rank_run, 2, args, grace_sec=120) == [0, 0]
    spawn('full', 0, False)
    spawn('run', 3, False)
    spawn('run', 0, True)
    load = lambda name: torch.load(tmp_path / f'{name}.pt', weights_only=False)
    stopped = [load(f'run-rank{r}') for r in range(2)]
    assert [s['status'] for s in stopped] == ['stopped', 'stopped'] and stopped[0]['nimg'] == stopped[1]['nimg'] == 12
    for rank in range(2):
        full, resumed = load(f'full-rank{rank}'), load(f'run-resumed-rank{rank}')
        assert resumed['status'] == 'done' and resumed['hook'] == full['hook']
        for name in ('G', 'D', 'G_ema'):
            for key, value in full[name].items():
                if rank == 0 or key != 'mapping.w_avg':  # rank 1's own running mean of W is not saved
                    assert torch.equal(value, resumed[name][key]), (rank, name, key)
