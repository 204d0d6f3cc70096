"""Inclusive GAN / IMLE-GAN with minority inclusion (Yu et al. 2020): `--fair-method=imle`.

Next to the adversarial loss, G is asked to reconstruct every real image of a reconstruction set
from a latent matched to it (IMLE: each real finds its nearest generated sample, so no real mode is
left out), and to reconstruct pairs of them from interpolated latents (Eq. 5-10, Algorithm 1):

    L = L_adv + lambda * L_rec + beta * L_itp
    L_rec = LPIPS(G(z*(x) + noise), x)                                      (Eq. 6)
    z*(x) = nearest neighbour of x among G(z_1..z_m) in a feature space      (Eq. 7)
    L_itp = a LPIPS(G(z_a), x) + (1 - a) LPIPS(G(z_a), x~),  a ~ U(0, 1)     (Eq. 8-9)
    z_a   = the point a of the way from z*(x~) to z*(x)                      (Eq. 10)

Pool: m = pool_factor x |reconstruction set| latents, drawn once from a seed and re-rendered with
the current G (not the EMA) at each re-match; the schedule is the paper's (epochs 0, 10, 20, 40, ...).
Sizes and epochs count each image once: --mirror's x-flipped copies are neither reconstructed nor counted.
Minority inclusion (Sec. 3.4): `subgroup` restricts the reconstruction set to images with the named
dataset attributes; the adversarial term still sees all data (the loop's sampler is untouched).
Each round of Gmain (batch_gpu adversarial samples) adds 2 x pairs reconstructions and `pairs`
interpolations (the paper's 2 mb + mb per mb); pairs defaults to the round size. That triples G's
work in Gmain and adds LPIPS's VGG16 on top; `pairs` and `interval` (terms every N-th G step,
scaled by N, like StyleGAN2's lazy regularisation) trade that cost against fidelity to the paper.
"""
import math
import os

import click
import numpy as np
import torch

from stylegan2_fair import imaging
from stylegan2_fair.lpips_features import (LPIPS_BACKBONE_OPTION, CountSketch, LPIPSBackboneMissing, LPIPSFeatures,
                                           embedding_distance, find_backbone_file)
from stylegan2_fair.nn_search import nearest_neighbors
from .base import TrainingHook, register_hook

MATCH_SPACES = ('lpips', 'pixels', 'dfeat')


# Minority subgroups ----------------------------------------------------------------------------

SUBGROUP_SYNTAX = 'attribute names joined by "&", each optionally negated by one "!", e.g. "Eyeglasses & !Male"'


def parse_subgroup(spec):
    """'Narrow_Eyes & !Male' -> [('Narrow_Eyes', True), ('Male', False)] (an AND of attribute tests)."""
    return [_parse_subgroup_term(spec, raw.strip()) for raw in str(spec).split('&')]


def _parse_subgroup_term(spec, term):
    """'!Male' -> ('Male', False); refuses what would otherwise be read as a different subgroup."""
    for operator in ('|', ','):
        if operator in term:
            raise ValueError(f'--imle-subgroup={spec!r}: {operator!r} is not supported; only AND ("&") and NOT '
                             f'("!") are: write {SUBGROUP_SYNTAX}. For an OR, add the union as an attribute '
                             f'of its own (dataset_tool --attributes)')
    wanted = not term.startswith('!')
    name = term[0 if wanted else 1:].strip()
    if '!' in name:  # '!!Male' must not silently mean '!Male' (nor 'Male', as a double negation would)
        raise ValueError(f'--imle-subgroup={spec!r}: {term!r} has more than one "!" or a "!" inside the name; '
                         f'write {SUBGROUP_SYNTAX}')
    if not name:
        raise ValueError(f'--imle-subgroup={spec!r}: empty attribute name; write {SUBGROUP_SYNTAX}')
    return name, wanted


def unique_image_positions(dataset):
    """Dataset positions holding each raw image once, in order.

    --mirror appends an x-flipped copy of every image (len(dataset) doubles); IMLE's reconstruction
    set, pool size and epoch (data_size reals, as the authors' schedule counts it) count the images
    themselves, so the copies are left out (the first occurrence is the unflipped one).
    """
    raw = np.array([dataset.raw_index(i) for i in range(len(dataset))], dtype=np.int64)
    _, first = np.unique(raw, return_index=True)
    return np.sort(first)


def subgroup_indices(dataset, spec):
    """Dataset positions of the images in subgroup `spec` (each raw image once, see
    unique_image_positions); a clear error for unknown names or no match."""
    terms = parse_subgroup(spec)
    available = list(dataset.attribute_names)
    unknown = [name for name, _ in terms if name not in available]
    if unknown:
        raise ValueError(f'--imle-subgroup={spec!r}: unknown attribute(s) {unknown}; the dataset has: '
                         f'{", ".join(available) or "no attributes (add them with dataset_tool --attributes)"}')
    candidates = unique_image_positions(dataset)
    values = dataset.get_attributes(candidates, names=[name for name, _ in terms])
    wanted = np.array([want for _, want in terms])
    mask = np.all(values == wanted[None, :], axis=1)
    if not mask.any():
        counts = ', '.join(f'{"" if want else "!"}{name}: {int((values[:, i] == want).sum())}'
                           for i, (name, want) in enumerate(terms))
        raise ValueError(f'--imle-subgroup={spec!r} selects no image of the dataset ({len(candidates)} images; '
                         f'per term {counts}). Loosen the condition (fewer "&" terms, or drop a "!"); '
                         f'attributes available: {", ".join(available)}')
    return candidates[mask]


def reconstruction_positions(dataset, subgroup=None):
    """Dataset positions of the reconstruction set: the subgroup's images, or every image (once each)."""
    return unique_image_positions(dataset) if subgroup is None else subgroup_indices(dataset, subgroup)


# Conditional pools -----------------------------------------------------------------------------

def pool_label_sources(pool_size, n_recon):
    """Reconstruction item whose label each pool candidate is rendered with (candidate i: item i mod |R|)."""
    return torch.arange(pool_size) % n_recon


def label_groups(labels):
    """(distinct label rows, group number of each row) for float labels [N, c_dim]."""
    uniq, groups = np.unique(labels, axis=0, return_inverse=True)
    return uniq, torch.from_numpy(groups.reshape(-1).astype(np.int64))


def check_pool_covers_labels(recon_labels, pool_size, pool_factor):
    """Conditional models match a real image only to candidates of its label: every label of the
    reconstruction set needs at least one candidate, or its images would have no match at all."""
    uniq, groups = label_groups(recon_labels)
    covered = set(groups[pool_label_sources(pool_size, len(groups))].tolist())
    missing = [g for g in range(len(uniq)) if g not in covered]
    if missing:
        example = uniq[missing[0]]
        label = f'class {int(example.argmax())}' if set(np.unique(example)) <= {0, 1} else str(example.tolist())
        raise ValueError(
            f'--imle-pool-factor={pool_factor:g}: the latent pool ({pool_size} candidates for {len(groups)} '
            f'reconstruction images) has no candidate with {len(missing)} of the {len(uniq)} labels of the '
            f'reconstruction set (e.g. {label}), so their images could not be matched. Use --imle-pool-factor '
            f'of 1 or more with --cond=1 (every reconstruction image then lends its label to a candidate)')


# Re-matching schedule --------------------------------------------------------------------------

class RematchSchedule:
    """When to re-match, as the number of reals seen by D at the k-th re-match (k = 0, 1, 2, ...).

    'double:S' (the paper's, S=10): epochs 0, S, 2S, 4S, 8S, ... (every S epochs at first, the
    period doubling after each re-match); 'epochs:S': every S epochs; 'kimg:K': every K kimg.
    An epoch is `epoch_nimg` reals (the data set size).
    """

    def __init__(self, spec, epoch_nimg):
        kind, _, value = str(spec).partition(':')
        try:
            self.period = float(value) if value else 10.0
        except ValueError:
            self.period = -1.0
        if kind not in ('double', 'epochs', 'kimg') or not self.period > 0:
            raise ValueError(f'--imle-rematch={spec!r}: use double:EPOCHS (the paper: double:10), '
                             f'epochs:EPOCHS or kimg:KIMG with a positive number')
        self.kind = kind
        self.epoch_nimg = epoch_nimg

    def nimg_of(self, k):
        if self.kind == 'kimg':
            return int(round(k * self.period * 1000))
        epochs = k * self.period if self.kind == 'epochs' else (0 if k == 0 else self.period * 2 ** (k - 1))
        return int(round(epochs * self.epoch_nimg))


# Latent geometry -------------------------------------------------------------------------------

def slerp(a, b, t):
    """Spherical interpolation of the directions of a and b (t=0: a, t=1: b), at norm sqrt(dim).
    The mapping network normalises z, so only directions matter; the norm is that of a typical z."""
    a_unit = a / a.norm(dim=1, keepdim=True).clamp(min=1e-8)
    b_unit = b / b.norm(dim=1, keepdim=True).clamp(min=1e-8)
    t = torch.as_tensor(t, dtype=a.dtype, device=a.device).reshape(-1, 1)
    # The clamp keeps sin(theta) > 0; for (nearly) parallel a and b the result is then ~a.
    cos = (a_unit * b_unit).sum(1, keepdim=True).clamp(-1 + 1e-6, 1 - 1e-6)
    theta = torch.acos(cos)
    out = (torch.sin((1 - t) * theta) * a_unit + torch.sin(t * theta) * b_unit) / torch.sin(theta)
    return out / out.norm(dim=1, keepdim=True).clamp(min=1e-8) * math.sqrt(a.shape[1])


# The hook --------------------------------------------------------------------------------------

@register_hook('imle')
class InclusiveGAN(TrainingHook):
    """IMLE reconstruction and interpolation terms for G, with optional minority subgroup."""

    cli_options = [
        click.option('--imle-lambda', 'imle_recon_weight', type=float, default=2.5, metavar='FLOAT',
                     help='IMLE: lambda, weight of the LPIPS reconstruction term (Eq. 5-6)'),
        click.option('--imle-beta', 'imle_interp_weight', type=float, default=1.0, metavar='FLOAT',
                     help='IMLE: beta, weight of the interpolation term (Eq. 8-10)'),
        click.option('--imle-pool-factor', type=float, default=10, metavar='FLOAT',
                     help='IMLE: latent pool size as a multiple of the reconstruction set size'),
        click.option('--imle-rematch', default='double:10', metavar='SPEC',
                     help='IMLE: re-match schedule: double:E (epochs 0,E,2E,4E,...), epochs:E or kimg:K'),
        click.option('--imle-match-space', type=click.Choice(MATCH_SPACES), default='lpips',
                     help='IMLE: feature space of the nearest-neighbour matching (Eq. 7)'),
        click.option('--imle-proj-dim', type=int, default=512, metavar='INT',
                     help='IMLE: random projection size of lpips/pixel features for matching (0: none)'),
        click.option('--imle-subgroup', metavar='ATTRS',
                     help='IMLE: minority to include, e.g. "Eyeglasses" or "Narrow_Eyes & !Male" (dataset attributes)'),
        click.option('--imle-perturb', type=float, default=0.05, metavar='FLOAT',
                     help='IMLE: slerp fraction towards a random latent applied to matched latents'),
        click.option('--imle-interp', type=click.Choice(['slerp', 'lerp']), default='slerp',
                     help='IMLE: latent interpolation of Eq. 10 (lerp: the formula as printed)'),
        click.option('--imle-pairs', type=int, metavar='INT',
                     help='IMLE: matched pairs per round (2 reconstructions + 1 interpolation each) '
                          '[default: batch_gpu]'),
        click.option('--imle-interval', type=int, default=1, metavar='INT',
                     help='IMLE: add the terms every N-th G step, scaled by N (lazy, as StyleGAN2 '
                          'regularises; 1: every step)'),
        click.option('--imle-resample-pool', type=bool, default=False, metavar='BOOL',
                     help='IMLE: draw fresh pool latents at each re-match (Algorithm 1) instead of once'),
        LPIPS_BACKBONE_OPTION,
    ]

    def __init__(self, recon_weight=2.5, interp_weight=1.0, pool_factor=10, rematch='double:10',
                 match_space='lpips', proj_dim=512, subgroup=None, perturb=0.05, interp='slerp', pairs=None,
                 interval=1, resample_pool=False, lpips_backbone=None, render_batch=64, cache_gib=2.0, grid_pairs=32):
        if match_space not in MATCH_SPACES:
            raise ValueError(f'--imle-match-space={match_space!r}: choose from {", ".join(MATCH_SPACES)}')
        if interp not in ('slerp', 'lerp'):
            raise ValueError(f'--imle-interp={interp!r}: choose slerp or lerp')
        if (pool_factor <= 0 or proj_dim < 0 or (pairs is not None and pairs < 1) or interval < 1
                or recon_weight < 0 or interp_weight < 0):
            raise ValueError('IMLE: --imle-pool-factor, --imle-pairs and --imle-interval must be positive; '
                             '--imle-proj-dim, --imle-lambda and --imle-beta must not be negative')
        RematchSchedule(rematch, 1)  # fail on a bad spec now, before any setup
        if subgroup is not None:
            parse_subgroup(subgroup)
        self.recon_weight, self.interp_weight = float(recon_weight), float(interp_weight)
        self.pool_factor, self.rematch_spec, self.match_space = pool_factor, rematch, match_space
        self.proj_dim, self.subgroup, self.perturb, self.interp = int(proj_dim), subgroup, float(perturb), interp
        self.pairs, self.interval = pairs, int(interval)
        self.resample_pool, self.lpips_backbone = bool(resample_pool), lpips_backbone
        self.render_batch, self.cache_gib, self.grid_pairs = int(render_batch), cache_gib, int(grid_pairs)
        self.num_rematches = 0
        self.force_rematch = False
        self.matched_index = self.matched_dist = None

    # Setup ---------------------------------------------------------------------------------------
    def check_dataset(self, training_set):
        """Before the run dir exists: the subgroup, the pool's labels and the LPIPS weights, as setup needs them."""
        recon = reconstruction_positions(training_set, self.subgroup)
        if training_set.has_labels:
            labels = np.stack([training_set.get_label(int(i)) for i in recon])
            check_pool_covers_labels(labels, self._pool_size_for(len(recon)), self.pool_factor)
        try:
            find_backbone_file(self.lpips_backbone)
        except LPIPSBackboneMissing as err:
            raise ValueError(str(err)) from err

    def _pool_size_for(self, n_recon):
        return max(int(round(self.pool_factor * n_recon)), 1)

    def setup(self, run):
        dataset = run.training_set
        all_images = unique_image_positions(dataset)
        if self.subgroup is not None:
            recon = subgroup_indices(dataset, self.subgroup)
            # The overall match distance is reported on a uniform sample as large as the subgroup.
            rng = np.random.RandomState(run.random_seed + 1)
            overall = np.sort(rng.choice(all_images, size=min(len(all_images), len(recon)), replace=False))
        else:
            recon = overall = all_images
        self.queries = np.union1d(recon, overall)                      # images whose matches we compute
        self.recon_pos = torch.from_numpy(np.searchsorted(self.queries, recon))
        self.overall_pos = torch.from_numpy(np.searchsorted(self.queries, overall))
        self.recon_indices = torch.from_numpy(recon.astype(np.int64))
        self.schedule = RematchSchedule(self.rematch_spec, len(all_images))  # an epoch: each image once, mirrored or not
        self.pool_size = self._pool_size_for(len(recon))
        self.pool_seed = int(run.random_seed) * 7919 + 20200801
        self.z_dim, self.c_dim, self.device = run.G.z_dim, run.G.c_dim, run.device
        self._setup_labels(dataset, len(recon))
        self.lpips = LPIPSFeatures(self.lpips_backbone).to(run.device)
        self.sketch = CountSketch(self.proj_dim, seed=run.random_seed) if self.proj_dim > 0 else None
        self.query_features = None

        # Cache the images we match and reconstruct as uint8 when they fit.
        shape = dataset.image_shape
        self.image_cache = None
        if len(self.queries) * int(np.prod(shape)) <= self.cache_gib * 2 ** 30:
            self.image_cache = torch.from_numpy(np.stack([dataset[int(i)][0] for i in self.queries]))
        self._draw_pool(self.pool_seed)
        grid_rng = np.random.RandomState(run.random_seed + 2)
        self.grid_pos = torch.from_numpy(np.sort(grid_rng.permutation(len(recon))[:self.grid_pairs]))

    def _setup_labels(self, dataset, n_recon):
        """Conditional models render pool candidates with the labels of the reconstruction set
        (candidate i gets the label of recon item i mod |R|) and match within equal labels."""
        labels = np.stack([dataset.get_label(int(i)) for i in self.queries]).astype(np.float32)
        self.query_labels = torch.from_numpy(labels)
        self.query_groups = self.pool_groups = None
        cycle = pool_label_sources(self.pool_size, n_recon)
        self.pool_labels = self.query_labels[self.recon_pos[cycle]]
        if self.c_dim > 0:
            recon_labels = labels[self.recon_pos.numpy()]
            check_pool_covers_labels(recon_labels, self.pool_size, self.pool_factor)
            uniq, self.recon_groups = label_groups(recon_labels)
            group_of = {row.tobytes(): g for g, row in enumerate(uniq)}
            self.query_groups = torch.tensor([group_of.get(row.tobytes(), -1) for row in labels])
            self.pool_groups = self.recon_groups[cycle]
            # Partner of an interpolation pair: a recon item with the same label.
            self.partner_order = torch.argsort(self.recon_groups, stable=True)
            self.partner_counts = torch.bincount(self.recon_groups, minlength=len(uniq))
            self.partner_starts = torch.cumsum(self.partner_counts, 0) - self.partner_counts

    def _draw_pool(self, seed):
        gen = torch.Generator().manual_seed(seed)
        self.pool_z = torch.randn([self.pool_size, self.z_dim], generator=gen)
        self.current_pool_seed = seed

    def _images(self, run, positions):
        """Float [-1, 1] images on the device for positions into self.queries."""
        if self.image_cache is not None:
            images = self.image_cache[positions]
        else:
            images = torch.from_numpy(np.stack([run.training_set[int(self.queries[p])][0] for p in positions]))
        return images.to(run.device).float() / 127.5 - 1

    # Matching (Eq. 7) ----------------------------------------------------------------------------
    def _render(self, run, z, c, noise_mode):
        G = run.G
        ws = G.mapping(z.to(run.device), c.to(run.device), skip_w_avg_update=True)
        return G.synthesis(ws, noise_mode=noise_mode)

    def _features(self, run, images, labels):
        if self.match_space == 'lpips':
            return self.lpips.embed(images, self.sketch)
        if self.match_space == 'pixels':
            flat = images.flatten(1) / math.sqrt(images[0].numel())  # squared distance = MSE
            return self.sketch(flat) if self.sketch is not None and flat.shape[1] > self.proj_dim else flat
        # 'dfeat': D's penultimate features (the 4x4 head's fc output), read with a forward hook.
        captured = []
        handle = run.D.b4.fc.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            run.D(images, labels.to(run.device))
        finally:
            handle.remove()
        return captured[0].float()

    def _split_features(self, run, count, make_images, make_labels):
        """Features of items 0..count-1, each rank computing a contiguous share; gathered in order."""
        share = -(-count // run.world_size)
        positions = torch.arange(run.rank * share, (run.rank + 1) * share).clamp(max=count - 1)
        parts = []
        for chunk in positions.split(self.render_batch):
            pad = self.render_batch - len(chunk)  # full batches: D's minibatch-std needs them for dfeat
            chunk = torch.cat([chunk, chunk[-1:].repeat(pad)]) if pad > 0 else chunk
            feats = self._features(run, make_images(chunk), make_labels(chunk))
            parts.append(feats[:len(feats) - pad])
        return run.all_gather(torch.cat(parts))[:count]

    @torch.no_grad()
    def rematch(self, run):
        """Re-render the pool with the current G, and find each real's nearest candidate."""
        if self.resample_pool:
            self._draw_pool(self.pool_seed + self.num_rematches)
        pool_features = self._split_features(
            run, self.pool_size, lambda p: self._render(run, self.pool_z[p], self.pool_labels[p], 'const'),
            lambda p: self.pool_labels[p])
        if self.query_features is None or self.match_space == 'dfeat':  # LPIPS and pixels are fixed spaces
            self.query_features = self._split_features(
                run, len(self.queries), lambda p: self._images(run, p), lambda p: self.query_labels[p])
        share = -(-len(self.queries) // run.world_size)
        mine = torch.arange(run.rank * share, (run.rank + 1) * share).clamp(max=len(self.queries) - 1)
        groups = (None, None) if self.query_groups is None else (self.query_groups[mine], self.pool_groups)
        index, dist = nearest_neighbors(self.query_features[mine], pool_features,
                                        query_groups=groups[0], pool_groups=groups[1])
        self.matched_index = run.all_gather(index)[:len(self.queries)].cpu()
        self.matched_dist = run.all_gather(dist)[:len(self.queries)].cpu()
        self.matched_z = self.pool_z[self.matched_index[self.recon_pos]].to(run.device)
        self._report_matches(run)

    def _report_matches(self, run):
        overall = self.matched_dist[self.overall_pos]
        run.report('IMLE/match_dist', overall[torch.isfinite(overall)])
        if self.subgroup is not None:
            run.report('IMLE/match_dist_subgroup', self.matched_dist[self.recon_pos])
        if run.rank == 0 and run.run_dir is not None and len(self.grid_pos):
            self._save_grid(run)

    def _save_grid(self, run):
        """Reals (left) beside their current reconstructions G(z*(x)) (right), 8 pairs a row."""
        pos = self.recon_pos[self.grid_pos]
        reals = self._images(run, pos).cpu()
        fakes = self._render(run, self.matched_z[self.grid_pos], self.query_labels[pos], 'const').cpu()
        pairs = torch.stack([reals, fakes.clamp(-1, 1)], 1).flatten(0, 1)
        per_row = min(8, len(pos))
        path = os.path.join(run.run_dir, f'imle-matches-{run.cur_nimg // 1000:06d}.png')
        os.makedirs(run.run_dir, exist_ok=True)
        imaging.save_image_grid(pairs.numpy(), path, (-1, 1), (2 * per_row, -(-len(pos) // per_row)))

    def _maybe_rematch(self, run):
        due = run.cur_nimg >= self.schedule.nimg_of(self.num_rematches)
        if not (due or self.force_rematch or self.matched_index is None):
            return
        self.rematch(run)
        self.force_rematch = False
        while self.schedule.nimg_of(self.num_rematches) <= run.cur_nimg:
            self.num_rematches += 1

    # Loss terms (Eq. 5-10) -----------------------------------------------------------------------
    def phase_loss(self, run, phase, batch):
        if phase != 'Gmain':
            return None
        self._maybe_rematch(run)
        if (run.cur_nimg // run.batch_size) % self.interval != 0:
            return None
        pairs = self.pairs or batch.gen_z.shape[0]
        first, second = self._draw_pairs(pairs)
        recon, interp = self._imle_terms(run, first, second, self._draw_alpha(pairs, run.device))
        run.report('IMLE/recon_loss', recon)
        run.report('IMLE/interp_loss', interp)
        return (self.recon_weight * recon.mean() + self.interp_weight * interp.mean()) * self.interval

    # The random draws of one round, one method each, so that tests can fix them and check the formulas.
    def _draw_pairs(self, pairs):
        """x and x~ of Eq. 8-10 as reconstruction-set items, drawn independently (Algorithm 1: y_i, y_j)."""
        n_recon = len(self.recon_pos)
        first = torch.randint(n_recon, [pairs])
        if self.c_dim > 0:  # interpolate between two images of the same label: G sees one label
            g = self.recon_groups[first]
            second = self.partner_order[self.partner_starts[g] + (torch.rand(pairs) * self.partner_counts[g]).long()]
        else:
            second = torch.randint(n_recon, [pairs])
        return first, second

    def _draw_alpha(self, pairs, device):
        return torch.rand([pairs], device=device)

    def _draw_noise(self, z):
        return torch.randn_like(z)

    def _perturb(self, z):
        """Algorithm 1's perturbation of matched latents, as the authors' code does it: `perturb` of the way
        (slerp) towards a random latent; the result has the norm of a typical z."""
        return slerp(z, self._draw_noise(z), self.perturb)

    def _interpolate(self, z_first, z_second, alpha):
        """Eq. 10: alpha weights z*(x) (the first), so alpha = 1 gives z*(x), as Eq. 8 weights x by alpha."""
        if self.interp == 'slerp':
            return slerp(z_second, z_first, alpha)
        return z_second.lerp(z_first, alpha[:, None])

    def _imle_terms(self, run, first, second, alpha):
        """Per sample: Eq. 6 for both ends of each pair [2P], Eq. 8-9 for their interpolation [P].
        One render of 2P perturbed matched latents and P interpolated ones (the paper's 2 mb + mb)."""
        pairs = len(first)
        both = torch.cat([first, second])
        z = self._perturb(self.matched_z[both.to(run.device)])
        z_mix = self._interpolate(z[:pairs], z[pairs:], alpha)
        positions = self.recon_pos[both]
        labels = self.query_labels[positions]
        fakes = self._render(run, torch.cat([z, z_mix]), torch.cat([labels, labels[:pairs]]), 'random')
        fake_emb = self.lpips.layer_embeddings(fakes)
        with torch.no_grad():
            real_emb = self.lpips.layer_embeddings(self._images(run, positions))
        recon = embedding_distance([e[:2 * pairs] for e in fake_emb], real_emb)                      # Eq. 6
        mix_emb = [e[2 * pairs:] for e in fake_emb]
        interp = (alpha * embedding_distance(mix_emb, [r[:pairs] for r in real_emb])                  # Eq. 8
                  + (1 - alpha) * embedding_distance(mix_emb, [r[pairs:] for r in real_emb]))         # Eq. 9
        return recon, interp

    # State ---------------------------------------------------------------------------------------
    def state_dict(self):
        state = dict(num_rematches=self.num_rematches, pool_seed=self.pool_seed, pool_size=self.pool_size,
                     current_pool_seed=getattr(self, 'current_pool_seed', None), matched_index=self.matched_index,
                     matched_dist=self.matched_dist, recon_indices=getattr(self, 'recon_indices', None))
        if getattr(self, 'pool_z', None) is not None:
            state['pool_head'] = self.pool_z[:4].clone()  # to check that the seed re-draws the same pool
        return state

    def load_state_dict(self, state):
        if not state:
            return  # the hook was not active in the run being resumed: start afresh
        self.num_rematches = int(state['num_rematches'])
        same_data = (state.get('recon_indices') is not None and state.get('matched_index') is not None
                     and torch.equal(torch.as_tensor(state['recon_indices']), self.recon_indices)
                     and len(state['matched_index']) == len(self.queries)
                     and int(state['pool_size']) == self.pool_size)
        if state.get('current_pool_seed') is not None:
            self._draw_pool(int(state['current_pool_seed']))
        same_pool = 'pool_head' in state and torch.equal(state['pool_head'], self.pool_z[:4])
        if not (same_data and same_pool):
            print('IMLE: the saved matches do not fit this run (other data, subgroup, pool or RNG); re-matching now')
            self.force_rematch = True
            return
        self.matched_index = torch.as_tensor(state['matched_index'])
        self.matched_dist = torch.as_tensor(state['matched_dist'])
        self.matched_z = self.pool_z[self.matched_index[self.recon_pos]].to(self.device)
