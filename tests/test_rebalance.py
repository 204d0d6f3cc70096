"""Model rebalancing (arXiv 2308.08638, Algorithm 2): the latent search, its checkpoints, the dataset
it writes, and the finetune path that takes an official pickle."""
import json
import os
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

from stylegan2_fair.classifiers import Classifier
from stylegan2_fair.cli.dataset_tool import convert_dataset
from stylegan2_fair.cli.rebalance import rebalance_command
from stylegan2_fair.cli.train import UserError, setup_training_options
from stylegan2_fair.dataset import ImageFolderDataset
from stylegan2_fair.gates import register_gate
from stylegan2_fair.rebalance import (RebalanceError, RebalanceSearch, SearchOptions, report_path, state_dir_for,
                                      write_dataset)

BIAS = (1.0, 0.0, -1.0)  # class 0 common, class 2 rare


class CoordinateGenerator(torch.nn.Module):
    """w = psi * z on every layer; the image holds tanh(mean over layers of w / 4) in its 16 pixels."""
    z_dim = w_dim = 16
    num_ws = 2
    c_dim = 0
    img_resolution = 4
    img_channels = 1

    def mapping(self, z, c, truncation_psi=1, truncation_cutoff=None):
        return (truncation_psi * z)[:, None, :].repeat(1, self.num_ws, 1)

    def synthesis(self, ws, noise_mode='const', **kwargs):
        return torch.tanh(ws.mean(dim=1) / 4).reshape(-1, 1, 4, 4)

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, **synthesis_kwargs):
        return self.synthesis(self.mapping(z, c, truncation_psi), **synthesis_kwargs)


class CoordinateClassifier(Classifier):
    """Reads w[:3] back from the pixels: logits = w[:3] + BIAS."""

    def __init__(self):
        super().__init__(['zero', 'one', 'two'])
        self.register_buffer('bias', torch.tensor(BIAS))

    def class_probabilities(self, images):
        w = 4 * torch.atanh(images.flatten(1)[:, :3].clamp(-0.999999, 0.999999))
        return (w + self.bias).softmax(dim=1)


def true_class(latent, space, psi):
    """The class as a known function of the latent, computed without the networks: argmax(w[:3] + BIAS),
    with w read back from the 8-bit image the search classifies (and stores)."""
    w = psi * latent.astype(np.float64) if space == 'z' else latent.astype(np.float64).mean(axis=0)
    stored = np.rint((np.tanh(w[:3] / 4) + 1) * 127.5).clip(0, 255) / 127.5 - 1
    return int(np.argmax(4 * np.arctanh(stored.clip(-0.999999, 0.999999)) + np.array(BIAS)))


def search(per_class=40, state_dir=None, **kwargs):
    options = SearchOptions(per_class=per_class, **{'batch': 64, **kwargs})
    return RebalanceSearch(CoordinateGenerator(), CoordinateClassifier(), options, state_dir=state_dir,
                           checkpoint_seconds=0, log=lambda msg: None)


def kept_latents(s):
    return {c.index: c.kept[:].copy() for c in s.searches}


@pytest.mark.parametrize('space', ['z', 'w'])
def test_search_keeps_only_target_class_samples_and_each_child_is_farther_from_the_root(space):
    s = search(space=space).run(progress=False)
    for c in s.searches:
        assert c.num_kept == 40
        for j in range(c.num_kept):
            assert true_class(c.kept[j], space, 0.7) == c.index
            root = c.kept[c.trees[c.tree[j]][0]]
            assert c.dist[j] == pytest.approx(np.linalg.norm(c.kept[j].astype(np.float64) - root), rel=1e-6)
            if c.parent[j] >= 0:
                assert c.tree[c.parent[j]] == c.tree[j]
                assert c.dist[j] > c.dist[c.parent[j]]
            else:
                assert c.dist[j] == 0 and c.trees[c.tree[j]][0] == j
    assert sum(c.counts['rejected_class'] for c in s.searches) > 0  # the rule did reject something


def test_root_is_the_first_random_latent_of_the_target_class():
    s = search(per_class=1).run(progress=False)
    for c in s.searches:
        stream = [s._root_candidate(c, pos)[0] for pos in range(c.root_pos)]
        classes = [true_class(z, 'z', 0.7) for z in stream]
        assert classes[-1] == c.index and c.index not in classes[:-1]
        assert np.array_equal(c.kept[0], stream[-1])


@pytest.mark.parametrize('options', [{}, {'max_per_root': 4}, {'min_confidence': 0.8, 'dedup_dist': 1.0}])
def test_batched_search_keeps_the_same_latents_as_one_at_a_time(options):
    one = search(per_class=15, batch=1, **options).run(progress=False)
    many = search(per_class=15, batch=200, **options).run(progress=False)
    for t, latents in kept_latents(one).items():
        assert np.array_equal(latents, kept_latents(many)[t])
    if 'max_per_root' in options:   # several trees per class: later roots came from the rendered look-ahead
        assert all(len(c.trees) >= 4 for c in many.searches)


def test_min_confidence_and_dedup_distance_are_respected():
    s = search(per_class=30, min_confidence=0.8, dedup_dist=2.0).run(progress=False)
    for c in s.searches:
        assert min(c.confidence) >= 0.8
        flat = c.kept[:].reshape(c.num_kept, -1)
        dists = np.linalg.norm(flat[:, None] - flat[None], axis=2)[np.triu_indices(c.num_kept, 1)]
        assert dists.min() >= 2.0
    assert sum(c.counts['rejected_confidence'] for c in s.searches) > 0


@register_gate('test-w3-positive')
class W3PositiveGate:
    """Passes the images whose 4th pixel (tanh(w[3] / 4) in 8 bits) is above mid-grey: a function of the latent."""

    def __call__(self, images):
        return images.reshape(len(images), -1)[:, 3] > 128


def test_gate_rejects_before_the_classifier_and_no_gated_out_image_is_kept():
    s = search(per_class=20, space='w', gate='test-w3-positive').run(progress=False)
    for c in s.searches:
        assert c.num_kept == 20
        stored = np.rint((np.tanh(c.kept[:].astype(np.float64).mean(axis=1)[:, 3] / 4) + 1) * 127.5)
        assert (stored > 128).all()
        assert all(true_class(latent, 'w', 0.7) == c.index for latent in c.kept[:])
    assert all(c.counts['rejected_gate'] > 0 for c in s.searches)
    ungated = search(per_class=20, space='w').run(progress=False)
    assert any(not np.array_equal(a, b) for a, b in zip(kept_latents(s).values(), kept_latents(ungated).values()))


def test_gated_search_keeps_the_same_latents_in_any_batch_size_and_resume_checks_the_gate(tmp_path):
    one = search(per_class=10, batch=1, gate='test-w3-positive').run(progress=False)
    many = search(per_class=10, batch=200, gate='test-w3-positive').run(progress=False)
    for t, latents in kept_latents(one).items():
        assert np.array_equal(latents, kept_latents(many)[t])
    search(per_class=5, state_dir=str(tmp_path), gate='test-w3-positive').checkpoint()
    with pytest.raises(RebalanceError, match='gate'):
        search(per_class=5, state_dir=str(tmp_path))


def test_unknown_gate_and_a_face_gate_without_opencv_are_clear_errors(monkeypatch):
    import builtins
    with pytest.raises(RebalanceError, match="gate='faces': choose one of none, face"):
        search(gate='faces')
    real_import = builtins.__import__

    def no_cv2(name, *args, **kwargs):
        if name == 'cv2':
            raise ImportError('No module named cv2')
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, '__import__', no_cv2)
    with pytest.raises(RebalanceError, match="pip install 'opencv-python-headless<5'"):
        search(gate='face')


def drawn_face(size, features=True):
    """A cartoon face: skin ellipse, and (with features) eyes, brows, nose and mouth."""
    import cv2
    s, img = size, np.full((size, size, 3), 200, np.uint8)
    cv2.ellipse(img, (s // 2, s // 2), (int(s * .32), int(s * .42)), 0, 0, 360, (180, 140, 120), -1)
    if features:
        for x in (int(s * .37), int(s * .63)):
            cv2.ellipse(img, (x, int(s * .42)), (int(s * .07), int(s * .035)), 0, 0, 360, (40, 30, 30), -1)
            cv2.line(img, (x - int(s * .08), int(s * .35)), (x + int(s * .08), int(s * .35)), (50, 40, 40), s // 40)
        cv2.line(img, (s // 2, int(s * .45)), (s // 2, int(s * .6)), (120, 90, 80), s // 40)
        cv2.ellipse(img, (s // 2, int(s * .7)), (int(s * .12), int(s * .04)), 0, 0, 360, (90, 40, 40), -1)
    return cv2.GaussianBlur(img, (5, 5), 2).transpose(2, 0, 1)


def test_face_gate_passes_a_face_and_rejects_a_broken_face_noise_and_flat_images():
    cv2 = pytest.importorskip('cv2', reason="the face gate needs OpenCV (pip install 'opencv-python-headless<5')")
    if not hasattr(cv2, 'CascadeClassifier'):
        pytest.skip(f'OpenCV {cv2.__version__} has no Haar cascades')
    from stylegan2_fair.gates import create_gate
    gate = create_gate('face')
    face = drawn_face(128)
    rng = np.random.default_rng(0)
    images = np.stack([face, drawn_face(128, features=False), np.ascontiguousarray(face[:, ::-1]),
                       rng.integers(0, 256, (3, 128, 128), dtype=np.uint8), np.full((3, 128, 128), 128, np.uint8)])
    assert gate(images).tolist() == [True, False, False, False, False]
    small = [np.asarray(PIL.Image.fromarray(face.transpose(1, 2, 0)).resize((n, n), PIL.Image.LANCZOS))
             for n in (16, 32)]   # a 16 or 32 px model's face: below the cascade's 24 px window unless enlarged
    assert gate(np.stack([small[0].transpose(2, 0, 1)])).tolist() == [True]
    assert gate(np.stack([small[1].transpose(2, 0, 1)])).tolist() == [True]


@register_gate('test-int-mask')
class IntMaskGate:
    """Passes every other image, as 0/1 integers (not bools)."""

    def __call__(self, images):
        return (np.arange(len(images)) % 2 == 0).astype(np.int64)


def test_a_gate_returning_integers_gates_the_same_images_as_booleans():
    s = search(per_class=3, batch=8, gate='test-int-mask')
    assert s.step()
    rejected = sum(c.counts['rejected_gate'] for c in s.searches)
    evaluated = sum(c.counts['evaluated'] for c in s.searches)
    assert rejected == evaluated // 2


@pytest.mark.parametrize('crash', ['after-checkpoint', 'with-unsaved-work', 'while-writing-state'])
def test_resume_after_a_crash_loses_and_duplicates_nothing(tmp_path, monkeypatch, crash):
    reference = kept_latents(search(per_class=60, batch=16).run(progress=False))
    state_dir = str(tmp_path / 'state')
    calls = []

    class Killed(Exception):
        pass

    def on_batch(s):
        calls.append(1)
        if len(calls) == 3 and crash == 'while-writing-state':
            import stylegan2_fair.rebalance as rb
            real = rb.atomic_write

            def failing(path, fn, suffix='.tmp'):
                if path.endswith('state.npz'):
                    raise Killed()
                return real(path, fn, suffix)
            monkeypatch.setattr(rb, 'atomic_write', failing)  # the next checkpoint writes its chunk, then dies
        if len(calls) == 4:
            raise Killed()

    first = search(per_class=60, batch=16, state_dir=state_dir)
    if crash == 'with-unsaved-work':
        first.checkpoint_seconds = 1e9   # only the checkpoint below: batches 3 and 4 are lost
        original = on_batch

        def on_batch(s):  # noqa: F811
            if len(calls) == 1:
                s.checkpoint()
            original(s)
    with pytest.raises(Killed):
        first.run(progress=False, on_batch=on_batch)
    monkeypatch.undo()
    chunks = sorted(n for n in os.listdir(state_dir) if n.startswith('chunk-'))
    with np.load(os.path.join(state_dir, 'state.npz')) as state:
        listed = json.loads(str(state['meta']))['num_chunks']
    assert len(chunks) == listed + (crash == 'while-writing-state')   # the dead checkpoint left its chunk behind
    resumed = search(per_class=60, batch=16, state_dir=state_dir)
    assert 0 < sum(c.num_kept for c in resumed.searches) < 180   # it did continue from the checkpoint
    resumed.run(progress=False)
    result = kept_latents(resumed)
    for t in reference:
        assert np.array_equal(result[t], reference[t])
    samples = list(resumed.samples())
    assert sorted((x['cls'], x['index']) for x in samples) == [(t, j) for t in range(3) for j in range(60)]


def test_counters_and_the_candidate_cap_do_not_depend_on_interruptions(tmp_path):
    # Candidates rendered after a root wait aside until examined; a resume, which does not save them,
    # renders them again. Counting them only when examined keeps the report and the cap the same.
    def interrupted_at_every_batch(**options):
        state_dir = str(tmp_path / str(sorted(options.items())))
        for stop in range(1, 60):
            def on_batch(s, stop=stop):
                if s.num_steps >= stop:
                    raise KeyboardInterrupt
            try:
                search(state_dir=state_dir, **options).run(progress=False, on_batch=on_batch)
            except KeyboardInterrupt:
                continue
            break
        return search(state_dir=state_dir, **options).run(progress=False)
    for cap in (None, 90):
        options = dict(max_per_root=3, max_candidates=cap)
        whole, pieces = search(**options).run(progress=False), interrupted_at_every_batch(**options)
        for a, b in zip(whole.searches, pieces.searches):
            assert a.counts == b.counts and a.num_kept == b.num_kept
            assert np.array_equal(a.kept[:], b.kept[:])
        capped = [s for s in whole.searches if s.num_kept < 40]
        assert all(s.counts['evaluated'] == cap for s in capped) and (cap is None) != bool(capped)


def test_keep_state_run_to_a_larger_n_continues_as_one_longer_run(tmp_path):
    state_dir = str(tmp_path / 'state')
    search(per_class=20, batch=16, state_dir=state_dir).run(progress=False)
    continued = search(per_class=50, batch=16, state_dir=state_dir).run(progress=False)
    longer = search(per_class=50, batch=16).run(progress=False)
    for a, b in zip(continued.searches, longer.searches):
        assert a.num_kept == b.num_kept == 50 and np.array_equal(a.kept[:], b.kept[:])


class ConditionalGenerator(CoordinateGenerator):
    """G's label adds 6 to its class's coordinate: with the right label every class is easy to find."""
    c_dim = 3

    def mapping(self, z, c, truncation_psi=1, truncation_cutoff=None):
        w = truncation_psi * z + torch.nn.functional.pad(6 * c, (0, self.z_dim - 3))
        return w[:, None, :].repeat(1, self.num_ws, 1)


def test_conditional_generator_gets_its_label_from_g_label():
    options = SearchOptions(per_class=10, batch=32, g_label='target')
    s = RebalanceSearch(ConditionalGenerator(), CoordinateClassifier(), options, log=lambda msg: None).run(progress=False)
    assert all(c.g_label == [c.index] * 10 for c in s.searches)
    assert all(c.root_pos == 1 for c in s.searches)   # the label made the first random draw a hit
    with pytest.raises(RebalanceError, match='g_label=target'):
        RebalanceSearch(ConditionalGenerator(), CoordinateClassifier(), SearchOptions(per_class=10))


def test_resume_refuses_a_state_written_with_other_settings(tmp_path):
    state_dir = str(tmp_path / 'state')
    s = search(per_class=5, state_dir=state_dir).run(progress=False)
    assert s.num_chunks > 0
    with pytest.raises(RebalanceError, match='sigma'):
        search(per_class=5, state_dir=state_dir, sigma=0.25)


def test_written_zip_loads_as_a_labelled_training_set_with_balanced_classes(tmp_path):
    s = search(per_class=12).run(progress=False)
    dest = str(tmp_path / 'balanced.zip')
    assert write_dataset(s, dest) == 36
    dataset = ImageFolderDataset(dest, use_labels=True)
    labels = np.array([dataset.get_label(i).argmax() for i in range(len(dataset))])
    assert np.bincount(labels).tolist() == [12, 12, 12]
    with zipfile.ZipFile(dest) as z:
        meta = json.loads(z.read('dataset.json'))
        latents = np.load(z.open(meta['rebalance']['latents']))
        assert meta['class_names'] == ['zero', 'one', 'two']
        image0 = dataset[0][0].astype(np.float32) / 127.5 - 1   # the image is G(latent) of its row
        expected = CoordinateGenerator()(torch.from_numpy(latents['latents'][:1]), None, truncation_psi=0.7)
        assert np.abs(image0 - expected[0].numpy()).max() < 2 / 255
        assert latents['classes'].tolist() == labels.tolist()


# ----------------------------------------------------------------------------------------------
# The command on an official-format pickle, with a TorchScript classifier

class Brightness(torch.nn.Module):
    """Class 1 if the mean pixel is above `threshold`; with three classes the third is never chosen."""

    def __init__(self, threshold: float, num_classes: int):
        super().__init__()
        self.threshold = threshold
        self.num_classes = num_classes

    def forward(self, x):
        d = (x.mean(dim=(1, 2, 3)) - self.threshold) * 100
        logits = [-d, d] + [torch.full_like(d, -1e4)] * (self.num_classes - 2)
        return torch.stack(logits, dim=1)


@pytest.fixture(scope='module')
def official_pkl(official_fixtures):
    return str(official_fixtures / 'uncond-skip-resnet-32-official-format.pkl')


def brightness_classifier(tmp_path, official_pkl, num_classes):
    from stylegan2_fair.rebalance import load_generator
    G = load_generator(official_pkl)
    with torch.no_grad():
        images = G(torch.randn(64, G.z_dim, generator=torch.Generator().manual_seed(1)), torch.zeros(64, 0),
                   truncation_psi=0.7, noise_mode='const')
    path = tmp_path / f'brightness{num_classes}.pt'
    module = Brightness(float(images.mean(dim=(1, 2, 3)).median()), num_classes)
    torch.jit.save(torch.jit.script(module), str(path))
    return f'torchscript:{path}'


def test_cli_writes_a_balanced_dataset_and_report_and_prints_the_retrofit_commands(tmp_path, official_pkl):
    classifier = brightness_classifier(tmp_path, official_pkl, 2)
    dest = tmp_path / 'balanced.zip'
    args = ['--network', official_pkl, '--classifier', classifier, '--per-class=4', '--outdir', str(dest),
            '--batch=16', '--device=cpu']
    result = CliRunner().invoke(rebalance_command, args)
    assert result.exit_code == 0, result.output
    dataset = ImageFolderDataset(str(dest), use_labels=True)
    assert dataset.resolution == 32
    assert np.bincount([int(dataset.get_label(i).argmax()) for i in range(len(dataset))]).tolist() == [4, 4]
    report = json.loads(open(report_path(dest)).read())
    assert [c['kept'] for c in report['classes']] == [4, 4] and report['candidates'] >= 8
    assert not os.path.exists(state_dir_for(dest))
    for expected in ('--lr-scale=0.1', f'--resume={official_pkl}', '--resume-arch=1', f'--data={dest}',
                     '--fair-method=fairness', '--freezed=5'):
        assert expected in result.output


def test_cli_missing_class_names_it_and_leaves_earlier_output_alone(tmp_path, official_pkl):
    classifier = brightness_classifier(tmp_path, official_pkl, 3)
    dest = tmp_path / 'balanced.zip'
    dest.write_text('precious')
    args = ['--network', official_pkl, '--classifier', classifier, '--per-class=3', '--outdir', str(dest),
            '--batch=32', '--device=cpu', '--max-candidates=40', '--overwrite', '--min-confidence=0.5']
    result = CliRunner().invoke(rebalance_command, args)
    assert result.exit_code != 0
    assert "class 'class2'" in result.output and 'never found' in result.output
    assert '--max-candidates' in result.output and '--min-confidence' in result.output
    assert dest.read_text() == 'precious' and not os.path.exists(report_path(dest))

    result = CliRunner().invoke(rebalance_command, args + ['--allow-missing'])
    assert result.exit_code == 0, result.output
    dataset = ImageFolderDataset(str(dest), use_labels=True)
    assert np.bincount([int(dataset.get_label(i).argmax()) for i in range(len(dataset))]).tolist() == [3, 3]
    assert json.loads(open(report_path(dest)).read())['classes'][2]['kept'] == 0


# ----------------------------------------------------------------------------------------------
# Finetuning: train.py --resume=OFFICIAL.pkl --resume-arch=1 --lr-scale=0.1 --freezed=N

@pytest.fixture(scope='module')
def five_class_zip(tmp_path_factory):
    import PIL.Image
    root = tmp_path_factory.mktemp('five')
    rng = np.random.default_rng(0)
    for k in range(5):
        os.makedirs(root / 'src' / f'c{k}')
        for i in range(2):
            PIL.Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / 'src' / f'c{k}' / f'{i}.png')
    convert_dataset(str(root / 'src'), str(root / 'five.zip'), labels_spec='subfolder', progress=False)
    return str(root / 'five.zip')


def finetune_args(data, pkl, **overrides):
    _, args = setup_training_options(data=data, cfg='tiny', cond=True, workers=0, device='cpu', aug='noaug',
                                     resume=pkl, lr_scale=0.1, **overrides)
    for key in ('num_gpus', 'fair_method', 'hook_kwargs'):
        args.pop(key)
    args.update(batch_size=4, batch_gpu=4, total_kimg=0.008, kimg_per_tick=0.008, image_snapshot_ticks=0,
                network_snapshot_ticks=1)
    return args


def test_finetune_resumes_an_official_pickle_with_its_own_architecture(tmp_path, official_fixtures, five_class_zip,
                                                                       monkeypatch):
    from stylegan2_fair import checkpoint
    from stylegan2_fair.training_loop import TrainingLoop
    monkeypatch.setattr(TrainingLoop, '_save_fakes', lambda self, filename: None)  # a 32x32 grid: slow, beside the point
    pkl = str(official_fixtures / 'cond5-skip-resnet-16-clamp-official-format.pkl')
    args = finetune_args(five_class_zip, pkl, resume_arch=True, freezed=2)
    assert args['G_opt_kwargs']['lr'] == pytest.approx(0.0025 * 0.1)
    assert args['D_kwargs']['block_kwargs']['freeze_layers'] == 2
    TrainingLoop(run_dir=str(tmp_path), progress=False, **args).train()   # 2 iterations
    official = checkpoint.load_network_pkl(pkl)
    tuned = checkpoint.load_network_pkl(tmp_path / 'network-snapshot-000000.pkl')
    for name in ('G', 'D'):
        before, after = official[name].state_dict(), tuned[name].state_dict()
        assert before.keys() == after.keys()
        moved = max(float((after[k] - before[k]).abs().max()) for k, _ in official[name].named_parameters())
        assert 0 < moved < 0.01, name   # started from the pickle's weights; Adam at lr 2.5e-4 moved them a little
    frozen = [k for k in before if k.startswith(('b16.fromrgb.', 'b16.conv0.'))]   # --freezed=2: D's first 2 layers
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)

    with pytest.raises(Exception, match='shape mismatch'):  # the --cfg preset alone cannot take this pickle
        TrainingLoop(run_dir=str(tmp_path / 'preset'), progress=False, **finetune_args(five_class_zip, pkl)).train()


def test_resume_arch_names_a_label_mismatch(five_class_zip, official_fixtures):
    pkl = str(official_fixtures / 'cond5-skip-resnet-16-clamp-official-format.pkl')
    with pytest.raises(UserError, match='--cond=1'):
        setup_training_options(data=five_class_zip, cfg='tiny', cond=False, workers=0, device='cpu', resume=pkl,
                               resume_arch=True)
