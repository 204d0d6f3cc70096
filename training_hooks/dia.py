"""Self-Diagnosing GAN (Dia-GAN; Lee et al., NeurIPS 2021): `--fair-method=dia`.

Phase 1 (train and diagnose): every `record_every` kimg, D's logit on every training image
(no augmentation, D in eval mode) is recorded; it estimates the log density ratio
    LDR(x) = log(D(x) / (1 - D(x))) = logit(x) ~ log(p_data(x) / p_g(x))          (Eq. 1)
so a high value marks an image the generator under-covers. The last `window` records give
    LDRM(x) = mean of LDR(x),  LDRV(x) = variance of LDR(x) (ddof 1)              (Eq. 2)
    s(x) = LDRM(x) + k sqrt(LDRV(x)), clipped to >= clip_min, then <= clip_ratio * min   (Eq. 7)
Phase 2 (from `phase2_kimg`, default 80% of the run): reals are drawn with replacement with
P(i) proportional to s(x_i), the same weighted stream on every rank (the authors' multi-GPU code
fell back to uniform sampling there). An auxiliary D, a copy of D at the start of phase 2, keeps
training on uniformly drawn reals and the main D's fakes, so that after training it still
estimates p_data / p_g for Discriminator Rejection Sampling (phase 3: stylegan2_fair/drs.py,
`generate.py --drs`); it is stored in snapshots as `D_aux`. G never trains against it. Each D
step it sees the fakes the main D just saw and as many uniform reals (through the run's augment
pipe, like the main D), with its own Adam (the run's D options), the non-saturating loss and R1
(the run's gamma) as often as the main D gets it. All of Dia's work runs on its own seeded RNG
stream, so G and D train exactly as without the hook until phase 2 changes the sampler.

Dia-HingeGAN (the paper's Sec. 5 extension) is this hook on a run trained with the hinge loss
(`train.py --gan-loss=hinge`): D's raw output is then the hinge output D_h(x), and the same
statistics and scores are taken of it. The auxiliary D keeps the non-saturating loss, since DRS
needs a logit.

Score refreshes in phase 2 (`refresh_kimg`) score with the auxiliary D: the main D now sees the
reals weighted by w, so its logit estimates log(w p_data / p_g) and would feed each image's own
weight back into its score. Under the hinge loss the refreshes keep the main D, whose outputs are
on the scale of the phase-1 records.

At the start of phase 2 (and at each refresh) rank 0 writes to the run dir: dia-scores-KIMG.npz
and .csv (index, ldrm, ldrv, raw score, clipped score), dia-extremes-KIMG.png (top half: the
highest-score images, highest first; bottom half: the lowest-score ones, lowest first) and
dia-hist-KIMG.png (histograms of LDRM, sqrt(LDRV) and the raw score with the clip bounds).
"""
import contextlib
import copy
import csv
import math
import os

import click
import numpy as np
import torch

from stylegan2_fair import distributed, imaging
from stylegan2_fair.loss import fake_loss, real_loss
from stylegan2_fair.samplers import InfiniteSampler, WeightedInfiniteSampler
from .base import TrainingHook, register_hook


# Statistics -------------------------------------------------------------------------------------

def discrepancy_scores(records, k=1.0, clip_min=0.01, clip_ratio=50.0):
    """LDRM, LDRV (ddof 1), the raw score s = LDRM + k sqrt(LDRV) (Eq. 2, 7) and its clipped form.

    `records` is [T, N] (T records of N images). With a single record LDRV is taken as 0.
    Returns float64 tensors (ldrm, ldrv, raw_score, score), each [N].
    """
    records = torch.as_tensor(records, dtype=torch.float64)
    if records.ndim != 2 or records.shape[0] < 1:
        raise ValueError(f'records must be [T >= 1, N], got shape {list(records.shape)}')
    ldrm = records.mean(dim=0)
    ldrv = records.var(dim=0, correction=1) if records.shape[0] > 1 else torch.zeros_like(ldrm)
    raw = ldrm + k * ldrv.sqrt()
    return ldrm, ldrv, raw, clip_scores(raw, clip_min, clip_ratio)


def clip_scores(scores, clip_min=0.01, clip_ratio=50.0):
    """Floor at clip_min (every image keeps some chance), then cap at clip_ratio x the minimum."""
    scores = torch.as_tensor(scores, dtype=torch.float64).clamp(min=clip_min)
    return scores.clamp(max=clip_ratio * float(scores.min()))


def capped_fraction(scores):
    """Share of the images whose clipped score sits at the cap (clip_ratio x the minimum)."""
    scores = torch.as_tensor(scores, dtype=torch.float64)
    return float((scores >= scores.max() * (1 - 1e-9)).double().mean()) if scores.max() > scores.min() else 1.0


def flat_scores_warning(scores, clip_min, clip_ratio, limit=0.5):
    """A message when most images share the capped score: then the weighted sampler is nearly uniform.
    Happens once G fits the majority well: D's logit on many reals falls below clip_min, the minimum
    becomes clip_min, and the cap clip_ratio x clip_min lies below the typical score."""
    share = capped_fraction(scores)
    if share <= limit:
        return None
    return (f'Dia: {share:.0%} of the training images share the capped score {float(scores.max()):.3g} '
            f'(--dia-clip-ratio={clip_ratio:g} x the minimum {float(scores.min()):.3g}), so phase-2 sampling is '
            f'nearly uniform; raise --dia-clip-min (e.g. to {10 * clip_min:g}) to lift the cap')


class LdrHistory:
    """Ring buffer of the last `window` LDR records of every training image: float32 [window, N]."""

    def __init__(self, num_images, window):
        self.values = torch.zeros([window, num_images], dtype=torch.float32)
        self.count = 0  # records taken since the start of training

    @property
    def window(self):
        return self.values.shape[0]

    def add(self, record):
        self.values[self.count % self.window] = torch.as_tensor(record, dtype=torch.float32).cpu()
        self.count += 1

    def records(self):
        """The kept records, oldest first: [min(count, window), N]."""
        if self.count <= self.window:
            return self.values[:self.count]
        start = self.count % self.window
        return torch.cat([self.values[start:], self.values[:start]])


@contextlib.contextmanager
def own_random_stream(device, seed):
    """Run the hook's work on its own seeded RNG stream and give the loop its streams back untouched,
    so Dia's bookkeeping never changes which latents, mixing cutoffs or augmentations G/D get."""
    device = torch.device(device)
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == 'cuda' else []
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        if devices:
            torch.cuda.default_generators[devices[0]].manual_seed(seed)
        yield


def default_record_batch(batch_gpu, resolution, shard_size):
    """Images per D call when recording: 64 at 256x256, fewer above (16 at 512), more below (up to
    1024 at 16x16), never more than the shard needs; a multiple of batch_gpu.

    Few large calls matter on a GPU, where a small D is launch-bound: 157 calls of 64 images to score
    10k 16x16 images cost 9-13% of an H100 step time, the paper's schedule of one record per 100 G
    steps included. The growth is linear, not quadratic, in 1/resolution because D grows wider at
    low resolution. A multiple of batch_gpu keeps D's minibatch-std groups the size they have in training.
    """
    scale = 256 / resolution
    target = min(int(64 * (scale if scale >= 1 else scale ** 2)), 1024, shard_size)
    return max(batch_gpu, math.ceil(target / batch_gpu) * batch_gpu)


def _stream_seed(*keys):
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


# The hook ---------------------------------------------------------------------------------------

@register_hook('dia')
class SelfDiagnosingHook(TrainingHook):
    """Dia-GAN: LDR recording, score-weighted sampling in phase 2, and the auxiliary D for DRS."""

    cli_options = [
        click.option('--dia-k', type=float, default=1.0, metavar='FLOAT',
                     help='Dia: k in s = LDRM + k sqrt(LDRV) (Eq. 7; paper: CIFAR-10 0.3, CelebA 5, FFHQ 3)'),
        click.option('--dia-window', type=int, default=50, metavar='INT',
                     help='Dia: number of most recent LDR records the statistics use'),
        click.option('--dia-record-every', type=float, metavar='KIMG',
                     help='Dia: record LDR of every training image every KIMG [default: 100 G steps]'),
        click.option('--dia-phase2-kimg', type=float, metavar='KIMG',
                     help='Dia: start of score-weighted sampling [default: 80% of --kimg]'),
        click.option('--dia-refresh-kimg', type=float, metavar='KIMG',
                     help='Dia: recompute the scores every KIMG during phase 2 [default: never]'),
        click.option('--dia-clip-min', type=float, default=0.01, metavar='FLOAT',
                     help='Dia: lower clip of the scores'),
        click.option('--dia-clip-ratio', type=float, default=50.0, metavar='FLOAT',
                     help='Dia: upper clip of the scores as a multiple of their minimum'),
    ]

    def __init__(self, k=1.0, window=50, record_every=None, phase2_kimg=None, refresh_kimg=None, clip_min=0.01,
                 clip_ratio=50.0, aux_reg_interval=None, record_batch=None, cache_mib=1024,
                 report_images=64):
        problems = []
        if window < 2:
            problems.append(f'--dia-window={window}: the variance needs at least 2 records; use 2 or more (paper: 50)')
        if record_every is not None and not record_every > 0:
            problems.append(f'--dia-record-every={record_every}: must be a positive number of kimg')
        if refresh_kimg is not None and not refresh_kimg > 0:
            problems.append(f'--dia-refresh-kimg={refresh_kimg}: must be a positive number of kimg (or left out)')
        if phase2_kimg is not None and phase2_kimg < 0:
            problems.append(f'--dia-phase2-kimg={phase2_kimg}: must be >= 0')
        if not clip_min > 0:
            problems.append(f'--dia-clip-min={clip_min}: must be > 0 so that every image can be drawn')
        if not clip_ratio >= 1:
            problems.append(f'--dia-clip-ratio={clip_ratio}: must be >= 1 (max score / min score)')
        if problems:
            raise ValueError('; '.join(problems))
        self.k, self.window, self.clip_min, self.clip_ratio = float(k), int(window), float(clip_min), float(clip_ratio)
        self.record_every_opt, self.phase2_kimg_opt, self.refresh_kimg = record_every, phase2_kimg, refresh_kimg
        self.aux_reg_interval_opt = aux_reg_interval
        self.record_batch_opt = record_batch
        self.cache_bytes = int(cache_mib * 2**20)
        self.report_images = int(report_images)

        self.run = None
        self.history = None
        self.phase2 = False
        self.ldrm = self.ldrv = self.raw_scores = self.scores = None
        self.scores_kimg = None
        self.refresh_count = 0
        self.aux_D = self.aux_opt = None
        self.aux_steps = 0
        self.aux_real_position = 0
        self._aux_stream = self._aux_stream_sampler = None
        self._captured_fakes = []
        self._images = None  # the dataset on the device, when small enough (see _image_cache)

    # Setup and schedule -----------------------------------------------------------------------------
    def setup(self, run):
        self.run = run
        num_images = len(run.training_set)
        # The paper records every 100 G steps; one G step consumes batch_size reals.
        self.record_every = self.record_every_opt or 100 * run.batch_size / 1000
        self.phase2_kimg = self.phase2_kimg_opt if self.phase2_kimg_opt is not None else 0.8 * run.total_kimg
        # R1 for the aux D as often as the main D gets it (every D step when the loop fuses it).
        self.aux_reg_interval = int(self.aux_reg_interval_opt or run.D_reg_interval or 1)
        if run.gan_loss == 'hinge':
            self._log('Dia: the run trains with the hinge loss: statistics of the hinge D output (Dia-HingeGAN)')
        per_rank = math.ceil(num_images / run.world_size)
        self.record_batch = int(self.record_batch_opt
                                or default_record_batch(run.batch_gpu, run.training_set.resolution, per_rank))
        self.history = LdrHistory(num_images, self.window)
        # This rank's share of the images, padded to whole batches (the minibatch-std layer needs
        # full groups, and all_gather needs the same size on every rank).
        shard = np.arange(run.rank, num_images, run.world_size)
        padded = math.ceil(per_rank / self.record_batch) * self.record_batch
        self.shard_valid = torch.zeros(padded, dtype=torch.bool)
        self.shard_valid[:len(shard)] = True
        self.shard = np.resize(shard, padded) if len(shard) else np.zeros(padded, dtype=np.int64)
        # Fill the image cache now (about 1 s per 10k small images): in the first LDR record it would
        # stall one training step and count as recording time.
        self._image_cache(run)
        if self.phase2_kimg > run.total_kimg:
            self._log(f'Dia: --dia-phase2-kimg={self.phase2_kimg:g} is past the end of training '
                      f'({run.total_kimg:g} kimg): phase 2 will not start')

    def _log(self, message):
        if self.run is None or self.run.rank == 0:
            print(message, flush=True)

    # LDR recording ---------------------------------------------------------------------------------
    def _image_cache(self, run):
        """(uint8 images [N, C, H, W], labels [N, c_dim]) of the whole dataset on the device when they fit
        in cache_mib, else None. Recording and the aux D's reals then skip decoding images each time."""
        if self._images is None:
            dataset = run.training_set
            if len(dataset) * int(np.prod(dataset.image_shape)) > self.cache_bytes:
                self._images = False
            else:
                items = [dataset[i] for i in range(len(dataset))]
                self._images = (torch.from_numpy(np.stack([item[0] for item in items])).to(run.device),
                                torch.from_numpy(np.stack([item[1] for item in items])).to(run.device))
        return self._images or None

    def _images_at(self, run, indices):
        """(img float [-1, 1], c, idx) for dataset indices, as the loop's data streams give them."""
        images, labels = self._image_cache(run)
        idx = torch.as_tensor(indices, dtype=torch.int64, device=images.device)
        return images[idx].to(torch.float32) / 127.5 - 1, labels[idx], idx

    def _shard_batches(self, run):
        """(img, c) batches over this rank's padded shard, in order."""
        if self._image_cache(run) is not None:
            for start in range(0, len(self.shard), self.record_batch):
                yield self._images_at(run, self.shard[start:start + self.record_batch])[:2]
            return
        for img, c, _ in run.data_stream(sampler=[int(i) for i in self.shard], batch_size=self.record_batch):
            yield img, c

    def scoring_D(self, run):
        """The D whose outputs are recorded: the main D, or in phase 2 the aux D (module docstring)."""
        if self.phase2 and self.aux_D is not None and run.gan_loss == 'ns':
            return self.aux_D
        return run.D

    @torch.no_grad()
    def record_ldr(self, run):
        """Score every training image with D (eval mode, no augmentation) and add one record."""
        D = self.scoring_D(run)
        was_training = D.training
        D.eval()
        values = []
        with own_random_stream(run.device, _stream_seed(run.random_seed, run.rank, 1, self.history.count)):
            for img, c in self._shard_batches(run):
                values.append(D(img, c).flatten().float())
        D.train(was_training)
        values = torch.cat(values)
        # Every rank scored its shard; gather so that each image's history is complete everywhere.
        indices = torch.as_tensor(self.shard, device=values.device)
        valid = self.shard_valid.to(values.device)
        all_values = run.all_gather(values).cpu()
        all_indices = run.all_gather(indices).cpu()
        all_valid = run.all_gather(valid).cpu()
        record = torch.full([len(run.training_set)], float('nan'))
        record[all_indices[all_valid]] = all_values[all_valid]
        if torch.isnan(record).any():
            raise RuntimeError('Dia: the gathered LDR record misses some images; every rank must score its shard')
        self.history.add(record)
        run.report0('Dia/ldr', record)

    # Phase 2 ---------------------------------------------------------------------------------------
    def compute_scores(self, run):
        if self.history.count == 0:
            self.record_ldr(run)
        if self.history.count < 2:
            self._log('Dia: only one LDR record before phase 2, so LDRV is taken as 0; record more often '
                      '(--dia-record-every) or start phase 2 later (--dia-phase2-kimg)')
        self.ldrm, self.ldrv, self.raw_scores, self.scores = discrepancy_scores(
            self.history.records(), self.k, self.clip_min, self.clip_ratio)
        if not bool(torch.isfinite(self.scores).all()):
            raise RuntimeError('Dia: some discrepancy scores are not finite because D gave NaN/inf logits; the run '
                               'has diverged: resume from an earlier snapshot (lower --gamma or the learning rate)')
        self.scores_kimg = run.cur_nimg / 1000
        warning = flat_scores_warning(self.scores, self.clip_min, self.clip_ratio)
        if warning is not None:
            self._log(warning)
        if run.rank == 0 and run.run_dir is not None:
            self.write_reports(run)

    def start_phase2(self, run):
        self.compute_scores(run)
        self.phase2 = True
        run.request_new_sampler()
        self._make_aux(run)
        self._log(f'Dia: phase 2 at {run.cur_nimg / 1000:.1f} kimg: score-weighted sampling from '
                  f'{min(self.history.count, self.window)} LDR records; auxiliary D created')

    def make_sampler(self, run):
        if not self.phase2 or self.scores is None:
            return None
        # One weighted stream, split across ranks: every rank draws from the same distribution.
        seed = _stream_seed(run.random_seed, 2, self.refresh_count)
        return WeightedInfiniteSampler(self.scores.numpy(), run.rank, run.world_size, seed=seed % 2**31)

    # Auxiliary discriminator -----------------------------------------------------------------------
    def _make_aux(self, run, state=None):
        self.aux_D = copy.deepcopy(run.D).train().requires_grad_(False)
        if state is not None:
            self.aux_D.load_state_dict(state)
        opt_kwargs = dict(run.D_opt_kwargs)
        opt_class = getattr(torch.optim, opt_kwargs.pop('class_name', 'Adam').split('.')[-1])
        # R1 is folded into the main step every aux_reg_interval steps (one optimiser step per
        # iteration), so the lazy-regularisation rescaling of lr and betas does not apply here.
        self.aux_opt = opt_class(self.aux_D.parameters(), **opt_kwargs)

    def phase_loss(self, run, phase, batch):
        if phase == 'Dmain' and self.aux_D is not None:
            self._captured_fakes.append((batch.gen_img.detach(), batch.gen_c.detach()))
        return None

    def _next_uniform_reals(self, run, count):
        if self._aux_stream is None:
            # Uniform reals, as the paper asks: the aux D must estimate p_data / p_g, not p'_data / p_g.
            self._aux_stream_sampler = InfiniteSampler(len(run.training_set), run.rank, run.world_size,
                                                       seed=_stream_seed(run.random_seed, 3) % 2**31,
                                                       start=self.aux_real_position)
            if self._image_cache(run) is not None:
                self._aux_stream = iter(self._aux_stream_sampler)
            else:
                self._aux_stream = run.data_stream(sampler=self._aux_stream_sampler, batch_size=count)
        self.aux_real_position += count * run.world_size
        if self._image_cache(run) is not None:
            return self._images_at(run, [next(self._aux_stream) for _ in range(count)])
        return next(self._aux_stream)

    def train_aux(self, run):
        """One step of the auxiliary D: non-saturating loss on uniform reals and the main D's fakes,
        plus lazy R1 (gamma of the run, every aux_reg_interval steps with that gain)."""
        fakes, self._captured_fakes = self._captured_fakes, []
        if not fakes:
            return
        aux, pipe = self.aux_D, run.augment_pipe
        do_r1 = run.r1_gamma != 0 and self.aux_steps % self.aux_reg_interval == 0
        with own_random_stream(run.device, _stream_seed(run.random_seed, run.rank, 4, self.aux_steps)):
            real_img, real_c, _ = self._next_uniform_reals(run, sum(len(img) for img, _ in fakes))
            aux.requires_grad_(True)
            self.aux_opt.zero_grad(set_to_none=True)
            start = 0
            for gen_img, gen_c in fakes:
                n = len(gen_img)
                real = real_img[start:start + n].detach().requires_grad_(do_r1)
                r_c = real_c[start:start + n]
                start += n
                fake_logits = aux(pipe(gen_img) if pipe is not None else gen_img, gen_c)
                real_logits = aux(pipe(real) if pipe is not None else real, r_c)
                per_sample = fake_loss(fake_logits) + real_loss(real_logits)  # non-saturating, whatever --gan-loss
                loss = per_sample.mean()
                run.report('Dia/aux/loss', per_sample)
                run.report('Dia/aux/scores_real', real_logits)
                run.report('Dia/aux/scores_fake', fake_logits)
                if do_r1:
                    grads, = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
                    penalty = grads.square().sum([1, 2, 3])
                    run.report('Dia/aux/r1_penalty', penalty)
                    loss = loss + penalty.mean() * (run.r1_gamma / 2) * self.aux_reg_interval
                loss.backward()
            aux.requires_grad_(False)
            params = [p for p in aux.parameters() if p.grad is not None]
            distributed.average_gradients(params)
            for p in params:
                torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
            self.aux_opt.step()
        self.aux_steps += 1

    # Loop hook points ------------------------------------------------------------------------------
    def on_step_end(self, run):
        if self.aux_D is not None:
            self.train_aux(run)
        if (not self.phase2 or self.refresh_kimg) and run.crossed_kimg(self.record_every):
            self.record_ldr(run)
        if not self.phase2 and run.cur_nimg >= self.phase2_kimg * 1000:
            self.start_phase2(run)
        elif self.phase2 and self.refresh_kimg and run.crossed_kimg(self.refresh_kimg):
            self.refresh_count += 1
            self.compute_scores(run)
            run.request_new_sampler()

    def on_tick_end(self, run):
        if self.scores is None:
            return
        # Every rank holds the same scores: rank 0 reports them (report0 keeps the names on all ranks).
        run.report0('Dia/phase', 2.0 if self.phase2 else 1.0)
        run.report0('Dia/score', self.scores)
        run.report0('Dia/score_raw', self.raw_scores)
        run.report0('Dia/ldrm', self.ldrm)
        run.report0('Dia/ldrv', self.ldrv)
        run.report0('Dia/score_max_over_min', float(self.scores.max() / self.scores.min()))
        run.report0('Dia/score_capped_fraction', capped_fraction(self.scores))

    def on_train_end(self, run):
        if not self.phase2:
            self._log(f'Dia: training ended at {run.cur_nimg / 1000:.1f} kimg before phase 2 '
                      f'({self.phase2_kimg:g} kimg): no weighted sampling and no auxiliary D')

    def snapshot_modules(self):
        return {'D_aux': self.aux_D} if self.aux_D is not None else {}

    # Reports ---------------------------------------------------------------------------------------
    def write_reports(self, run):
        refresh = f'-refresh{self.refresh_count:03d}' if self.refresh_count else ''
        stem = os.path.join(run.run_dir, f'dia-scores-{int(run.cur_nimg // 1000):06d}{refresh}')
        index = np.arange(len(self.scores))
        columns = dict(index=index, ldrm=self.ldrm.numpy(), ldrv=self.ldrv.numpy(),
                       score_raw=self.raw_scores.numpy(), score=self.scores.numpy())
        imaging.atomic_write(stem + '.npz', lambda f: np.savez(f, **columns), suffix='.npz')

        def write_csv(f):
            import io
            text = io.StringIO()
            writer = csv.writer(text)
            writer.writerow(list(columns))
            for row in zip(*columns.values()):
                writer.writerow([int(row[0])] + [f'{float(v):.6g}' for v in row[1:]])
            f.write(text.getvalue().encode())
        imaging.atomic_write(stem + '.csv', write_csv, suffix='.csv')
        self._write_extremes(run, stem.replace('dia-scores-', 'dia-extremes-') + '.png')
        self._write_histogram(stem.replace('dia-scores-', 'dia-hist-') + '.png')

    def _write_extremes(self, run, path):
        count = max(1, min(self.report_images // 2, len(self.scores) // 2 or 1))
        order = torch.argsort(self.raw_scores, descending=True).numpy()
        picks = list(order[:count]) + list(order[::-1][:count])
        images = np.stack([run.training_set[int(i)][0] for i in picks])
        width = min(count, 16)
        rows = math.ceil(count / width)
        pad = rows * width - count  # keep the highest and lowest groups on separate rows
        blank = np.zeros([pad] + list(images.shape[1:]), dtype=images.dtype)
        images = np.concatenate([images[:count], blank, images[count:], blank])
        imaging.save_image_grid(images, path, (0, 255), (width, 2 * rows))

    def _write_histogram(self, path):
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
        for ax, values, title in [(axes[0], self.ldrm, 'LDRM'), (axes[1], self.ldrv.sqrt(), 'sqrt(LDRV)'),
                                  (axes[2], self.raw_scores, f'score = LDRM + {self.k:g} sqrt(LDRV)')]:
            ax.hist(values.numpy(), bins=50, color='tab:blue')
            ax.set_title(title)
            ax.set_ylabel('images')
        lo = float(self.scores.min())
        axes[2].axvline(self.clip_min, color='tab:red', linestyle='--', label=f'clip min {self.clip_min:g}')
        axes[2].axvline(self.clip_ratio * lo, color='tab:orange', linestyle='--',
                        label=f'clip max {self.clip_ratio:g} x min')
        axes[2].legend(fontsize=7)
        fig.tight_layout()
        imaging.atomic_write(path, lambda f: fig.savefig(f, format='png', dpi=80), suffix='.png')
        plt.close(fig)

    # State -----------------------------------------------------------------------------------------
    def state_dict(self):
        tensor = lambda t: None if t is None else t.detach().cpu().clone()
        return dict(
            version=1,
            ldr_records=self.history.values.clone(), ldr_count=self.history.count,
            phase2=self.phase2, refresh_count=self.refresh_count, scores_kimg=self.scores_kimg,
            ldrm=tensor(self.ldrm), ldrv=tensor(self.ldrv), score_raw=tensor(self.raw_scores),
            scores=tensor(self.scores),
            aux_steps=self.aux_steps, aux_real_position=self.aux_real_position,
            aux_D=None if self.aux_D is None else {k: v.detach().cpu().clone()
                                                   for k, v in self.aux_D.state_dict().items()},
            aux_opt=None if self.aux_opt is None else self.aux_opt.state_dict(),
        )

    def load_state_dict(self, state):
        if not state:
            return  # e.g. Dia added when resuming a run that had no Dia
        if self.run is None:
            raise RuntimeError('Dia: load_state_dict must come after setup(run)')
        records = torch.as_tensor(state['ldr_records'], dtype=torch.float32)
        if records.shape[1] != self.history.values.shape[1]:
            raise ValueError(f'Dia: the saved LDR history covers {records.shape[1]} images but the dataset has '
                             f'{self.history.values.shape[1]}; resume with the same --data (and --subset/--mirror)')
        if records.shape[0] != self.window:
            raise ValueError(f'Dia: the saved LDR history has a window of {records.shape[0]} records; '
                             f'resume with --dia-window={records.shape[0]}')
        self.history.values.copy_(records)
        self.history.count = int(state['ldr_count'])
        self.phase2, self.refresh_count = bool(state['phase2']), int(state['refresh_count'])
        self.scores_kimg = state['scores_kimg']
        as64 = lambda t: None if t is None else torch.as_tensor(t, dtype=torch.float64)
        self.ldrm, self.ldrv = as64(state['ldrm']), as64(state['ldrv'])
        self.raw_scores, self.scores = as64(state['score_raw']), as64(state['scores'])
        self.aux_steps, self.aux_real_position = int(state['aux_steps']), int(state['aux_real_position'])
        self._aux_stream = None
        self.aux_D = self.aux_opt = None
        if state['aux_D'] is not None:
            self._make_aux(self.run, state['aux_D'])
            self.aux_opt.load_state_dict(state['aux_opt'])
