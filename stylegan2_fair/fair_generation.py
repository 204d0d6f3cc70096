"""Fair generation from a trained G without retraining: class-balanced rejection sampling and
class-wise truncation, both steered by an auxiliary classifier (its argmax is "the class" d).

Balanced sampling. G draws class d with probability p(d). Keeping a candidate of class d with
probability
    a(d) = min(1, r(d) / M),   r(d) = target(d) / p(d),   M = max_k r(k)
leaves accepted images with density p(x) a(d(x)) proportional to p(x | d) target(d): the classes follow
`target` and the images within a class are still G's. Dividing by the largest ratio makes the most
under-represented class always accepted, the highest acceptance rate that reaches the target:
sum_d p(d) a(d) = 1 / M = min_k p(k) / target(k). p is estimated from the running class counts of every
candidate classified (a calibration batch first, then every proposal), plus half a count per class so
that a class not seen yet has a finite ratio. A class that G hardly ever draws makes M huge and the
acceptance rate tiny: `min_acceptance` caps M at 1 / min_acceptance, so classes rarer than
min_acceptance * target(d) are always accepted (and stay below their target) while the acceptance rate
stays near min_acceptance.

With DRS (Azadi et al. 2019; drs.py) the candidates pass the DRS test first, then the balance test,
which estimates p over the DRS survivors. DRS turns G's density p(x) into q(x); the balance test then
yields q(x | d) target(d): DRS's fidelity within each class, the target across classes. Both tests are
independent coin flips, so their order does not change the result; DRS goes first because its gamma
is a percentile over a batch of raw proposals, as in drs_sample, and its D_max is a running max over
all proposals after one burn-in.

Class truncation. Global truncation pulls w toward the mean w_avg, which sits among the majority
class's latents: lowering psi turns minority samples into majority ones and makes a biased G more
biased. Class truncation pulls each sample toward the w centroid of its own class instead,
    w' = mu_d + psi (w - mu_d),   d = argmax classifier(G.synthesis(w)),   mu_d = E[w | d],
with mu estimated from mapping-network samples; psi = 0 gives the class centroids, psi = 1 leaves G
unchanged. A class need not be convex in W: the straight path to mu_d can cross another class (on an
immature G the centroid of a minority class often renders as a majority-class image). With keep_class
(the default) a truncated image that leaves its class is retried at (1 + psi) / 2 and left untruncated
if it still does, so truncation never moves images between classes: the class mix is that of psi = 1,
and only the images inside each class are pulled toward their centre. For a conditional G the
centroids are per (label, class), since the label's embedding moves w: a sample with label l and
class d goes toward mu_{l,d} (l = argmax of c). A (label, class) pair with no estimation sample falls
back to the label's mean w.
"""
import dataclasses
import hashlib
import os

import numpy as np
import torch

from .metrics.fairness import uniform_labels

CALIB_DEFAULT = 1000
CENTROID_SAMPLES_DEFAULT = 10000


# ------------------------------------------------------------------------------------------------
# Targets and the acceptance rule

def resolve_target(target, class_names):
    """Class shares [K] summing to 1 from None (uniform), a sequence of K weights, a {name: share} dict,
    or text: '0.1,0.2,...' (K weights, normalised) or 'name=share,...' (unnamed classes split the rest
    equally)."""
    names = list(class_names)
    k = len(names)
    if target is None:
        return np.full(k, 1.0 / k)
    if isinstance(target, str):
        parts = [p.strip() for p in target.split(',') if p.strip()]
        if parts and all('=' in p for p in parts):
            target = {}
            for part in parts:
                name, _, value = part.partition('=')
                target[name.strip()] = _share(value, part)
        elif any('=' in p for p in parts):
            raise ValueError(f'target {target!r} mixes name=share pairs and bare numbers; use one form')
        else:
            target = [_share(p, p) for p in parts]
    if isinstance(target, dict):
        unknown = [n for n in target if n not in names]
        if unknown:
            raise ValueError(f'target names {unknown} are not classes of the classifier; its classes are {names}')
        shares = np.array([float(target.get(n, np.nan)) for n in names])
        named = ~np.isnan(shares)
        if (shares[named] < 0).any():
            raise ValueError(f'target shares must be >= 0, got {target}')
        left = 1.0 - shares[named].sum()
        if named.all():
            left = 0.0
        elif left < -1e-9:
            raise ValueError(f'target shares {target} add up to more than 1; leave room for the unnamed classes '
                             f'or name every class')
        shares[~named] = max(left, 0.0) / max((~named).sum(), 1)
    else:
        shares = np.asarray(target, dtype=np.float64).ravel()
        if shares.size != k:
            raise ValueError(f'target has {shares.size} shares but the classifier has {k} classes ({names}); '
                             f'give one share per class or name=share pairs')
        if (shares < 0).any():
            raise ValueError(f'target shares must be >= 0, got {shares.tolist()}')
    if shares.sum() <= 0:
        raise ValueError('target shares are all 0; give at least one class a positive share')
    return shares / shares.sum()


def _share(text, where):
    try:
        return float(text)
    except ValueError:
        raise ValueError(f'{where!r} is not a number; write targets as 0.1,0.2,... or name=0.5,...') from None


def balance_acceptance(p, target, min_acceptance=0.0):
    """a(d) = min(1, r(d) / M), r(d) = target(d) / p(d), M = max_k r(k), with M capped at 1 / min_acceptance
    (module doc). A class with p = 0 and a positive target has r = inf: it alone is accepted."""
    p = np.asarray(p, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    with np.errstate(divide='ignore', invalid='ignore'):
        ratio = np.where(target > 0, target / p, 0.0)
    scale = ratio.max()
    if min_acceptance > 0:
        scale = min(scale, 1.0 / min_acceptance)
    if np.isinf(scale):
        return np.isinf(ratio).astype(np.float64)
    return np.minimum(1.0, ratio / scale)


# ------------------------------------------------------------------------------------------------
# Class centroids of w

@dataclasses.dataclass
class ClassCentroids:
    centroids: torch.Tensor   # float32 [L, K, w_dim]: mean w per (label, class); L = c_dim or 1
    counts: np.ndarray        # int64 [L, K]: estimation samples behind each centroid (0: label-mean fallback)
    class_names: list

    def lookup(self, classes, label_idx=None):
        """Centroids [N, w_dim] for predicted `classes` [N] (and label indices [N], conditional G)."""
        cent = self.centroids.to(classes.device)
        label_idx = torch.zeros_like(classes) if label_idx is None else label_idx.to(classes.device)
        return cent[label_idx, classes]


def _label_index(c, num_labels):
    if c is None or c.ndim != 2 or c.shape[1] == 0 or num_labels == 1:
        return None
    return c.argmax(dim=1)


@torch.no_grad()
def estimate_class_centroids(G, classifier, num_samples=CENTROID_SAMPLES_DEFAULT, batch=256, seed=0, device=None,
                             noise_mode='const'):
    """mu_{l,d} = mean of w over `num_samples` mapping samples (z ~ N(0, I); labels cycled evenly for a
    conditional G) whose untruncated image the classifier puts in class d."""
    if num_samples < 1:
        raise ValueError(f'num_samples must be >= 1, got {num_samples}')
    device = _device_of(G, device)
    generator = torch.Generator().manual_seed(int(seed))
    num_labels, k = max(G.c_dim, 1), classifier.num_classes
    sums = torch.zeros([num_labels, k, G.w_dim], dtype=torch.float64)
    counts = torch.zeros([num_labels, k], dtype=torch.int64)
    for start in range(0, num_samples, batch):
        n = min(batch, num_samples - start)
        z = torch.randn([n, G.z_dim], generator=generator).to(device)
        labels = torch.arange(start, start + n) % num_labels
        c = torch.nn.functional.one_hot(labels, G.c_dim).float() if G.c_dim else torch.zeros([n, 0])
        c = c.to(device)
        ws = G.mapping(z, c)
        classes = classifier(G.synthesis(ws, noise_mode=noise_mode)).argmax(dim=1).cpu()
        w = ws[:, 0].double().cpu()
        sums.index_put_((labels, classes), w, accumulate=True)
        counts.index_put_((labels, classes), torch.ones(n, dtype=torch.int64), accumulate=True)
    label_means = sums.sum(1) / counts.sum(1, keepdim=True).clamp(min=1)
    centroids = torch.where(counts[..., None] > 0, sums / counts[..., None].clamp(min=1), label_means[:, None])
    return ClassCentroids(centroids.float(), counts.numpy(), list(classifier.class_names))


def classifier_fingerprint(classifier):
    """sha256 of a classifier's type, class names and every parameter and buffer: the cache key."""
    digest = hashlib.sha256(f'{type(classifier).__qualname__}|{"|".join(classifier.class_names)}'.encode())
    for name, tensor in sorted(classifier.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f'{name}:{t.dtype}:{list(t.shape)}'.encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def centroid_cache_path(network_pkl, classifier):
    return f'{os.fspath(network_pkl)}.class-centroids-{classifier_fingerprint(classifier)[:16]}.npz'


def load_or_estimate_centroids(G, classifier, network_pkl=None, num_samples=CENTROID_SAMPLES_DEFAULT, batch=256,
                               seed=0, device=None, verbose=False):
    """Class centroids, cached next to the checkpoint as <pkl>.class-centroids-<classifier hash>.npz.

    The cache is reused only when it records the checkpoint's current size and mtime, the same
    classifier hash, num_samples and seed; otherwise it is re-estimated and rewritten atomically. An
    unwritable folder only costs the cache (a warning)."""
    from .fileio import atomic_write
    if network_pkl is None:
        return estimate_class_centroids(G, classifier, num_samples, batch, seed, device)
    st = os.stat(network_pkl)
    fingerprint = classifier_fingerprint(classifier)
    key = dict(pkl_size=st.st_size, pkl_mtime_ns=st.st_mtime_ns, classifier=fingerprint,
               num_samples=int(num_samples), seed=int(seed))
    path = f'{os.fspath(network_pkl)}.class-centroids-{fingerprint[:16]}.npz'
    if os.path.isfile(path):
        try:
            with np.load(path, allow_pickle=False) as cached:
                if all(cached[name].item() == value for name, value in key.items()):
                    if verbose:
                        print(f'class centroids: reusing {path}')
                    return ClassCentroids(torch.from_numpy(cached['centroids']), cached['counts'],
                                          [str(n) for n in cached['class_names']])
        except (OSError, KeyError, ValueError):
            pass   # unreadable or from another format: estimate afresh
    if verbose:
        print(f'class centroids: estimating from {num_samples} samples ...')
    result = estimate_class_centroids(G, classifier, num_samples, batch, seed, device)
    arrays = dict(key, centroids=result.centroids.numpy(), counts=result.counts,
                  class_names=np.array(result.class_names))
    try:
        atomic_write(path, lambda f: np.savez(f, **arrays), suffix='.npz')
    except OSError as err:
        print(f'warning: class centroids not cached ({err})')
    return result


def class_truncate(ws, centres, psi, cutoff=None):
    """w' = centre + psi (w - centre) on the first `cutoff` layers of ws [N, num_ws, w_dim] (all when None)."""
    centres = centres[:, None, :].to(ws.dtype)
    if cutoff is None:
        return centres.lerp(ws, psi)
    return torch.cat([centres.lerp(ws[:, :cutoff], psi), ws[:, cutoff:]], dim=1)


# ------------------------------------------------------------------------------------------------
# Candidates: G with global or class truncation, optionally filtered by DRS

def _device_of(G, device):
    if device is not None:
        return torch.device(device)
    param = next(iter(G.parameters()), None) if hasattr(G, 'parameters') else None
    return param.device if param is not None else torch.device('cpu')


class CandidateGenerator:
    """Images from G for z ~ N(0, I), with global (`trunc_mode='global'`, G's w_avg) or class truncation
    (`'class'`: needs `classifier` and `centroids`; `keep_class`, see class_truncated), optionally kept
    only if they pass DRS under `drs_D`.

    Latents, labels and coin flips come from `generator` (CPU), so a seed gives the same images on any
    device. Calling it with n returns exactly n images (the `sampler` contract of fairness_metric)."""

    def __init__(self, G, truncation_psi=1, truncation_cutoff=None, trunc_mode='global', centroids=None,
                 classifier=None, keep_class=True, noise_mode='const', label_fn=None, drs_D=None, drs_percentile=80.0,
                 drs_burn_in=None, batch=64, generator=None, device=None):
        if trunc_mode not in ('global', 'class'):
            raise ValueError(f"trunc_mode must be 'global' or 'class', got {trunc_mode!r}")
        if trunc_mode == 'class' and truncation_psi != 1 and (classifier is None or centroids is None):
            raise ValueError('class truncation needs a classifier and its class centroids '
                             '(load_or_estimate_centroids); pass both or use trunc_mode="global"')
        self.G, self.psi, self.cutoff, self.trunc_mode = G, truncation_psi, truncation_cutoff, trunc_mode
        self.centroids, self.classifier, self.noise_mode = centroids, classifier, noise_mode
        self.keep_class, self.class_changes = keep_class, 0   # class_changes: truncations retried (keep_class)
        self.device = _device_of(G, device)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.label_fn = label_fn or uniform_labels(getattr(G, 'c_dim', 0), self.generator)
        self.batch = int(batch)
        self.drs_D, self.drs_percentile, self.drs_burn_in = drs_D, drs_percentile, drs_burn_in
        self.drs_d_max, self.drs_proposed, self.drs_accepted = None, 0, 0
        if drs_D is not None:
            group = getattr(getattr(getattr(drs_D, 'b4', None), 'mbstd', None), 'group_size', None)
            if group and self.batch % min(group, self.batch):
                raise ValueError(f"batch={self.batch} is not divisible by the discriminator's minibatch-std group "
                                 f'size {group}; use a multiple of {group}')
        self._spare = None

    @torch.no_grad()
    def images_for(self, z, c):
        """G's images [N, C, H, W] for latents z [N, z_dim] and labels c [N, c_dim] under the truncation."""
        z, c = z.to(self.device), c.to(self.device)
        if self.trunc_mode == 'global' or self.psi == 1:
            return self.G(z, c, truncation_psi=self.psi, truncation_cutoff=self.cutoff, noise_mode=self.noise_mode)
        return self.class_truncated(z, c)[1]

    @torch.no_grad()
    def class_truncated(self, z, c):
        """(class-truncated ws [N, num_ws, w_dim], their images, classes [N] of the untruncated images).

        keep_class: a sample whose truncated image leaves its class (the path toward a centroid can cross
        another class's region when the classes are not convex in W) is retried at half the truncation
        strength, psi' = (1 + psi) / 2, and is left untruncated if it still changes class."""
        z, c = z.to(self.device), c.to(self.device)
        ws = self.G.mapping(z, c)
        images = self.G.synthesis(ws, noise_mode=self.noise_mode)
        classes = self.classifier(images).argmax(dim=1)
        centres = self.centroids.lookup(classes, _label_index(c, self.centroids.centroids.shape[0]))
        if not self.keep_class:
            ws = class_truncate(ws, centres, self.psi, self.cutoff)
            return ws, self.G.synthesis(ws, noise_mode=self.noise_mode), classes
        ws, images = ws.clone(), images.clone()   # untruncated: the fallback, of class d by definition
        pending = torch.arange(len(ws), device=ws.device)
        for psi in (self.psi, (1 + self.psi) / 2):
            trial_ws = class_truncate(ws[pending], centres[pending], psi, self.cutoff)
            trial = self.G.synthesis(trial_ws, noise_mode=self.noise_mode)
            kept = self.classifier(trial).argmax(dim=1) == classes[pending]
            ws[pending[kept]], images[pending[kept]] = trial_ws[kept], trial[kept]
            self.class_changes += int((~kept).sum())
            pending = pending[~kept]
            if not len(pending):
                break
        return ws, images, classes

    def _draw(self, n):
        z = torch.randn([n, self.G.z_dim], generator=self.generator)
        c = self.label_fn(n).to(torch.float32)
        return z, c, self.images_for(z, c)

    @torch.no_grad()
    def propose(self):
        """One batch of candidates (images, labels); with DRS only the survivors, maybe none."""
        if self.drs_D is None:
            z, c, images = self._draw(self.batch)
            return images, c
        from .drs import drs_acceptance
        if self.drs_d_max is None:   # burn-in, once: D_max starts as the max logit over drs_burn_in fakes
            from .drs import BURN_IN_FAKES, burn_in_batches
            self.drs_d_max = -float('inf')
            fakes = BURN_IN_FAKES if self.drs_burn_in is None else self.drs_burn_in
            for _ in range(burn_in_batches(fakes, self.batch)):
                _, c, images = self._draw(self.batch)
                self.drs_d_max = max(self.drs_d_max, float(self.drs_D(images, c.to(self.device)).max()))
        _, c, images = self._draw(self.batch)
        logits = self.drs_D(images, c.to(self.device)).flatten().double().cpu()
        self.drs_d_max = max(self.drs_d_max, float(logits.max()))
        prob, _, _ = drs_acceptance(logits, self.drs_d_max, self.drs_percentile)
        keep = torch.rand(len(prob), generator=self.generator, dtype=torch.float64) < prob
        self.drs_proposed += len(keep)
        self.drs_accepted += int(keep.sum())
        return images[keep.to(images.device)], c[keep.to(c.device)]

    def __call__(self, n):
        """Exactly n images [n, C, H, W] on the device."""
        parts = [] if self._spare is None else [self._spare]
        have = sum(len(p) for p in parts)
        while have < n:
            images = self.propose()[0] if self.drs_D is not None else self._draw(min(self.batch, n - have))[2]
            parts.append(images)
            have += len(images)
        images = torch.cat(parts)
        self._spare = images[n:] if len(images) > n else None
        return images[:n]

    @property
    def drs_acceptance_rate(self):
        return self.drs_accepted / max(self.drs_proposed, 1) if self.drs_D is not None else None


# ------------------------------------------------------------------------------------------------
# Balanced sampling

class BalancedSampler:
    """Classifier-guided rejection sampling toward `target` class shares (module doc).

    `sample(n)` -> (images [n, C, H, W] in [-1, 1] on the device, their predicted classes [n], stats);
    calling the sampler with n returns the images only (the `sampler` contract of fairness_metric).
    Candidates come from `candidates` (a CandidateGenerator), or one built from G and
    `candidate_kwargs` (truncation_psi, trunc_mode, centroids, noise_mode, label_fn, drs_D, batch,
    generator, device). Accepted images beyond n are kept for the next call."""

    def __init__(self, G, classifier, target=None, calib=CALIB_DEFAULT, min_acceptance=0.0, max_proposals=None,
                 candidates=None, **candidate_kwargs):
        if not 0 <= min_acceptance <= 1:
            raise ValueError(f'min_acceptance must lie in [0, 1], got {min_acceptance}')
        if candidates is not None and candidate_kwargs:
            raise ValueError(f'pass either candidates or candidate kwargs ({sorted(candidate_kwargs)}), not both: '
                             f'set those on the CandidateGenerator')
        self.classifier = classifier
        self.candidates = candidates or CandidateGenerator(G, classifier=classifier, **candidate_kwargs)
        self.class_names = list(classifier.class_names)
        self.target = resolve_target(target, self.class_names)
        self.calib, self.min_acceptance, self.max_proposals = int(calib), float(min_acceptance), max_proposals
        k = len(self.class_names)
        self.seen = np.zeros(k, dtype=np.int64)          # classes of every candidate classified
        self.proposed = np.zeros(k, dtype=np.int64)      # of those, tested after calibration
        self.accepted = np.zeros(k, dtype=np.int64)
        self.calibrated = 0
        self._spare_images = self._spare_classes = None

    def p_estimate(self):
        """p(d): running class shares of every candidate seen, with half a count per class."""
        return (self.seen + 0.5) / (self.seen.sum() + 0.5 * len(self.seen))

    def acceptance(self):
        return balance_acceptance(self.p_estimate(), self.target, self.min_acceptance)

    def _classify(self, images):
        return self.classifier(images).argmax(dim=1).cpu()

    @torch.no_grad()
    def calibrate(self):
        while self.calibrated < self.calib:
            images = self.candidates.propose()[0]
            classes = self._classify(images)
            self.seen += np.bincount(classes.numpy(), minlength=len(self.seen))
            self.calibrated += len(classes)

    @torch.no_grad()
    def sample(self, n):
        self.calibrate()
        keep_images = [] if self._spare_images is None else [self._spare_images]
        keep_classes = [] if self._spare_classes is None else [self._spare_classes]
        have = sum(len(c) for c in keep_classes)
        limit = self.max_proposals if self.max_proposals is not None else 1000 * n + 10 * self.calib
        start_proposed = int(self.proposed.sum())
        while have < n:
            if int(self.proposed.sum()) - start_proposed >= limit:
                raise RuntimeError(
                    f'balanced sampling found {have} of {n} images in {limit} proposals (acceptance rate '
                    f'{self.acceptance_rate:.2g}; estimated class shares {np.round(self.p_estimate(), 4).tolist()}); '
                    f'G hardly draws some classes: set min_acceptance (--min-acceptance, e.g. 0.02) to relax '
                    f'the target for them, or raise max_proposals')
            images, _ = self.candidates.propose()
            if not len(images):
                continue
            classes = self._classify(images)
            counts = np.bincount(classes.numpy(), minlength=len(self.seen))
            self.seen += counts
            self.proposed += counts
            prob = torch.from_numpy(self.acceptance())[classes]
            keep = torch.rand(len(classes), generator=self.candidates.generator, dtype=torch.float64) < prob
            self.accepted += np.bincount(classes[keep].numpy(), minlength=len(self.seen))
            keep_images.append(images[keep.to(images.device)])
            keep_classes.append(classes[keep])
            have += int(keep.sum())
        images, classes = torch.cat(keep_images), torch.cat(keep_classes)
        self._spare_images, self._spare_classes = (images[n:], classes[n:]) if len(classes) > n else (None, None)
        return images[:n], classes[:n], self.stats(classes[:n])

    def __call__(self, n):
        return self.sample(n)[0]

    @property
    def acceptance_rate(self):
        return float(self.accepted.sum() / max(self.proposed.sum(), 1))

    def stats(self, classes=None):
        """Counts so far: proposals and acceptances (overall and per class), p, a(d), target and the
        histogram of `classes` (the images just returned)."""
        k = len(self.seen)
        out = dict(class_names=self.class_names, num_calibration=int(self.calibrated),
                   num_proposed=int(self.proposed.sum()), num_accepted=int(self.accepted.sum()),
                   acceptance_rate=self.acceptance_rate, proposed_per_class=self.proposed.tolist(),
                   accepted_per_class=self.accepted.tolist(), p_estimate=self.p_estimate().tolist(),
                   acceptance_per_class=self.acceptance().tolist(), target=self.target.tolist(),
                   drs_acceptance_rate=self.candidates.drs_acceptance_rate)
        if classes is not None:
            out['histogram'] = np.bincount(classes.numpy(), minlength=k).tolist()
        return out


# ------------------------------------------------------------------------------------------------
# calc_metrics / fairness metric plug-in

def sampler_from_options(opts, label_fn=None, balance=False, balance_target=None, balance_calib=CALIB_DEFAULT,
                         balance_min_acceptance=0.0, trunc_mode='global', centroid_samples=CENTROID_SAMPLES_DEFAULT,
                         network_pkl=None):
    """The fair sampler a metric should score (BalancedSampler or CandidateGenerator), or None when the
    options ask for plain G(z, c). Latents are drawn from (opts.seed, opts.rank)."""
    from .classifiers import create_classifier
    psi = dict(opts.G_kwargs).get('truncation_psi', 1)
    class_trunc = trunc_mode == 'class' and psi != 1
    if not balance and not class_trunc:
        return None
    if opts.classifier is None:
        raise ValueError('--balance and --trunc-mode=class need --classifier (e.g. labels:clf.pt)')
    classifier = create_classifier(opts.classifier, device=opts.device, img_resolution=opts.G.img_resolution)
    stream = np.random.SeedSequence([opts.seed, opts.rank, 11]).generate_state(1)[0]   # per rank, apart from G's
    generator = torch.Generator().manual_seed(int(stream))
    centroids = None
    if class_trunc:
        centroids = load_or_estimate_centroids(opts.G, classifier, network_pkl, centroid_samples, batch=opts.batch_size,
                                               device=opts.device, verbose=opts.rank == 0)
    kwargs = dict(truncation_psi=psi, trunc_mode=trunc_mode, centroids=centroids, classifier=classifier,
                  noise_mode=dict(opts.G_kwargs).get('noise_mode', 'const'), label_fn=label_fn, batch=opts.batch_size,
                  generator=generator, device=opts.device)
    candidates = CandidateGenerator(opts.G, **kwargs)
    if not balance:
        return candidates
    return BalancedSampler(opts.G, classifier, target=balance_target, calib=balance_calib,
                           min_acceptance=balance_min_acceptance, candidates=candidates)
