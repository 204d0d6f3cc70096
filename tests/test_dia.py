"""Self-Diagnosing GAN hook (--fair-method=dia): LDR statistics, weighted phase 2, auxiliary D, state."""
import collections
import io
import os
import shutil
import socket
import statistics

import numpy as np
import pytest
import torch

from stylegan2_fair import checkpoint, distributed
from stylegan2_fair.dataset import ImageFolderDataset
from stylegan2_fair.samplers import InfiniteSampler, WeightedInfiniteSampler
from training_hooks.dia import (LdrHistory, SelfDiagnosingHook, capped_fraction, clip_scores, default_record_batch,
                                discrepancy_scores, flat_scores_warning)

# scipy, the training loop and the dataset tool are imported where used: the two-process test
# spawns workers that import this module, and they need none of them.


# Helpers ----------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def toy_zip(tmp_path_factory):
    from stylegan2_fair.cli.dataset_tool import convert_dataset
    path = tmp_path_factory.mktemp('dia-data') / 'colored.zip'
    convert_dataset('toy:colored-digits', str(path), resolution=8, num_images=37, majority=0.75, progress=False)
    return str(path)


class ProbeD(torch.nn.Module):
    """A discriminator whose logits we control: scale * mean pixel + offset + 0.1 * class index."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(1.0))
        self.offset = torch.nn.Parameter(torch.tensor(0.0))
        self.training_seen = []

    def forward(self, img, c):
        self.training_seen.append(self.training)
        label = c.argmax(dim=1).float() if c.shape[1] else torch.zeros(len(img))
        return (img.mean(dim=[1, 2, 3]) * self.scale + self.offset + 0.1 * label).unsqueeze(1)


class FakeRun:
    """The part of TrainingRun the hook uses, without a training loop."""

    def __init__(self, dataset, D, run_dir=None, rank=0, world_size=1, batch_size=4, total_kimg=1.0):
        self.training_set, self.D, self.run_dir = dataset, D, run_dir
        self.rank, self.world_size = rank, world_size
        self.batch_size = self.batch_gpu = batch_size
        self.total_kimg, self.cur_nimg, self.prev_nimg = total_kimg, 0, 0
        self.device, self.random_seed, self.augment_pipe = torch.device('cpu'), 0, None
        self.D_opt_kwargs = dict(class_name='torch.optim.Adam', lr=0.01, betas=[0.0, 0.99], eps=1e-8)
        self.r1_gamma, self.D_reg_interval, self.gan_loss = 1.0, 16, 'ns'
        self.sampler_requests = 0
        self.reported = collections.defaultdict(list)

    def report(self, name, value):
        self.reported[name].append(value)

    def report0(self, name, value):
        self.report(name, value if self.rank == 0 else [])

    def request_new_sampler(self):
        self.sampler_requests += 1

    def all_gather(self, tensor):
        return distributed.all_gather_cat(tensor)

    def crossed_kimg(self, every_kimg):
        return distributed.crossed(self.prev_nimg, self.cur_nimg, every_kimg * 1000)

    def data_stream(self, sampler=None, batch_size=None):
        loader = torch.utils.data.DataLoader(self.training_set, sampler=sampler, batch_size=batch_size)
        for img, c, idx in loader:
            yield img.float() / 127.5 - 1, c, idx


def expected_probe_record(dataset, D):
    out = []
    scale, offset = float(D.scale.detach()), float(D.offset.detach())
    for i in range(len(dataset)):
        img, c, _ = dataset[i]
        mean = float((torch.from_numpy(img).float() / 127.5 - 1).mean())
        out.append(mean * scale + offset + 0.1 * int(np.argmax(c)))
    return torch.tensor(out)


def record_three_times(hook, run, D):
    """Three LDR records with a changing D, so every image's records vary."""
    for scale, offset in [(1.0, 0.0), (3.0, 0.5), (-1.0, 1.0)]:
        with torch.no_grad():
            D.scale.fill_(scale)
            D.offset.fill_(offset)
        hook.record_ldr(run)


def take(sampler, n):
    it = iter(sampler)
    return np.array([next(it) for _ in range(n)])


def chi_square_p(counts, expected):
    from scipy import stats
    return stats.chisquare(counts, expected).pvalue


# Statistics -------------------------------------------------------------------------------------

def test_ldr_statistics_equal_a_hand_computation():
    records = [[0.5, -1.0, 2.0], [1.5, -0.5, 2.0], [-0.25, 0.0, 2.0], [1.0, 3.0, 2.0]]
    k = 0.7
    ldrm, ldrv, raw, _ = discrepancy_scores(torch.tensor(records), k=k, clip_min=1e-9, clip_ratio=1e9)
    for i in range(3):
        column = [row[i] for row in records]
        assert float(ldrm[i]) == pytest.approx(statistics.mean(column))
        assert float(ldrv[i]) == pytest.approx(statistics.variance(column))  # ddof 1
        assert float(raw[i]) == pytest.approx(statistics.mean(column) + k * statistics.stdev(column))


def test_scores_are_clipped_to_the_minimum_and_the_max_over_min_ratio():
    clipped = clip_scores(torch.tensor([-3.0, 0.0, 0.005, 0.2, 0.3, 7.0]), clip_min=0.01, clip_ratio=50)
    assert float(clipped.min()) == pytest.approx(0.01)
    assert torch.allclose(clipped[:3], torch.full([3], 0.01, dtype=torch.float64))
    assert float(clipped.max() / clipped.min()) == pytest.approx(50)
    assert float(clipped[3]) == pytest.approx(0.2)   # values inside the bounds are kept
    _, _, raw, score = discrepancy_scores(torch.tensor([[1.0, 2.0, 500.0], [1.0, 2.0, 500.0]]), clip_ratio=50)
    assert float(score.max()) == pytest.approx(50 * 1.0) and float(raw.max()) == 500


def test_a_warning_names_the_fix_when_the_clip_flattens_the_scores():
    # Late in training (benchmarks/results/dia.md, run E): most reals get logits near 0, a few are
    # <= clip_min, so the cap 50 x 0.01 = 0.5 sits below most scores and the weights are nearly flat,
    # however well the raw scores single out the minority.
    gen = torch.Generator().manual_seed(0)
    majority = 0.3 + 0.5 * torch.rand(990, generator=gen, dtype=torch.float64)
    raw = torch.cat([torch.tensor([-0.2, 0.0, 0.005], dtype=torch.float64), majority,
                     torch.full([7], 4.0, dtype=torch.float64)])
    flat = clip_scores(raw, clip_min=0.01, clip_ratio=50)
    assert capped_fraction(flat) > 0.5
    message = flat_scores_warning(flat, 0.01, 50)
    assert message is not None and '--dia-clip-min' in message and '0.1' in message
    # With the floor raised 10x the cap is 5: the minority (raw 4) stands out again, no warning.
    lifted = clip_scores(raw, clip_min=0.1, clip_ratio=50)
    assert capped_fraction(lifted) < 0.01 and flat_scores_warning(lifted, 0.1, 50) is None
    assert float(lifted[-7:].mean() / lifted[3:-7].mean()) > 5
    assert capped_fraction(torch.ones(5)) == 1.0


def test_ring_buffer_keeps_the_last_window_records_oldest_first():
    history = LdrHistory(num_images=2, window=3)
    for t in range(5):
        history.add([t, 10 * t])
    assert history.count == 5
    assert history.records().tolist() == [[2, 20], [3, 30], [4, 40]]


@pytest.mark.parametrize('batch_gpu, resolution, shard, expected', [
    (16, 256, 70000, 64), (16, 512, 70000, 16), (4, 1024, 70000, 4),  # high resolution: few images per call
    (32, 16, 10000, 1024), (16, 32, 10000, 512), (16, 64, 10000, 256),  # low: large calls (a GPU is launch-bound)
    (16, 16, 100, 112), (16, 16, 3, 16), (12, 16, 10000, 1032),  # the shard caps it; always a multiple of batch_gpu
])
def test_record_batch_grows_at_low_resolution_within_the_shard(batch_gpu, resolution, shard, expected):
    size = default_record_batch(batch_gpu, resolution, shard)
    assert size == expected and size % batch_gpu == 0


# Recording and phase 2 on one process -------------------------------------------------------------

def test_record_is_D_logit_of_every_image_in_eval_mode_with_its_label(toy_zip):
    dataset = ImageFolderDataset(toy_zip, use_labels=True)
    D = ProbeD().train()
    run = FakeRun(dataset, D)
    hook = SelfDiagnosingHook(window=4)
    hook.setup(run)
    record_three_times(hook, run, D)
    assert torch.allclose(hook.history.records()[-1], expected_probe_record(dataset, D), atol=1e-5)
    assert D.training and not any(D.training_seen)  # scored in eval mode, then back to train mode
    # The same, read through the run's data stream instead of the in-memory image cache.
    streamed = SelfDiagnosingHook(window=4, cache_mib=0)
    streamed.setup(run)
    streamed.record_ldr(run)
    assert streamed._image_cache(run) is None
    assert torch.allclose(streamed.history.records()[-1], expected_probe_record(dataset, D), atol=1e-5)


@pytest.mark.parametrize('gan_loss', ['ns', 'hinge'])
def test_phase2_refresh_scores_with_the_aux_D_under_the_ns_loss(toy_zip, tmp_path, gan_loss):
    # The main D sees weighted reals in phase 2, so a refresh must not read it (the aux D sees uniform
    # ones); under the hinge loss the aux D's logits are on another scale, so the main D stays.
    dataset = ImageFolderDataset(toy_zip, use_labels=True)
    D = ProbeD().train()
    run = FakeRun(dataset, D, run_dir=str(tmp_path))
    run.gan_loss = gan_loss
    hook = SelfDiagnosingHook(window=4, record_every=0.004, refresh_kimg=0.004)
    hook.setup(run)
    record_three_times(hook, run, D)
    hook.start_phase2(run)
    with torch.no_grad():
        hook.aux_D.offset.fill_(-2.0)  # the aux D now disagrees with the main D
    run.prev_nimg, run.cur_nimg = run.cur_nimg, run.cur_nimg + 4
    hook.on_step_end(run)
    assert hook.refresh_count == 1 and hook.history.count == 4
    scorer = hook.aux_D if gan_loss == 'ns' else D
    assert torch.allclose(hook.history.records()[-1], expected_probe_record(dataset, scorer), atol=1e-5)
    assert (tmp_path / 'dia-scores-000000-refresh001.npz').is_file()  # the phase-start table is kept
    assert (tmp_path / 'dia-scores-000000.npz').is_file()


def test_aux_R1_follows_the_run_D_regularisation_interval(toy_zip):
    dataset = ImageFolderDataset(toy_zip, use_labels=True)
    run = FakeRun(dataset, ProbeD())
    for interval, expected in [(16, 16), (4, 4), (None, 1)]:
        run.D_reg_interval = interval
        hook = SelfDiagnosingHook(window=4)
        hook.setup(run)
        assert hook.aux_reg_interval == expected


def test_phase2_sampler_frequencies_follow_the_scores(toy_zip, tmp_path):
    dataset = ImageFolderDataset(toy_zip, use_labels=True)
    D = ProbeD()
    run = FakeRun(dataset, D, run_dir=str(tmp_path))
    hook = SelfDiagnosingHook(window=4, k=1.0)
    hook.setup(run)
    assert hook.make_sampler(run) is None  # phase 1: the loop's uniform sampler stays
    record_three_times(hook, run, D)
    hook.start_phase2(run)
    assert run.sampler_requests == 1
    _, _, _, scores = discrepancy_scores(hook.history.records(), k=1.0)
    assert torch.equal(hook.scores, scores)
    n = 30000
    counts = np.bincount(take(hook.make_sampler(run), n), minlength=len(dataset))
    expected = scores.numpy() / scores.sum().item() * n
    assert chi_square_p(counts, expected) > 1e-3
    assert chi_square_p(counts, np.full(len(dataset), n / len(dataset))) < 1e-6  # not uniform


def test_phase2_writes_score_tables_grid_histogram_and_reports_stats(toy_zip, tmp_path):
    dataset = ImageFolderDataset(toy_zip, use_labels=True)
    D = ProbeD()
    run = FakeRun(dataset, D, run_dir=str(tmp_path))
    hook = SelfDiagnosingHook(window=4)
    hook.setup(run)
    record_three_times(hook, run, D)
    hook.start_phase2(run)
    names = set(os.listdir(tmp_path))
    assert {'dia-scores-000000.npz', 'dia-scores-000000.csv', 'dia-extremes-000000.png',
            'dia-hist-000000.png'} <= names
    table = np.load(tmp_path / 'dia-scores-000000.npz')
    assert np.array_equal(table['index'], np.arange(len(dataset)))
    assert np.allclose(table['score'], hook.scores.numpy()) and np.allclose(table['ldrv'], hook.ldrv.numpy())
    rows = (tmp_path / 'dia-scores-000000.csv').read_text().splitlines()
    assert rows[0] == 'index,ldrm,ldrv,score_raw,score' and len(rows) == len(dataset) + 1
    hook.on_tick_end(run)
    assert torch.equal(run.reported['Dia/score'][-1], hook.scores)
    assert 'Dia/ldrm' in run.reported and 'Dia/ldrv' in run.reported


# Two processes ----------------------------------------------------------------------------------

def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _two_rank_worker(rank, world_size, port, data, out_dir):
    os.environ['MASTER_ADDR'], os.environ['MASTER_PORT'] = '127.0.0.1', str(port)
    torch.distributed.init_process_group('gloo', init_method='env://', rank=rank, world_size=world_size)
    try:
        dataset = ImageFolderDataset(data, use_labels=True)
        D = ProbeD()
        run = FakeRun(dataset, D, rank=rank, world_size=world_size)
        hook = SelfDiagnosingHook(window=4)
        hook.setup(run)
        record_three_times(hook, run, D)
        hook.start_phase2(run)
        torch.save(dict(records=hook.history.records(), scores=hook.scores,
                        drawn=torch.from_numpy(take(hook.make_sampler(run), 15000))),
                   os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_gather_complete_histories_and_draw_from_the_same_scores(toy_zip, tmp_path):
    torch.multiprocessing.spawn(_two_rank_worker, args=(2, _free_port(), toy_zip, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in range(2)]
    # The single-process reference: the same D on every image.
    dataset = ImageFolderDataset(toy_zip, use_labels=True)
    D = ProbeD()
    run = FakeRun(dataset, D)
    hook = SelfDiagnosingHook(window=4)
    hook.setup(run)
    record_three_times(hook, run, D)
    hook.start_phase2(run)
    for part in ranks:
        assert torch.allclose(part['records'], hook.history.records(), atol=1e-5)
        assert torch.allclose(part['scores'], hook.scores, atol=1e-5)
        counts = np.bincount(part['drawn'].numpy(), minlength=len(dataset))
        expected = hook.scores.numpy() / hook.scores.sum().item() * len(part['drawn'])
        assert chi_square_p(counts, expected) > 1e-3
    # Together the ranks draw one weighted stream: the single-process stream, interleaved.
    single = take(hook.make_sampler(run), 30000)
    assert np.array_equal(single[0::2], ranks[0]['drawn'].numpy())
    assert np.array_equal(single[1::2], ranks[1]['drawn'].numpy())


# State ------------------------------------------------------------------------------------------

def test_state_dict_survives_weights_only_load_and_restores_the_hook(toy_zip, tmp_path):
    from stylegan2_fair.networks import Discriminator
    dataset = ImageFolderDataset(toy_zip, use_labels=True)
    D = Discriminator(c_dim=10, img_resolution=8, img_channels=3, channel_base=128, channel_max=16,
                      epilogue_kwargs=dict(mbstd_group_size=2))
    run = FakeRun(dataset, D)
    hook = SelfDiagnosingHook(window=3, record_batch=40)  # one D call per record
    hook.setup(run)
    for _ in range(4):
        hook.record_ldr(run)
    hook.start_phase2(run)
    for _ in range(2):  # two aux steps, so the optimiser has state
        img = torch.rand(4, 3, 8, 8) * 2 - 1
        hook._captured_fakes.append((img, torch.eye(10)[:4]))
        hook.train_aux(run)
    buffer = io.BytesIO()
    torch.save(hook.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    restored = SelfDiagnosingHook(window=3, record_batch=40)
    restored.setup(FakeRun(dataset, D))
    restored.load_state_dict(state)
    assert torch.equal(restored.history.records(), hook.history.records()) and restored.history.count == 4
    assert restored.phase2 and torch.equal(restored.scores, hook.scores)
    for a, b in zip(restored.aux_D.parameters(), hook.aux_D.parameters()):
        assert torch.equal(a, b)
    assert restored.aux_opt.state_dict()['state'][0]['exp_avg'].equal(hook.aux_opt.state_dict()['state'][0]['exp_avg'])
    assert np.array_equal(take(restored.make_sampler(run), 200), take(hook.make_sampler(run), 200))
    with pytest.raises(ValueError, match='--dia-window=3'):
        other = SelfDiagnosingHook(window=5)
        other.setup(run)
        other.load_state_dict(state)


# The training loop --------------------------------------------------------------------------------

def tiny_loop(run_dir, data, hooks=(), total_kimg=0.012, **overrides):
    """A few steps of tiny networks at 8x8. Each tick's snapshot and state are also kept under their
    nimg (tiny runs stay below 1 kimg); the fake-image grids, slower than the steps here, are skipped."""
    from stylegan2_fair.cli.train import setup_training_options
    from stylegan2_fair.training_loop import TrainingLoop

    class KeepingLoop(TrainingLoop):
        def _save_fakes(self, filename):
            pass

        def save_snapshot(self):
            super().save_snapshot()
            for name in ('network-snapshot-000000.pkl', 'training-state-000000.pt'):
                stem, ext = os.path.splitext(name)
                kept = os.path.join(self.run_dir, f'{stem}-{self.cur_nimg}{ext}')
                shutil.copy(os.path.join(self.run_dir, name), kept)

    _, args = setup_training_options(data=data, cfg='tiny', workers=0, device='cpu', aug='noaug')
    args['G_kwargs']['synthesis_kwargs'].update(channel_base=128, channel_max=16)
    args['G_kwargs'].update(z_dim=8, w_dim=8)
    args['D_kwargs'].update(channel_base=128, channel_max=16)
    args['D_kwargs']['epilogue_kwargs']['mbstd_group_size'] = 2
    args['batch_size'] = args['batch_gpu'] = 4
    args.update(total_kimg=total_kimg, kimg_per_tick=0.004, image_snapshot_ticks=0, network_snapshot_ticks=1)
    for key in ('num_gpus', 'fair_method', 'hook_kwargs'):
        args.pop(key)
    args.update(overrides)
    loop = KeepingLoop(run_dir=str(run_dir), hooks=list(hooks), progress=False, **args)
    loop.train()
    return loop


# Record every step (4 images); phase 2 after the first step; R1 at every aux step; one D call per record.
DIA_OPTIONS = dict(record_every=0.004, phase2_kimg=0.004, window=4, aux_reg_interval=1, record_batch=40)


class NoAuxTraining(SelfDiagnosingHook):
    def train_aux(self, run):
        self._captured_fakes = []

    def write_reports(self, run):
        pass  # tested elsewhere; matplotlib is slow to load


@pytest.fixture(scope='module')
def loop_runs(toy_zip, tmp_path_factory):
    root = tmp_path_factory.mktemp('dia-runs')
    runs = {}
    # Step 1: phase 1 with an LDR record; phase 2 from its end; steps 2-3 train the aux D. The resumed
    # run starts from the snapshot at the phase switch, while the new sampler is still pending.
    runs['plain'] = tiny_loop(root / 'plain', toy_zip, total_kimg=0.004)
    hook = SelfDiagnosingHook(**DIA_OPTIONS)
    aux_reals = []
    original = hook._next_uniform_reals

    def spy(run, count):
        batch = original(run, count)
        aux_reals.extend(batch[2].tolist())
        return batch
    hook._next_uniform_reals = spy
    runs['dia'] = tiny_loop(root / 'dia', toy_zip, hooks=[hook])
    runs['aux_reals'] = aux_reals
    runs['no_aux'] = tiny_loop(root / 'no_aux', toy_zip, hooks=[NoAuxTraining(**DIA_OPTIONS)])
    state = checkpoint.load_training_state(root / 'dia' / 'training-state-000000-4.pt')
    runs['resumed'] = tiny_loop(root / 'resumed', toy_zip, hooks=[SelfDiagnosingHook(**DIA_OPTIONS)],
                                resume_state=state, resume_pkl=str(root / 'dia' / 'network-snapshot-000000-4.pkl'))
    runs['root'] = root
    return runs


def test_ldr_recording_leaves_G_and_D_training_unchanged(loop_runs):
    # After a phase-1 step with an LDR record, G and D equal those of a run without the hook.
    snap = checkpoint.load_network_pkl(loop_runs['root'] / 'dia' / 'network-snapshot-000000-4.pkl')
    plain = loop_runs['plain']
    for a, b in zip(plain.G.parameters(), snap['G'].parameters()):
        assert torch.equal(a, b)
    for a, b in zip(plain.D.parameters(), snap['D'].parameters()):
        assert torch.equal(a, b)
    hook = loop_runs['dia'].hooks[0]
    assert hook.history.count == 1 and hook.phase2


def test_aux_D_trains_on_uniform_reals_and_G_does_not_feel_it(loop_runs):
    dia, no_aux = loop_runs['dia'], loop_runs['no_aux']
    for a, b in zip(dia.G.parameters(), no_aux.G.parameters()):
        assert torch.equal(a, b)
        assert (a.grad is None and b.grad is None) or torch.equal(a.grad, b.grad)
    start = checkpoint.load_network_pkl(loop_runs['root'] / 'dia' / 'network-snapshot-000000-4.pkl')['D_aux']
    hook = dia.hooks[0]
    assert hook.aux_steps == 2
    assert any(not torch.equal(a, b) for a, b in zip(hook.aux_D.parameters(), start.parameters()))
    for a, b in zip(no_aux.hooks[0].aux_D.parameters(), start.parameters()):
        assert torch.equal(a, b)
    # The aux D's reals are a uniform stream (one permutation of the dataset per epoch), not the weighted one.
    assert isinstance(hook._aux_stream_sampler, InfiniteSampler)
    assert loop_runs['aux_reals'] == hook._aux_stream_sampler.global_indices(0, 8).tolist()
    assert isinstance(dia.sampler, WeightedInfiniteSampler)
    assert np.allclose(dia.sampler.probs, (hook.scores / hook.scores.sum()).numpy())
    final = checkpoint.load_network_pkl(loop_runs['root'] / 'dia' / 'network-snapshot-000000.pkl')
    assert all(torch.equal(a, b) for a, b in zip(final['D_aux'].parameters(), hook.aux_D.parameters()))


def test_snapshot_and_resume_continue_the_dia_run_exactly(loop_runs):
    dia, resumed = loop_runs['dia'], loop_runs['resumed']
    assert resumed.cur_nimg == dia.cur_nimg == 12
    a, b = dia.hooks[0], resumed.hooks[0]
    assert b.phase2 and b.aux_steps == a.aux_steps == 2
    assert torch.equal(a.history.records(), b.history.records()) and torch.equal(a.scores, b.scores)
    for p, q in zip(a.aux_D.parameters(), b.aux_D.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    for p, q in zip(dia.G.parameters(), resumed.G.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    assert b.aux_real_position == a.aux_real_position == 8
