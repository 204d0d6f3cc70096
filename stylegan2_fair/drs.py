"""Discriminator Rejection Sampling (Azadi et al., ICLR 2019), phase 3 of the Self-Diagnosing GAN.

A discriminator trained with the logistic loss estimates log(p_data(x) / p_g(x)) by its logit l(x),
so a fake accepted with probability p_data / (M p_g) follows p_data. DRS writes the acceptance
probability in logit space, with D_max the largest logit seen so far (a running max, started
over a burn-in of fakes) and a per-batch shift gamma that trades acceptance rate for fidelity:
    F(x) = (l(x) - D_max) - log(1 - exp(l(x) - D_max - eps))        (Azadi et al., Eq. 8)
    accept x with probability sigmoid(F(x) - gamma),  gamma = percentile of F over the batch
Dia-GAN uses its auxiliary discriminator (snapshot key `D_aux`, trained on uniformly drawn reals)
because the main D saw score-weighted data in phase 2.
"""
import collections
import dataclasses
import math
from typing import Optional

import torch


@dataclasses.dataclass
class DrsResult:
    images: torch.Tensor      # float [n, C, H, W] in [-1, 1], on the CPU
    labels: torch.Tensor      # float [n, c_dim] labels the images were generated with
    z: torch.Tensor           # float [n, z_dim] latents of the accepted images
    num_proposed: int         # fakes proposed after the burn-in
    num_accepted: int         # of those, accepted by the rule (some may be surplus to the n asked for)
    d_max: float              # final running max of the logits

    @property
    def acceptance_rate(self):
        return self.num_accepted / max(self.num_proposed, 1)


def drs_acceptance(logits, d_max, percentile=80.0, eps=1e-6, gamma=None):
    """(acceptance probabilities, F, gamma) for a batch of logits, given D_max >= every logit.

    gamma defaults to the `percentile`-th percentile of F over the batch (linear interpolation,
    as numpy.percentile).
    """
    logits = torch.as_tensor(logits, dtype=torch.float64).flatten()
    delta = logits - float(d_max)
    if bool((delta > 0).any()):
        raise ValueError('drs_acceptance: a logit exceeds d_max; update the running max before scoring')
    # log(1 - exp(a)) as log(-expm1(a)): accurate when a is close to 0.
    f = delta - torch.log(-torch.expm1(delta - eps))
    if gamma is None:
        gamma = float(torch.quantile(f, percentile / 100.0))
    return torch.sigmoid(f - gamma), f, gamma


def aux_discriminator(data, where='the network pickle'):
    """The auxiliary D of a Dia-GAN snapshot (dict from load_network_pkl), or a clear error."""
    D = data.get('D_aux') if isinstance(data, dict) else None
    if D is None:
        raise ValueError(f'{where} has no auxiliary discriminator (D_aux), which DRS needs. Use a snapshot '
                         f'written after phase 2 of a run trained with --fair-method=dia (phase 2 starts at '
                         f'--dia-phase2-kimg, default 80% of --kimg), or drop --drs.')
    return D


def _labels_for(G, c, n, device):
    if G.c_dim == 0:
        return torch.zeros([n, 0], device=device)
    if c is None:
        raise ValueError(f'G is conditional ({G.c_dim} classes): pass c, a [c_dim] label for all images or '
                         f'[n, c_dim] labels, one per image')
    c = torch.as_tensor(c, dtype=torch.float32, device=device)
    if c.ndim == 1:
        c = c.unsqueeze(0).expand(n, -1)
    if tuple(c.shape) != (n, G.c_dim):
        raise ValueError(f'c must have shape [{G.c_dim}] or [{n}, {G.c_dim}], got {list(c.shape)}')
    return c


class DrsStalled(RuntimeError):
    """DRS accepted too few proposals to fill the request within max_proposals."""


BURN_IN_FAKES = 50 * 256  # the authors' burn-in: 50 batches of 256 fakes


def burn_in_batches(fakes, batch):
    """How many batches of `batch` proposals cover `fakes` burn-in fakes (at least one)."""
    return max(1, math.ceil(fakes / batch))


@torch.no_grad()
def drs_sample(G, D, n, c=None, percentile=80.0, batch=64, truncation_psi=1, noise_mode='const',
               generator: Optional[torch.Generator] = None, burn_in=BURN_IN_FAKES, eps=1e-6, max_proposals=None,
               device=None, verbose=False):
    """Draw `n` images from G, keeping each fake with the DRS acceptance probability under D.

    D_max starts as the max logit over `burn_in` fakes (Dia-GAN: 50 x 256), proposed `batch` at a
    time, then is a running max. Latents and acceptance draws come from `generator` (a CPU torch.Generator; the
    global RNG when None), so a seeded generator gives the same images on any device. With
    [n, c_dim] labels, output i carries label i (fakes are proposed with the labels still missing).
    `batch` must be divisible by D's minibatch-std group size. Returns a DrsResult.
    """
    if n < 1:
        raise ValueError(f'n must be >= 1, got {n}')
    if not 0 <= percentile <= 100:
        raise ValueError(f'percentile must lie in [0, 100], got {percentile}')
    device = torch.device(device) if device is not None else next(G.parameters()).device
    mbstd = getattr(getattr(D, 'b4', None), 'mbstd', None)
    group = getattr(mbstd, 'group_size', None)
    if group and batch % min(group, batch):
        raise ValueError(f'batch={batch} is not divisible by the discriminator\'s minibatch-std group size '
                         f'{group}; use a multiple of {group}')
    max_proposals = max_proposals or 1000 * n + batch
    labels = _labels_for(G, c, n, device)
    D_was_training = D.training
    D.eval()

    def propose(slots):
        z = torch.randn([len(slots), G.z_dim], generator=generator)
        lab = labels[slots]
        img = G(z.to(device), lab, truncation_psi=truncation_psi, noise_mode=noise_mode)
        return z, lab, img, D(img, lab).flatten().double().cpu()

    cycle = lambda pool: pool[torch.arange(batch) % len(pool)]
    d_max = -float('inf')
    for _ in range(burn_in_batches(burn_in, batch)):
        d_max = max(d_max, float(propose(cycle(torch.arange(n)))[3].max()))

    # Slots waiting for an image, per label: an accepted fake fills the oldest open slot of its label.
    open_slots = collections.defaultdict(collections.deque)
    for slot, key in enumerate(map(tuple, labels.cpu().tolist())):
        open_slots[key].append(slot)
    out_img, out_z = [None] * n, [None] * n
    is_open = torch.ones(n, dtype=torch.bool)
    proposed = accepted = 0
    while bool(is_open.any()):
        if proposed >= max_proposals:
            raise DrsStalled(f'DRS filled only {n - int(is_open.sum())} of {n} images in {proposed} proposals; '
                               f'lower the percentile (now {percentile}) to accept more')
        slots = cycle(torch.nonzero(is_open).flatten())
        z, lab, img, logits = propose(slots)
        proposed += len(slots)
        d_max = max(d_max, float(logits.max()))
        prob, _, _ = drs_acceptance(logits, d_max, percentile, eps)
        accept = torch.rand(len(slots), generator=generator, dtype=torch.float64) < prob
        accepted += int(accept.sum())
        for i in torch.nonzero(accept).flatten().tolist():
            queue = open_slots[tuple(lab[i].cpu().tolist())]
            if queue:
                slot = queue.popleft()
                out_img[slot], out_z[slot] = img[i].cpu(), z[i]
                is_open[slot] = False
    D.train(D_was_training)
    result = DrsResult(images=torch.stack(out_img), labels=labels.cpu(), z=torch.stack(out_z),
                       num_proposed=proposed, num_accepted=accepted, d_max=d_max)
    if verbose:
        print(f'DRS: accepted {accepted} of {proposed} proposals (acceptance rate {result.acceptance_rate:.3f})')
    return result
