"""The patch series for the official StyleGAN2-ADA checkout, and the tool that applies it.

The tool's checks run against tiny fake git repositories. The tests marked `official` need a
checkout of NVlabs/stylegan2-ada-pytorch at d72cc7d in STYLEGAN2_ADA_DIR: they patch a clone of
it, run the patched official loss and training loop on the CPU with our hooks (in subprocesses,
so the official modules never mix with this process), and revert it.
"""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from training_hooks import official_adapter
from training_hooks.patch import (OFFICIAL_COMMIT, SERIES_DIR, PatchError, blob_id, patch_checkout, patch_upstream,
                                  read_series)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
OFFICIAL_DIR = os.environ.get('STYLEGAN2_ADA_DIR')
official = pytest.mark.skipif(not OFFICIAL_DIR, reason='set STYLEGAN2_ADA_DIR to a checkout of '
                              'NVlabs/stylegan2-ada-pytorch at d72cc7d to run the patched official code')
PATCHED_FILES = ['train.py', 'training/training_loop.py', 'training/loss.py']


# ---------------------------------------------------------------------------------------------
# The series itself (no checkout needed)


def test_series_holds_only_our_inserted_lines():
    for source in sorted(SERIES_DIR.glob('*.patch')):
        for line in source.read_text().splitlines():
            if line.startswith(('diff --git ', 'index ', '--- a/', '+++ b/')):
                continue
            if line.startswith('@@'):
                assert re.fullmatch(r'@@ -\d+,0 \+\d+(,\d+)? @@', line), f'{source.name}: {line!r} is no bare insert-only hunk'
            else:
                assert line.startswith('+') and '# stylegan2-fair' in line, f'{source.name}: {line!r}'
    assert sorted(p.path for p in read_series()) == sorted(PATCHED_FILES)


def test_series_calls_only_what_the_adapter_defines():
    added = '\n'.join(line for source in SERIES_DIR.glob('*.patch') for line in source.read_text().splitlines()
                      if line.startswith('+') and not line.startswith('+++'))
    module_calls = set(re.findall(r'official_adapter\.(\w+)', added))
    loop_calls = set(re.findall(r'\bfair\.(\w+)\(', added))
    assert {'attach', 'add_phase_loss', 'click_options'} <= module_calls
    assert all(hasattr(official_adapter, name) for name in module_calls)
    for cls in (official_adapter.OfficialLoopHooks, official_adapter.NoHooks):
        assert all(callable(getattr(cls, name, None)) for name in loop_calls), cls


def test_read_series_refuses_context_lines(tmp_path):
    (tmp_path / '0001.patch').write_text(
        'diff --git a/f.py b/f.py\nindex ' + 'a' * 40 + '..' + 'b' * 40 + ' 100644\n--- a/f.py\n+++ b/f.py\n'
        '@@ -1,1 +1,2 @@\n a line of someone else\n+ours\n')
    with pytest.raises(PatchError, match='only our added lines'):
        read_series(tmp_path)


def test_hook_opts_parse_to_typed_hook_keys():
    assert official_adapter.parse_hook_opts(['dia.k=3', 'dia-hinge=true', 'classifier=labels:c.pt', 'x.y=0.5']) == \
        {'dia_k': 3, 'dia_hinge': True, 'classifier': 'labels:c.pt', 'x_y': 0.5}


# ---------------------------------------------------------------------------------------------
# The tool, on fake repositories


def _git(cwd, *args):
    subprocess.run(['git', '-c', 'user.email=t@example.com', '-c', 'user.name=t', *args], cwd=cwd, check=True,
                   capture_output=True)


ORIGINALS = {'train.py': 'import os\n\ndef main():\n    pass\n',
             'training/training_loop.py': 'def loop():\n    x = 1\n    return x\n',
             'training/loss.py': 'class Loss:\n    pass\n'}
INSERTS = {'train.py': {1: 'import ours  # stylegan2-fair'},
           'training/training_loop.py': {2: '    x = 2  # stylegan2-fair', 3: '    y = 3  # stylegan2-fair'},
           'training/loss.py': {1: '    z = 0  # stylegan2-fair'}}


def _write_tree(root, files):
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


@pytest.fixture
def fake_upstream(tmp_path):
    """(repo, series dir, HEAD): a committed fake tree and an insert-only series made with git diff -U0."""
    repo, series = tmp_path / 'upstream', tmp_path / 'series'
    repo.mkdir()
    series.mkdir()
    _git(repo, 'init', '-q')
    _write_tree(repo, ORIGINALS)
    _git(repo, 'add', '.')
    _git(repo, 'commit', '-qm', 'upstream')
    for number, rel in enumerate(ORIGINALS, 1):
        lines = ORIGINALS[rel].splitlines()
        for after in sorted(INSERTS[rel], reverse=True):
            lines.insert(after, INSERTS[rel][after])
        (repo / rel).write_text('\n'.join(lines) + '\n')
        diff = subprocess.run(['git', 'diff', '--no-color', '--full-index', '-U0', '--', rel], cwd=repo,
                              capture_output=True, text=True, check=True).stdout
        (series / f'{number:04d}.patch').write_text(re.sub(r'(?m)^(@@ [^@]+ @@).*$', r'\1', diff))
    _write_tree(repo, ORIGINALS)
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=repo, capture_output=True, text=True).stdout.strip()
    return repo, series, head


def test_refuses_a_checkout_at_another_commit(fake_upstream):
    repo, series, head = fake_upstream
    with pytest.raises(PatchError, match=f'at commit {head[:7]}.*made for {OFFICIAL_COMMIT[:7]}.*--force'):
        patch_checkout(repo, series_dir=series)
    assert all((repo / rel).read_text() == text for rel, text in ORIGINALS.items())


def test_apply_reports_files_and_lines_then_revert_restores_bytes(fake_upstream):
    repo, series, head = fake_upstream
    report = patch_checkout(repo, series_dir=series, commit=head)
    assert re.search(r'training/training_loop\.py\s+\+2 lines', report) and re.search(r'train\.py\s+\+1 lines', report)
    assert 'x = 2  # stylegan2-fair' in (repo / 'training/training_loop.py').read_text()
    patch_checkout(repo, series_dir=series, commit=head, revert=True)
    assert all((repo / rel).read_text() == text for rel, text in ORIGINALS.items())


def test_check_is_a_dry_run(fake_upstream):
    repo, series, head = fake_upstream
    assert 'Would apply' in patch_checkout(repo, series_dir=series, commit=head, check=True)
    assert all((repo / rel).read_text() == text for rel, text in ORIGINALS.items())


def test_check_on_an_edited_tree_fails_naming_the_file(fake_upstream):
    repo, series, _ = fake_upstream
    (repo / 'training/loss.py').write_text('class Loss:\n    pass  # my edit\n')
    result = CliRunner().invoke(patch_upstream, [str(repo), '--check', '--force', '--patches', str(series)])
    assert result.exit_code == 1
    assert 'training/loss.py differs' in result.output and 'git checkout -- training/loss.py' in result.output


def test_applying_twice_is_refused(fake_upstream):
    repo, series, head = fake_upstream
    patch_checkout(repo, series_dir=series, commit=head)
    with pytest.raises(PatchError, match='already has the stylegan2-fair hook points'):
        patch_checkout(repo, series_dir=series, commit=head)


def test_revert_of_an_unpatched_tree_is_refused(fake_upstream):
    repo, series, head = fake_upstream
    with pytest.raises(PatchError, match='not patched'):
        patch_checkout(repo, series_dir=series, commit=head, revert=True)


def test_plain_folder_needs_force_and_then_applies(fake_upstream, tmp_path):
    _, series, _ = fake_upstream
    folder = tmp_path / 'download'
    _write_tree(folder, ORIGINALS)
    with pytest.raises(PatchError, match='not a git checkout'):
        patch_checkout(folder, series_dir=series)
    patch_checkout(folder, series_dir=series, force=True)
    assert 'import ours' in (folder / 'train.py').read_text()


def test_checkout_inside_another_repository_is_patched_in_place(fake_upstream, tmp_path):
    _, series, _ = fake_upstream
    outer = tmp_path / 'project'
    _write_tree(outer / 'vendor' / 'sg2ada', ORIGINALS)
    _git(outer, 'init', '-q')
    _git(outer, 'add', '.')
    _git(outer, 'commit', '-qm', 'vendored')
    checkout = outer / 'vendor' / 'sg2ada'
    with pytest.raises(PatchError, match='inside another git repository'):
        patch_checkout(checkout, series_dir=series)
    patch_checkout(checkout, series_dir=series, force=True)
    assert '    z = 0  # stylegan2-fair' in (checkout / 'training/loss.py').read_text()


# ---------------------------------------------------------------------------------------------
# The real series on the official checkout (STYLEGAN2_ADA_DIR)


def _clone_official(dest):
    """A clone of the official checkout at its HEAD (cheap: git hard-links the objects)."""
    src = pathlib.Path(OFFICIAL_DIR)
    if (src / '.git').exists():
        subprocess.run(['git', 'clone', '-q', '--no-checkout', str(src), str(dest)], check=True)
        head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=src, capture_output=True, text=True).stdout.strip()
        subprocess.run(['git', 'checkout', '-q', head], cwd=dest, check=True)
        return []
    shutil.copytree(src, dest)
    return ['--force']


def _run_tool(checkout, *args):
    return subprocess.run([sys.executable, '-m', 'training_hooks.patch', str(checkout), *args], cwd=REPO_ROOT,
                          capture_output=True, text=True)


@pytest.fixture(scope='module')
def patched_official(tmp_path_factory):
    checkout = tmp_path_factory.mktemp('official') / 'stylegan2-ada-pytorch'
    extra = _clone_official(checkout)
    result = _run_tool(checkout, *extra)
    assert result.returncode == 0, result.stderr
    return checkout


def _tiny_dataset(folder, count=6, res=8):
    import numpy as np
    import PIL.Image
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    for i in range(count):
        PIL.Image.fromarray(rng.randint(0, 256, [res, res, 3], dtype=np.uint8)).save(folder / f'img{i:03d}.png')
    return folder


# Runs inside the patched checkout. Two shims for the 2021 official code on this environment, neither
# touching our code paths: `requests` (imported for downloads only) may be absent, and torch >= 2.2's
# Sampler.__init__ no longer takes the data source the official InfiniteSampler passes it.
_PRELUDE = textwrap.dedent('''
    import json, sys, types
    sys.path.insert(0, '.')
    try:
        import requests
    except ImportError:
        sys.modules['requests'] = types.ModuleType('requests')
    import numpy as np
    import torch
    torch.set_num_threads(1)  # tiny networks: threads only add overhead
    torch.utils.data.Sampler.__init__ = lambda self, *args, **kwargs: None
    from training_hooks import TrainingHook, register_hook, official_adapter
    TINY_G = dict(z_dim=16, w_dim=16, mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=64, channel_max=16, num_fp16_res=0, conv_clamp=None))
    TINY_D = dict(channel_base=64, channel_max=16, num_fp16_res=0, conv_clamp=None,
                  epilogue_kwargs=dict(mbstd_group_size=2))
''')


def _run_in_checkout(checkout, script, tmp_path, *args):
    """Run `script` (after the prelude) in the patched checkout; returns the JSON it prints last."""
    path = tmp_path / 'script.py'
    path.write_text(_PRELUDE + textwrap.dedent(script))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get('PYTHONPATH', '')]))
    result = subprocess.run([sys.executable, str(path), *map(str, args)], cwd=checkout, capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


_LOSS_SCRIPT = '''
    from training import dataset, loss, networks
    from torch_utils import misc

    SCALE = 0.25
    CALLS = []

    @register_hook('test-term')
    class AddsParamSum(TrainingHook):
        """Adds SCALE * (sum of one parameter): its gradient is exactly SCALE * gain there."""
        def __init__(self, scale=0.0):
            self.scale = scale
        def setup(self, run):
            CALLS.append(['setup', len(run.training_set)])
        def on_real_logits(self, run, logits, indices):
            CALLS.append(['real_logits', indices.tolist()])
        def phase_loss(self, run, phase, batch):
            CALLS.append(['phase_loss', phase, batch.gain, None if batch.real_idx is None else batch.real_idx.tolist(),
                          None if batch.gen_img is None else list(batch.gen_img.shape)])
            return self.scale * target(run.G, run.D, phase).sum()

    def target(G, D, phase):
        return G.mapping.fc0.weight if phase.startswith('G') else D.b8.conv0.weight

    data_dir, run_dir = sys.argv[1], sys.argv[2]
    set_kwargs = dict(class_name='training.dataset.ImageFolderDataset', path=data_dir, use_labels=False,
                      max_size=4, xflip=True, resolution=8, random_seed=0)  # a subset, mirrored: 8 items
    training_set = dataset.ImageFolderDataset(**{k: v for k, v in set_kwargs.items() if k != 'class_name'})
    G = networks.Generator(c_dim=0, img_resolution=8, img_channels=3, **TINY_G)
    D = networks.Discriminator(c_dim=0, img_resolution=8, img_channels=3, **TINY_D)
    official_loss = loss.StyleGAN2Loss(device=torch.device('cpu'), G_mapping=G.mapping, G_synthesis=G.synthesis, D=D)
    scope = dict(G=G, D=D, G_ema=G, augment_pipe=None, loss=official_loss, device=torch.device('cpu'), rank=0,
                 num_gpus=1, batch_size=4, batch_gpu=2, total_kimg=1, run_dir=run_dir, random_seed=0,
                 G_opt_kwargs={}, D_opt_kwargs={}, data_loader_kwargs=dict(num_workers=0),
                 training_set_kwargs=set_kwargs, training_set=training_set, resume_pkl=None,
                 training_set_sampler=misc.InfiniteSampler(training_set, seed=0), D_reg_interval=16)
    fair = official_adapter.attach(dict(fair_method='test-term', hook_kwargs={'test-term': dict(scale=SCALE)}), scope)
    hook = fair.hooks[0]

    images, labels = next(fair.data_iterator(None))
    rounds = list(zip((images.to(torch.float32) / 127.5 - 1).split(2), labels.split(2)))
    round_images_match = all(np.array_equal(training_set[int(i)][0], img.numpy())
                             for r, (img_round, _) in enumerate(rounds)
                             for i, img in zip(fair.round_indices[r], images.split(2)[r]))

    def grads(phase, gain, scale):
        hook.scale = scale
        module = G if phase.startswith('G') else D
        module.requires_grad_(True)
        for p in module.parameters():
            p.grad = None
        pl_mean = official_loss.pl_mean.clone()
        torch.manual_seed(123)
        for round_idx, (real_img, real_c) in enumerate(rounds):
            fair.begin_round(round_idx)
            official_loss.accumulate_gradients(phase=phase, real_img=real_img, real_c=real_c,
                                               gen_z=torch.randn([2, G.z_dim]), gen_c=torch.zeros([2, 0]),
                                               sync=True, gain=gain)
        official_loss.pl_mean.copy_(pl_mean)
        module.requires_grad_(False)
        return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}

    hook_view = fair.run.training_set  # our dataset class over the same files: the same item at each index
    same_items = all(np.array_equal(hook_view[i][0], training_set[i][0]) for i in range(len(training_set)))
    out = dict(round_images_match=round_images_match, setup=CALLS[0], same_items=same_items)
    for phase, gain in [('Gmain', 1), ('Greg', 4), ('Dmain', 1), ('Dreg', 16)]:
        with_term, without = grads(phase, gain, SCALE), grads(phase, gain, 0.0)
        target_name = [n for n, p in (G if phase.startswith('G') else D).named_parameters()
                       if p is target(G, D, phase)][0]
        diff = with_term[target_name] - without[target_name]
        others = max(float((with_term[n] - without[n]).abs().max()) for n in with_term if n != target_name)
        out[phase] = dict(target_diff_min=float(diff.min()), target_diff_max=float(diff.max()),
                          others_max_diff=others, expected=SCALE * gain * len(rounds))
    out['calls'] = CALLS[1:]
    out['round_indices'] = [r.tolist() for r in fair.round_indices]
    print(json.dumps(out))
'''


@official
def test_patched_official_loss_adds_hook_terms_to_the_gradient(patched_official, tmp_path):
    out = _run_in_checkout(patched_official, _LOSS_SCRIPT, tmp_path, _tiny_dataset(tmp_path / 'data'), tmp_path)

    assert out['setup'] == ['setup', 8] and out['round_images_match'] and out['same_items']
    for phase in ('Gmain', 'Greg', 'Dmain', 'Dreg'):
        # Each round adds SCALE * gain to the target's gradient; nothing else changes.
        assert out[phase]['target_diff_min'] == pytest.approx(out[phase]['expected'], rel=1e-4), phase
        assert out[phase]['target_diff_max'] == pytest.approx(out[phase]['expected'], rel=1e-4), phase
        assert out[phase]['others_max_diff'] < 1e-5, phase
    phases = [c for c in out['calls'] if c[0] == 'phase_loss']
    assert {c[1] for c in phases} == {'Gmain', 'Greg', 'Dmain', 'Dreg'}
    assert {c[2] for c in phases if c[1] == 'Dreg'} == {16}  # the gain reaches the hook
    last_rounds = out['round_indices']
    assert [c[3] for c in phases if c[1] == 'Dmain'][-2:] == last_rounds  # real indices per round
    assert [c[1] for c in out['calls'] if c[0] == 'real_logits'][-2:] == last_rounds
    assert [c[4] for c in phases if c[1] == 'Gmain'][0] == [2, 3, 8, 8]


_LOOP_SCRIPT = '''
    import os, pickle
    import training.training_loop as official_loop
    from stylegan2_fair import checkpoint

    # The official loop is written for CUDA only: point its `torch` at a CPU stand-in (the networks
    # then take their reference paths, as the official ops do on the CPU) and make pin_memory a no-op.
    class _Event:
        def __init__(self, **kwargs): pass
        def record(self, *args): pass
        def synchronize(self): pass
        def elapsed_time(self, other): return 0.0
    cpu_torch = types.ModuleType('torch_on_cpu')
    cpu_torch.__getattr__ = lambda name: getattr(torch, name)
    cpu_torch.device = lambda *args, **kwargs: torch.device('cpu')
    cpu_torch.cuda = types.SimpleNamespace(Event=_Event, current_stream=lambda *a: None,
                                           max_memory_allocated=lambda *a: 0, reset_peak_memory_stats=lambda *a: None)
    official_loop.torch = cpu_torch
    torch.Tensor.pin_memory = lambda self, *args, **kwargs: self
    full_grid = official_loop.setup_snapshot_image_grid  # 32x32 images at 8x8 px: minutes on a CPU
    official_loop.setup_snapshot_image_grid = lambda *args, **kwargs: ((2, 1),) + tuple(x[:2] for x in full_grid(*args, **kwargs)[1:])

    CALLS = []

    class FixedOrder(torch.utils.data.Sampler):
        def __init__(self, order):
            self.order = order
        def __iter__(self):
            while True:
                yield from self.order

    @register_hook('test-loop')
    class RecordsEveryHookPoint(TrainingHook):
        def __init__(self):
            self.aux = torch.nn.Linear(2, 2)
            self.steps = self.samplers = 0
        def setup(self, run):
            CALLS.append(['setup', run.batch_size, run.batch_gpu, run.world_size, run.cur_nimg])
            img, c, idx = next(run.data_stream(batch_size=3))
            CALLS.append(['data_stream', list(img.shape), bool(img.min() >= -1 and img.max() <= 1), list(c.shape),
                          bool(0 <= idx.min() and idx.max() < len(run.training_set))])
            CALLS.append(['random_labels', list(run.random_labels(5).shape)])
        def make_sampler(self, run):
            self.samplers += 1
            CALLS.append(['make_sampler', run.cur_nimg])
            return FixedOrder([0, 1, 2, 3, 4, 5] if self.samplers == 1 else [5])
        def phase_loss(self, run, phase, batch):
            CALLS.append(['phase_loss', phase])
        def on_real_logits(self, run, logits, indices):
            CALLS.append(['real_logits', run.cur_nimg, indices.tolist()])
        def on_step_end(self, run):
            self.steps += 1
            CALLS.append(['step_end', run.cur_nimg])
            if run.cur_nimg == 8:
                run.request_new_sampler()
        def on_tick_end(self, run):
            CALLS.append(['tick_end', run.cur_tick])
            run.report('Test/steps', self.steps)
        def snapshot_modules(self):
            return {'test_aux': self.aux}
        def state_dict(self):
            return {'steps': self.steps}
        def load_state_dict(self, state):
            CALLS.append(['load_state_dict', state])
        def on_train_end(self, run):
            CALLS.append(['train_end', run.cur_nimg])

    data_dir, run_dir = sys.argv[1], sys.argv[2]
    os.makedirs(run_dir, exist_ok=True)
    adam = dict(class_name='torch.optim.Adam', lr=0.002, betas=[0, 0.99], eps=1e-8)
    loop_kwargs = dict(
        data_loader_kwargs=dict(num_workers=0),
        training_set_kwargs=dict(class_name='training.dataset.ImageFolderDataset', path=data_dir, use_labels=False,
                                 max_size=6, xflip=False, resolution=8),
        G_kwargs=dict(class_name='training.networks.Generator', **TINY_G),
        D_kwargs=dict(class_name='training.networks.Discriminator', **TINY_D),
        G_opt_kwargs=adam, D_opt_kwargs=adam, loss_kwargs=dict(class_name='training.loss.StyleGAN2Loss', r1_gamma=1.0),
        metrics=[], batch_size=4, batch_gpu=2, G_reg_interval=2, D_reg_interval=2, total_kimg=0.016,
        kimg_per_tick=0.008, image_snapshot_ticks=None, network_snapshot_ticks=1,
        fair_kwargs=dict(fair_method=sys.argv[3], hook_kwargs=json.loads(sys.argv[4])))
    official_loop.training_loop(run_dir=run_dir, **loop_kwargs)
    snapshot_pkl = os.path.join(run_dir, 'network-snapshot-000000.pkl')
    with open(snapshot_pkl, 'rb') as f:
        snapshot = pickle.load(f)
    if len(sys.argv) > 5:  # then resume from that snapshot for one step
        CALLS.append(['resume'])
        os.makedirs(sys.argv[5])
        official_loop.training_loop(run_dir=sys.argv[5], **dict(loop_kwargs, total_kimg=0.004, resume_pkl=snapshot_pkl))
    state = checkpoint.load_training_state(os.path.join(run_dir, 'hook-state-000000.pt'))
    with open(os.path.join(run_dir, 'stats.jsonl')) as f:
        last_stats = json.loads(f.read().splitlines()[-1])
    print(json.dumps(dict(calls=CALLS, snapshot_keys=sorted(snapshot), state=state, stats=last_stats,
                          module_types={k: type(v).__name__ for k, v in snapshot.items()}),
                     default=lambda value: type(value).__name__))  # tensors in hook state: just their type
'''


@official
def test_patched_official_loop_calls_every_hook_point(patched_official, tmp_path):
    out = _run_in_checkout(patched_official, _LOOP_SCRIPT, tmp_path, _tiny_dataset(tmp_path / 'data'), tmp_path / 'run',
                           'test-loop', '{}', tmp_path / 'resumed')
    calls, resumed = out['calls'][:out['calls'].index(['resume'])], out['calls'][out['calls'].index(['resume']) + 1:]
    assert calls[0] == ['setup', 4, 2, 1, 0]
    assert calls[1] == ['data_stream', [3, 3, 8, 8], True, [3, 0], True] and calls[2] == ['random_labels', [5, 0]]
    assert [c for c in calls if c[0] == 'make_sampler'] == [['make_sampler', 0], ['make_sampler', 8]]
    # Reals come from the hook's samplers, with their indices: first in order, then index 5 only.
    assert [c[1:] for c in calls if c[0] == 'real_logits'] == [
        [0, [0, 1]], [0, [2, 3]], [4, [4, 5]], [4, [0, 1]], [8, [5, 5]], [8, [5, 5]], [12, [5, 5]], [12, [5, 5]]]
    assert {c[1] for c in calls if c[0] == 'phase_loss'} == {'Gmain', 'Greg', 'Dmain', 'Dreg'}
    assert [c[1] for c in calls if c[0] == 'step_end'] == [4, 8, 12, 16]
    assert [c[1] for c in calls if c[0] == 'tick_end'] == [0, 1, 2]
    assert calls[-1] == ['train_end', 16]
    assert {'G', 'D', 'G_ema', 'test_aux'} <= set(out['snapshot_keys']) and out['module_types']['test_aux'] == 'Linear'
    assert out['state']['hooks'] == {'test-loop': {'steps': 4}} and out['state']['cur_nimg'] == 16
    assert out['stats']['Test/steps']['mean'] == 4  # a hook's report() lands in the official stats.jsonl
    # Resuming from a patched run's snapshot hands each hook its saved state right after setup.
    assert resumed[0][0] == 'setup' and ['load_state_dict', {'steps': 4}] in resumed[:4]


@official
def test_dia_trains_inside_the_patched_official_loop(patched_official, tmp_path):
    # Phase 2 (score-weighted sampler, auxiliary D built from the official D_opt_kwargs) starts
    # after the second of four steps.
    options = dict(dia=dict(window=2, record_every=0.004, phase2_kimg=0.008, record_batch=2))
    out = _run_in_checkout(patched_official, _LOOP_SCRIPT, tmp_path, _tiny_dataset(tmp_path / 'data'), tmp_path / 'run',
                           'dia', json.dumps(options))
    assert 'D_aux' in out['snapshot_keys'] and out['state']['cur_nimg'] == 16
    assert out['state']['hooks']['dia']['phase2'] and 'Dia/ldr' in out['stats']


@official
def test_tool_patches_the_official_checkout_and_reverts_to_its_original_bytes(tmp_path):
    checkout = tmp_path / 'stylegan2-ada-pytorch'
    force = bool(_clone_official(checkout))
    original = {rel: (checkout / rel).read_bytes() for rel in PATCHED_FILES}
    assert 'Would apply 3 patches' in patch_checkout(checkout, check=True, force=force)
    report = patch_checkout(checkout, force=force)
    for rel in PATCHED_FILES:
        assert re.search(re.escape(rel) + r'\s+\+\d+ lines', report)
        assert (checkout / rel).read_bytes() != original[rel]
    with pytest.raises(PatchError, match='already has'):
        patch_checkout(checkout, check=True, force=force)
    patch_checkout(checkout, revert=True, force=force)
    assert {rel: (checkout / rel).read_bytes() for rel in PATCHED_FILES} == original
    if not force:
        status = subprocess.run(['git', 'status', '--porcelain'], cwd=checkout, capture_output=True, text=True)
        assert status.stdout == ''


_TRAIN_SCRIPT = '''
    import contextlib, io, runpy
    results = []
    for argv in json.loads(sys.argv[1]):
        buffer, code = io.StringIO(), 0
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            try:
                sys.argv = ['train.py'] + argv
                runpy.run_path('train.py', run_name='__main__')
            except SystemExit as exit:
                code = exit.code or 0
        results.append(dict(code=code, output=buffer.getvalue()))
    print(json.dumps(results))
'''


def _training_options(output):
    start = output.index('{', output.index('Training options:'))
    return json.JSONDecoder().raw_decode(output[start:])[0]


@official
def test_patched_train_py_takes_fair_method_and_hook_options(patched_official, tmp_path):
    data = _tiny_dataset(tmp_path / 'data')
    common = ['--outdir', str(tmp_path / 'runs'), '--data', str(data), '--dry-run', '--metrics', 'none']
    runs = [common,
            common + ['--fair-method', 'dia', '--hook-opt', 'dia.k=2', '--dia-window', '3'],
            common + ['--fair-method', 'dia', '--hook-opt', 'nosuch=1']]
    plain, with_dia, bad = _run_in_checkout(patched_official, _TRAIN_SCRIPT, tmp_path, json.dumps(runs))

    assert plain['code'] == 0 and 'fair_kwargs' not in _training_options(plain['output'])
    assert with_dia['code'] == 0, with_dia['output'][-2000:]
    fair = _training_options(with_dia['output'])['fair_kwargs']
    assert fair['fair_method'] == 'dia' and fair['hook_kwargs']['dia']['k'] == 2 and fair['hook_kwargs']['dia']['window'] == 3
    assert re.search(r'Output directory:\s+\S+-dia\n', with_dia['output'])
    assert bad['code'] == 2 and 'nosuch: not an option of dia' in bad['output'] and 'dia.k' in bad['output']
