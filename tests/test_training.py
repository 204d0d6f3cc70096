"""The training loop: outputs, snapshots, resume, hook points, and clear errors for bad input."""
import json
import os
import pickle

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import training_hooks
from stylegan2_fair import checkpoint
from stylegan2_fair.cli.train import setup_training_options, train
from stylegan2_fair.samplers import InfiniteSampler
from stylegan2_fair.training_loop import TrainingLoop


def tiny_args(data, **overrides):
    """Loop kwargs from the real CLI option logic, shrunk so a few iterations take seconds."""
    _, args = setup_training_options(data=data, cfg='tiny', workers=0, device='cpu', **overrides)
    args['G_kwargs']['synthesis_kwargs'].update(channel_base=256, channel_max=32)
    args['G_kwargs'].update(z_dim=16, w_dim=16)
    args['D_kwargs'].update(channel_base=256, channel_max=32)
    args['batch_size'] = args['batch_gpu'] = 4
    args['D_kwargs']['epilogue_kwargs']['mbstd_group_size'] = 2
    args['total_kimg'] = 0.016  # 4 iterations
    args['kimg_per_tick'] = 0.008
    args['image_snapshot_ticks'] = args['network_snapshot_ticks'] = 1
    for key in ('num_gpus', 'fair_method', 'hook_kwargs'):
        args.pop(key)
    return args


def run_loop(run_dir, data, hooks=(), **kwargs):
    args = tiny_args(data)
    args.update(kwargs)
    loop = TrainingLoop(run_dir=str(run_dir), hooks=hooks, progress=False, **args)
    loop.train()
    return loop


def test_tiny_run_writes_official_outputs_and_finite_losses(tmp_path, toy_zip):
    loop = run_loop(tmp_path, toy_zip)
    names = set(os.listdir(tmp_path))
    for name in ('reals.png', 'fakes_init.png', 'stats.jsonl', 'network-snapshot-000000.pkl',
                 'training-state-000000.pt'):
        assert name in names
    lines = [json.loads(line) for line in open(tmp_path / 'stats.jsonl')]
    assert len(lines) == 3  # tick 0 after the first step (as in the official loop), then ticks 1 and 2
    for key in ('Loss/G/loss', 'Loss/D/loss', 'Progress/kimg', 'Timing/sec_per_kimg', 'Timing/sec_per_tick',
                'Progress/augment', 'Loss/r1_penalty', 'Loss/pl_penalty'):
        assert any(key in line for line in lines), key
    for line in lines:
        for name, value in line.items():
            if name != 'timestamp':
                assert np.isfinite(value['mean']), name
    assert lines[-1]['Progress/kimg']['mean'] == pytest.approx(loop.cur_nimg / 1000)


def test_snapshot_reloads_and_generates_what_G_ema_generates(tmp_path, toy_zip):
    loop = run_loop(tmp_path, toy_zip)
    data = checkpoint.load_network_pkl(tmp_path / 'network-snapshot-000000.pkl')
    z = torch.randn(3, loop.G.z_dim)
    c = torch.zeros(3, 0)
    assert torch.equal(data['G_ema'](z, c, noise_mode='const'), loop.G_ema(z, c, noise_mode='const'))
    assert data['training_set_kwargs']['path'] == toy_zip


def test_resume_from_state_continues_exactly(tmp_path, toy_zip):
    full = run_loop(tmp_path / 'full', toy_zip, total_kimg=0.024)  # 6 iterations, snapshots at 2 and 4
    half = run_loop(tmp_path / 'half', toy_zip, total_kimg=0.016)
    state = checkpoint.load_training_state(tmp_path / 'half' / 'training-state-000000.pt')
    assert state['cur_nimg'] == 16
    resumed = run_loop(tmp_path / 'resumed', toy_zip, total_kimg=0.024,
                       resume_pkl=str(tmp_path / 'half' / 'network-snapshot-000000.pkl'), resume_state=state)
    assert resumed.cur_nimg == full.cur_nimg == 24
    for a, b in zip(full.G.parameters(), resumed.G.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert not all(torch.equal(a, b) for a, b in zip(half.G.parameters(), resumed.G.parameters()))


def test_ada_p_rises_when_D_is_confident_on_reals(tmp_path, toy_zip):
    # Target 0 means any positive mean sign of D(real) counts as overfitting: p must go up.
    loop = run_loop(tmp_path, toy_zip, ada_target=0.0, ada_interval=1, ada_kimg=1, augment_p=0.0)
    assert float(loop.augment_pipe.p) > 0
    loop = run_loop(tmp_path / 'b', toy_zip, ada_target=1.0, ada_interval=1, ada_kimg=1, augment_p=0.5)
    assert float(loop.augment_pipe.p) < 0.5


class RecordingHook(training_hooks.TrainingHook):
    """Adds a loss to G, records indexed real logits, swaps the sampler mid-run, saves state."""
    name = 'recording'

    def __init__(self):
        self.seen_indices, self.phases, self.sampler_calls, self.steps = [], [], 0, 0

    def make_sampler(self, run):
        self.sampler_calls += 1
        if self.sampler_calls == 2:  # the swap requested below: draw only item 0 from now on
            weights = np.zeros(len(run.training_set))
            weights[0] = 1
            from stylegan2_fair.samplers import WeightedInfiniteSampler
            return WeightedInfiniteSampler(weights, run.rank, run.world_size)
        return None

    def phase_loss(self, run, phase, batch):
        self.phases.append(phase)
        if phase == 'Gmain':
            return 1000 * batch.gen_img.mean()  # large enough to dominate G's update
        return None

    def on_real_logits(self, run, logits, indices):
        self.seen_indices.append(indices.cpu().tolist())
        assert logits.shape == (len(indices), 1)

    def on_step_end(self, run):
        self.steps += 1
        if self.steps == 2:
            run.request_new_sampler()

    def state_dict(self):
        return dict(steps=self.steps)


def test_hook_adds_loss_sees_indexed_logits_and_swaps_sampler(tmp_path, toy_zip):
    hook = RecordingHook()
    loop = run_loop(tmp_path, toy_zip, hooks=[hook])
    assert {'Gmain', 'Dmain', 'Greg', 'Dreg'} <= set(hook.phases)
    assert hook.sampler_calls == 2
    assert all(0 <= i < 64 for batch in hook.seen_indices for i in batch)
    assert hook.seen_indices[-1] == [0, 0, 0, 0]  # after the swap only item 0 is drawn
    state = checkpoint.load_training_state(tmp_path / 'training-state-000000.pt')
    assert state['hooks']['recording'] == dict(steps=4)


def test_hook_loss_changes_G_update(tmp_path, toy_zip):
    torch.manual_seed(0)
    plain = run_loop(tmp_path / 'a', toy_zip, total_kimg=0.004)
    hooked = run_loop(tmp_path / 'b', toy_zip, hooks=[RecordingHook()], total_kimg=0.004)
    # Same seeds, same data: only the hook's term differs, and it pushes images darker.
    diff = [(a - b).abs().max() for a, b in zip(plain.G.parameters(), hooked.G.parameters())]
    assert max(diff) > 0
    z = torch.randn(8, plain.G.z_dim)
    c = torch.zeros(8, 0)
    assert hooked.G(z, c, noise_mode='const').mean() < plain.G(z, c, noise_mode='const').mean()


def test_cli_dry_run_and_fair_method_listing(tmp_path, toy_zip):
    result = CliRunner().invoke(train, ['--outdir', str(tmp_path), '--data', toy_zip, '--cfg=tiny', '--dry-run'])
    assert result.exit_code == 0, result.output
    assert 'Dry run' in result.output and not os.listdir(tmp_path)
    result = CliRunner().invoke(train, ['--outdir', str(tmp_path), '--data', toy_zip, '--fair-method=nosuch', '-n'])
    assert result.exit_code != 0 and "unknown fair method 'nosuch'" in result.output


def unlabeled_copy(toy_zip, path, dataset_json=True):
    """toy_zip with labels=None in dataset.json, or with no dataset.json at all."""
    import zipfile
    with zipfile.ZipFile(toy_zip) as src, zipfile.ZipFile(path, 'w') as dst:
        for name in src.namelist():
            if name != 'dataset.json':
                dst.writestr(name, src.read(name))
            elif dataset_json:
                dst.writestr(name, json.dumps(dict(labels=None)))
    return str(path)


@pytest.mark.parametrize('dataset_json', [True, False], ids=['labels-null', 'no-dataset-json'])
def test_unconditional_training_takes_a_dataset_without_labels(tmp_path, toy_zip, dataset_json):
    data = unlabeled_copy(toy_zip, tmp_path / 'unlabeled.zip', dataset_json)
    result = CliRunner().invoke(train, ['--outdir', str(tmp_path / 'out'), '--data', data, '--cfg=tiny', '-n'])
    assert result.exit_code == 0, result.output
    assert '"use_labels": false' in result.output
    _, args = setup_training_options(data=data, cfg='tiny', workers=0, device='cpu')
    assert args['training_set_kwargs']['use_labels'] is False


@pytest.mark.parametrize('case', ['missing', 'corrupt', 'cond-without-labels', 'outdir-is-file', 'bad-gpus',
                                  'more-gpus-than-the-machine', 'missing-detector', 'bad-detector'])
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, toy_zip, case, monkeypatch):
    outdir = tmp_path / 'out'
    args = ['--outdir', str(outdir), '--data', toy_zip, '--cfg=tiny', '--kimg=1', '--workers=0']
    expect = {'missing': 'no such file', 'corrupt': 'zip', 'cond-without-labels': '--cond',
              'outdir-is-file': 'is a file', 'bad-gpus': 'power of two',
              'more-gpus-than-the-machine': '--gpus=2 but this machine shows 1 GPU(s)',
              'missing-detector': 'inception-2015-12-05.pt was not found',
              'bad-detector': 'no such file or folder'}[case]
    if case == 'missing':
        args[3] = str(tmp_path / 'nope.zip')
    elif case == 'corrupt':
        bad = tmp_path / 'bad.zip'
        bad.write_bytes(b'not a zip at all')
        args[3] = str(bad)
    elif case == 'cond-without-labels':
        args[3] = unlabeled_copy(toy_zip, tmp_path / 'unlabeled.zip')
        args.append('--cond=1')
    elif case == 'outdir-is-file':
        outdir.write_text('precious')
    elif case == 'bad-gpus':
        args.append('--gpus=3')
    elif case == 'more-gpus-than-the-machine':
        monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
        monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
        args += ['--device=cuda', '--gpus=2']
    elif case in ('missing-detector', 'bad-detector'):
        monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'empty-cache'))
        args.append('--metrics=fid50k_full')
        if case == 'bad-detector':
            args.append(f'--detector=inception={tmp_path / "nope.pt"}')
    result = CliRunner().invoke(train, args)
    assert result.exit_code != 0
    assert 'Traceback' not in result.output
    assert expect in result.output, result.output
    if case == 'outdir-is-file':
        assert outdir.read_text() == 'precious'
    else:
        assert not outdir.exists() or not os.listdir(outdir)


def test_resume_with_mismatched_shapes_lists_the_names(tmp_path, toy_zip):
    loop = run_loop(tmp_path / 'a', toy_zip, total_kimg=0.004)
    args = tiny_args(toy_zip)
    args['G_kwargs']['synthesis_kwargs'].update(channel_max=16)
    args.update(total_kimg=0.004, resume_pkl=str(tmp_path / 'a' / 'network-snapshot-000000.pkl'))
    with pytest.raises(Exception) as info:
        TrainingLoop(run_dir=str(tmp_path / 'b'), progress=False, **args).train()
    assert 'synthesis.b8.conv0.weight' in str(info.value) and '--resume-arch=1' in str(info.value)


@pytest.mark.slow
def test_cli_tiny_training_for_two_kimg_then_resume_from_its_pickle(tmp_path, toy_zip):
    args = ['--outdir', str(tmp_path), '--data', toy_zip, '--cfg=tiny', '--kimg=2', '--workers=0', '--snap=1']
    result = CliRunner().invoke(train, args)
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / sorted(os.listdir(tmp_path))[0]
    pkl = run_dir / 'network-snapshot-000002.pkl'
    assert pkl.exists() and (run_dir / 'fakes000002.png').exists() and (run_dir / 'log.txt').exists()
    result = CliRunner().invoke(train, args[:-2] + ['--kimg=1', f'--resume={pkl}'])
    assert result.exit_code == 0, result.output
    assert 'Resuming from' in result.output


def standin_inception_folder(tmp_path):
    """A folder holding a random-weight stand-in of the official Inception detector file."""
    from stylegan2_fair.metrics import detectors
    folder = tmp_path / 'detectors'
    folder.mkdir()
    detectors.save_standin_detector('inception', str(folder / detectors.DETECTOR_FILES['inception']), size=32,
                                    tiny=True)
    return folder


def test_detector_option_reaches_the_metrics_of_the_run(tmp_path, toy_zip, monkeypatch):
    folder = standin_inception_folder(tmp_path)
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'empty-cache'))
    _, args = setup_training_options(data=toy_zip, cfg='tiny', workers=0, device='cpu', metrics='fid50k_full',
                                     detector=(str(folder),))
    assert args['metrics'] == ['fid50k_full'] and args['metric_kwargs']['detector_search'] == (str(folder),)


def test_metrics_run_on_each_snapshot_during_training(tmp_path, toy_zip, monkeypatch):
    folder = standin_inception_folder(tmp_path)
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    run_loop(tmp_path / 'run', toy_zip, metrics=['fid16'],
             metric_kwargs=dict(detector_search=[str(folder)], batch_size=8))
    lines = [json.loads(line) for line in open(tmp_path / 'run' / 'metric-fid16.jsonl')]
    assert len(lines) == 3  # one per snapshot (every tick here, tick 0 included)
    assert lines[-1]['snapshot_pkl'] == 'network-snapshot-000000.pkl'
    assert np.isfinite(lines[-1]['results']['fid16'])


DEVICE_OPS = [('cpu', 'ref')] + ([('cuda', 'ref'), ('cuda', 'cuda')] if torch.cuda.is_available() else [])


@pytest.mark.parametrize('device,ops', DEVICE_OPS)
def test_augmented_reals_reach_r1_on_every_device(tmp_path, toy_zip, monkeypatch, device, ops):
    # R1 differentiates D's gradient w.r.t. augmented reals: every op of the augmentation (grid_sample
    # included: torch's own has no second derivative on CUDA) must be twice differentiable on the device.
    from stylegan2_fair import augment
    monkeypatch.setenv('STYLEGAN2_FAIR_OPS', ops)
    resamplings = []

    def counted_grid_sample(*args, **kwargs):
        resamplings.append(args[0].requires_grad)
        return augment_grid_sample(*args, **kwargs)
    augment_grid_sample = augment.grid_sample
    monkeypatch.setattr(augment, 'grid_sample', counted_grid_sample)
    loop = run_loop(tmp_path, toy_zip, device=device, augment_p=1.0, ada_target=None, D_reg_interval=1)
    lines = [json.loads(line) for line in open(tmp_path / 'stats.jsonl')]
    r1 = [line['Loss/r1_penalty']['mean'] for line in lines if 'Loss/r1_penalty' in line]
    assert len(r1) == len(lines) and all(np.isfinite(r1)) and max(r1) > 0
    assert float(loop.augment_pipe.p) == 1.0 and any(resamplings)  # R1's reals went through grid_sample


def test_gan_loss_option_reaches_the_loss_and_the_run_description(tmp_path, toy_zip):
    desc, args = setup_training_options(data=toy_zip, cfg='tiny', workers=0, device='cpu', gan_loss='hinge')
    assert args['loss_kwargs']['gan_loss'] == 'hinge' and desc.endswith('-hinge')
    _, plain = setup_training_options(data=toy_zip, cfg='tiny', workers=0, device='cpu')
    assert 'gan_loss' not in plain['loss_kwargs']  # the official loss, and official training options
    result = CliRunner().invoke(train, ['--outdir', str(tmp_path), '--data', toy_zip, '--cfg=tiny',
                                        '--gan-loss=wgan', '-n'])
    assert result.exit_code != 0 and "'wgan' is not one of 'ns', 'hinge'" in result.output


@pytest.mark.parametrize('rank', [0, 1])
def test_report0_names_the_stat_on_every_rank_with_rank0_values_only(rank):
    # The official training_stats needs each name reported on every rank; only rank 0's values count.
    from stylegan2_fair.training_loop import TrainingRun

    class Loop:
        pass
    loop = Loop()
    loop.rank = rank
    seen = []
    run = TrainingRun(loop)
    run.report = lambda name, value: seen.append((name, value))
    run.report0('Dia/score', [1.0, 2.0])
    assert seen == [('Dia/score', [1.0, 2.0] if rank == 0 else [])]


def test_batch_that_does_not_split_into_mbstd_groups_is_refused_before_training(tmp_path, toy_zip):
    result = CliRunner().invoke(train, ['--outdir', str(tmp_path), '--data', toy_zip, '--cfg=tiny', '--batch=6', '-n'])
    assert result.exit_code != 0 and 'Traceback' not in result.output
    assert 'minibatch-std groups of 4' in result.output and '--batch=8' in result.output
    _, args = setup_training_options(data=toy_zip, cfg='tiny', batch=2, workers=0, device='cpu')  # group = batch
    assert args['batch_gpu'] == 2


def test_nhwc_puts_the_fp16_layers_in_channels_last(toy_zip):
    _, args = setup_training_options(data=toy_zip, cfg='tiny', nhwc=True, workers=0, device='cpu')
    assert args['G_kwargs']['synthesis_kwargs']['fp16_channels_last'] is True
    assert args['D_kwargs']['block_kwargs']['fp16_channels_last'] is True
    from stylegan2_fair.networks import Discriminator
    D = Discriminator(c_dim=0, img_resolution=16, img_channels=3, **{**args['D_kwargs'], 'num_fp16_res': 4})
    assert any(getattr(block, 'channels_last', False) for block in D.modules())


def test_home_relative_paths_after_an_equals_sign_are_expanded(tmp_path, toy_zip, monkeypatch):
    # The shell does not expand ~ in --data=~/x.zip; the tool must, or it makes a literal ./~ folder.
    import shutil
    home = tmp_path / 'home'
    home.mkdir()
    shutil.copy(toy_zip, home / 'x.zip')
    monkeypatch.setenv('HOME', str(home))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(train, ['--outdir=~/runs', '--data=~/x.zip', '--cfg=tiny', '--resume=noresume', '-n'])
    assert result.exit_code == 0, result.output
    assert f'Output directory:   {home}/runs/00000-' in result.output and not (tmp_path / '~').exists()


@pytest.mark.parametrize('method', ['fairness', 'reweight'])
def test_missing_classifier_file_is_a_clear_error_before_the_run_dir(tmp_path, toy_zip, method):
    outdir = tmp_path / 'out'
    result = CliRunner().invoke(train, ['--outdir', str(outdir), '--data', toy_zip, '--cfg=tiny', '--kimg=1',
                                        '--workers=0', f'--fair-method={method}',
                                        f'--classifier=labels:{tmp_path}/nope.pt'])
    assert result.exit_code != 0 and 'Traceback' not in result.output
    assert 'nope.pt: no such file' in result.output and 'train-classifier' in result.output
    assert not outdir.exists() or not os.listdir(outdir)
