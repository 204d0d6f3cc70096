"""Bias-mitigation loss of "Fair GANs through model rebalancing" (arXiv 2308.08638, Eq. 6-7).

Added to G's adversarial phase (Gmain), on the same generated batch:

    L_fair = fair_weight * sum_d lambda_d * relu(1/|D| - E_z[p(d | G(z))])

E_z[p(d | G(z))] is the batch mean of the classifier's probabilities (soft counts), so the loss has
a gradient with respect to G. The authors' Algorithm 1 took an argmax and one-hot counts, whose
gradient is zero everywhere: their loss could not change G (their code also left the 1/|D| out of
the relu). Only classes below their fair share
1/|D| contribute (the relu), pulling their probability mass up.

lambda_d is "inversely proportional to the current bias" (Sec. 2.3.3): with p_hat the running
estimate of the generated class distribution (an EMA of the batch soft counts, gathered over all
processes and updated at every Gmain round, i.e. once per step unless batch_gpu splits the batch;
the first batch initialises it),

    lambda_d = |D| * (1 / p_hat_d) / sum_k (1 / p_hat_k)        (p_hat floored at 1e-6)

so the weights average 1 (all equal to 1 when G is balanced, recovering the unweighted Eq. 6) and
stay bounded by |D| however rare a class gets. lambda is a constant of each step (no gradient).

With several processes, the deficit is computed from the batch mean over all processes, while each
process differentiates its own samples; after gradient averaging this is the exact gradient of the
loss of the global batch.
"""
import click
import torch

from stylegan2_fair.classifiers import CLASSIFIER_OPTION, create_classifier
from .base import TrainingHook, register_hook


def class_weights(p_running, floor=1e-6):
    """lambda_d = |D| (1/p_d) / sum_k (1/p_k): mean 1, larger for under-represented classes."""
    inverse = 1 / p_running.clamp(min=floor)
    return inverse * (p_running.numel() / inverse.sum())


def fairness_loss(share, weights):
    """sum_d weights_d * relu(1/|D| - share_d), share = E_z[p(d | G(z))] as batch soft counts [|D|]."""
    return (weights * torch.relu(1 / share.numel() - share)).sum()


@register_hook('fairness')
class FairnessLoss(TrainingHook):
    cli_options = [
        CLASSIFIER_OPTION,
        click.option('--fair-weight', type=float, default=1.0, metavar='FLOAT',
                     help='fairness: weight of the bias-mitigation loss in G\'s loss (paper: 1)'),
        click.option('--fairness-ema', type=click.FloatRange(0, 1, max_open=True), default=0.99, metavar='BETA',
                     help='fairness: decay per step of the running class-distribution estimate behind lambda_d'),
    ]

    def __init__(self, classifier=None, fair_weight=1.0, ema=0.99):
        if not classifier:
            raise ValueError('--fair-method=fairness needs --classifier (e.g. labels:clf.pt from stylegan2-fair '
                             'train-classifier, or deepface:race)')
        if fair_weight < 0:
            raise ValueError(f'--fair-weight={fair_weight}: must be >= 0')
        self.classifier_spec = classifier
        self.fair_weight = float(fair_weight)
        self.ema = float(ema)
        self.classifier = None
        self.p_running = None  # running estimate of p(d) under G, float64 [|D|]
        self.num_updates = 0

    def check_dataset(self, training_set):
        # Building it once here turns a missing or unreadable classifier into a clean error before
        # the run dir exists (the message names the file and how to get it).
        create_classifier(self.classifier_spec, img_resolution=training_set.resolution)

    def setup(self, run):
        self.classifier = create_classifier(self.classifier_spec, device=run.device,
                                            img_resolution=run.G.img_resolution)

    def update_running_estimate(self, share):
        share = share.detach().to(torch.float64).cpu()
        if self.p_running is None:
            self.p_running = share.clone()
        else:
            self.p_running.mul_(self.ema).add_(share, alpha=1 - self.ema)
        self.num_updates += 1

    def phase_loss(self, run, phase, batch):
        if phase != 'Gmain' or batch.gen_img is None or self.fair_weight == 0:
            return None
        probs = self.classifier(batch.gen_img)
        local_share = probs.mean(dim=0)
        global_share = run.all_gather(local_share.detach()[None]).mean(dim=0)
        # Value of the global batch mean, gradient of this process's samples (see module docstring).
        share = local_share + (global_share - local_share.detach())
        self.update_running_estimate(global_share)
        weights = class_weights(self.p_running).to(share)
        loss = self.fair_weight * fairness_loss(share, weights)
        run.report('Fairness/loss', loss.detach())
        for d, value in enumerate(global_share.tolist()):
            run.report(f'Fairness/p_class{d}', value)
        return loss

    def state_dict(self):
        return dict(p_running=None if self.p_running is None else self.p_running.clone(),
                    num_updates=self.num_updates)

    def load_state_dict(self, state):
        p = state.get('p_running')
        self.p_running = None if p is None else torch.as_tensor(p, dtype=torch.float64).clone()
        self.num_updates = int(state.get('num_updates', 0))
