"""Importance reweighting baseline (Choi et al. 2020, as modified in arXiv 2308.08638 Sec. 2.2, Eq. 5).

Without a reference dataset, the density ratio p_ref(x) / p_bias(x) reduces to

    w(x) = (1/|D|) / p_bias(C(x))

where C is an auxiliary classifier and p_bias its class distribution over the training set. The
weights multiply the real-data term of D's loss, so D sees the data as if the classes were
balanced. At setup every training image is classified once (split over processes); by default
C(x) is the hard prediction (argmax) and p_bias the share of each predicted class, as in the paper.
With --reweight-soft, w(x) = sum_d p(d|x) (1/|D|) / p_bias(d) with p_bias the mean probabilities.
The weights are then normalised to mean 1 over the dataset, so the loss scale is unchanged.

The loss owns the plain term mean(L(D(x))), L = softplus(-.) (or relu(1 - .) under --gan-loss=hinge);
this hook adds mean((w(x) - 1) * L(D(x))) in Dmain, so the total real term is mean(w(x) L(D(x))).
"""
import math

import click
import torch

from stylegan2_fair.classifiers import CLASSIFIER_OPTION, create_classifier
from .base import TrainingHook, register_hook


def importance_weights(probs, soft=False):
    """Per-image weights (mean 1) and the class distribution p_bias, from probabilities [N, |D|]."""
    probs = torch.as_tensor(probs, dtype=torch.float64)
    num_classes = probs.shape[1]
    if soft:
        p_bias = probs.mean(dim=0)
        ratio = torch.where(p_bias > 0, (1 / num_classes) / p_bias.clamp(min=1e-12), torch.zeros_like(p_bias))
        weights = probs @ ratio
    else:
        hard = probs.argmax(dim=1)
        p_bias = torch.bincount(hard, minlength=num_classes).to(torch.float64) / len(hard)
        weights = (1 / num_classes) / p_bias[hard]  # every predicted class has p_bias > 0
    return weights / weights.mean(), p_bias


@torch.no_grad()
def classify_dataset(dataset, classifier, device, rank=0, world_size=1, gather=None, batch_size=256):
    """Class probabilities [len(dataset), |D|] of every item, each process classifying one contiguous part."""
    per_rank = math.ceil(len(dataset) / world_size)
    mine = list(range(rank * per_rank, min((rank + 1) * per_rank, len(dataset))))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, mine), batch_size=batch_size)
    probs = torch.zeros([per_rank, classifier.num_classes], device=device)
    offset = 0
    for images, _labels, _idx in loader:
        images = images.to(device).to(torch.float32) / 127.5 - 1
        probs[offset:offset + len(images)] = classifier(images)
        offset += len(images)
    if gather is not None:
        probs = gather(probs)
    return probs[:len(dataset)].cpu()


@register_hook('reweight')
class ImportanceReweighting(TrainingHook):
    cli_options = [
        CLASSIFIER_OPTION,
        click.option('--reweight-soft', type=bool, default=False, metavar='BOOL',
                     help='reweight: weights from the classifier\'s probabilities instead of its hard predictions'),
    ]

    def __init__(self, classifier=None, soft=False, batch_size=256):
        if not classifier:
            raise ValueError('--fair-method=reweight needs --classifier (e.g. labels:clf.pt from stylegan2-fair '
                             'train-classifier, or deepface:race)')
        self.classifier_spec = classifier
        self.soft = bool(soft)
        self.batch_size = int(batch_size)
        self.weights = None   # float32 [len(dataset)] on the device
        self.p_bias = None    # float64 [|D|]

    def check_dataset(self, training_set):
        # Building it once here turns a missing or unreadable classifier into a clean error before
        # the run dir exists (the message names the file and how to get it).
        create_classifier(self.classifier_spec, img_resolution=training_set.resolution)

    def setup(self, run):
        classifier = create_classifier(self.classifier_spec, device=run.device,
                                       img_resolution=run.training_set.resolution)
        probs = classify_dataset(run.training_set, classifier, run.device, run.rank, run.world_size,
                                 gather=run.all_gather, batch_size=self.batch_size)
        weights, self.p_bias = importance_weights(probs, soft=self.soft)
        self.weights = weights.to(torch.float32).to(run.device)
        if run.rank == 0:
            names = classifier.class_names
            per_class = [f'{name}: p={p:.4f}' for name, p in zip(names, self.p_bias.tolist())]
            print(f'Reweight ({"soft" if self.soft else "hard"}): classifier class shares of the training set: '
                  + ', '.join(per_class))
            print(f'Reweight: weights min {float(weights.min()):.3f}, max {float(weights.max()):.3f} (mean 1)')
        del classifier  # not needed after setup

    def phase_loss(self, run, phase, batch):
        if phase != 'Dmain' or batch.real_logits is None or batch.real_idx is None:
            return None
        w = self.weights[batch.real_idx.to(self.weights.device).long()].to(batch.real_logits.device)
        run.report('Reweight/weight', w)
        extra = (w - 1) * run.real_loss(batch.real_logits.flatten())
        return extra.mean()

    def state_dict(self):
        return dict(weights=None if self.weights is None else self.weights.cpu().clone(),
                    p_bias=None if self.p_bias is None else self.p_bias.clone())

    def load_state_dict(self, state):
        if state.get('weights') is None:
            return
        weights = torch.as_tensor(state['weights'])
        if self.weights is not None and len(weights) != len(self.weights):
            raise ValueError(f'the saved reweighting covers {len(weights)} images but the dataset has '
                             f'{len(self.weights)}; resume with the same --data (and --subset/--mirror)')
        device = self.weights.device if self.weights is not None else 'cpu'
        self.weights = weights.to(torch.float32).to(device)
        self.p_bias = state.get('p_bias')
