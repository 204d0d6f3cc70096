"""A small CNN trained on a dataset's own class labels: `labels:CLF.pt`.

The stand-in for the paper's CIFAR-10-LT auxiliary classifier (a ResNet-32 trained on the same
imbalanced data): train it with `stylegan2-fair train-classifier --data DATA.zip --out CLF.pt`.
The class-balanced cross-entropy (each class weighted by 1 / its count) keeps a long-tailed
training set from biasing its predictions toward the head classes, which would bias the fairness
figures measured with it.

File format: a plain dict loadable with torch.load(weights_only=True):
    format='stylegan2-fair.labels-classifier', version=1, class_names [str], resolution (int),
    channels (int), width (int), state_dict {name: tensor}, metrics {str: float}, data (str).
"""
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import register_classifier
from .base import Classifier, match_channels, resize_square

FORMAT = 'stylegan2-fair.labels-classifier'
MAX_RESOLUTION = 64  # larger datasets are classified from a downscaled copy, for speed


class SmallCNN(torch.nn.Module):
    """Three conv stages (batch norm; average pooling keeps gradients w.r.t. the input smooth) and a linear head."""

    def __init__(self, channels, num_classes, width=32):
        super().__init__()
        def conv(i, o):
            return [torch.nn.Conv2d(i, o, kernel_size=3, padding=1, bias=False), torch.nn.BatchNorm2d(o), torch.nn.SiLU()]
        self.stage1 = torch.nn.Sequential(*conv(channels, width), *conv(width, width))
        self.stage2 = torch.nn.Sequential(*conv(width, 2 * width), *conv(2 * width, 2 * width))
        self.stage3 = torch.nn.Sequential(*conv(2 * width, 4 * width))
        self.head = torch.nn.Linear(4 * width, num_classes)

    def forward(self, x):
        x = F.avg_pool2d(self.stage1(x), 2)
        x = F.avg_pool2d(self.stage2(x), 2)
        x = self.stage3(x).mean(dim=(2, 3))
        return self.head(x)


class LabelClassifier(Classifier):
    """[-1, 1] images -> softmax of the small CNN, at the resolution it was trained at."""

    def __init__(self, class_names, resolution, channels, width=32):
        super().__init__(class_names)
        self.resolution, self.channels, self.width = int(resolution), int(channels), int(width)
        self.net = SmallCNN(self.channels, len(self.class_names), self.width)

    def logits(self, images):
        return self.net(resize_square(match_channels(images, self.channels), self.resolution))

    def class_probabilities(self, images):
        return self.logits(images).softmax(dim=1)

    def save(self, path, metrics=None, data=None):
        payload = dict(format=FORMAT, version=1, class_names=list(self.class_names), resolution=self.resolution,
                       channels=self.channels, width=self.width,
                       state_dict={k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()},
                       metrics={k: float(v) for k, v in (metrics or {}).items()}, data=str(data or ''))
        from ..fileio import atomic_write
        atomic_write(path, lambda f: torch.save(payload, f), suffix='.pt')


def load_label_classifier(path):
    try:
        payload = torch.load(path, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f'labels:{path}: no such file; train one with '
                                f'stylegan2-fair train-classifier --data DATA.zip --out {path}') from None
    except Exception as err:
        raise ValueError(f'labels:{path} cannot be read safely ({err}); it must be a file written by '
                         f'stylegan2-fair train-classifier (use torchscript:PATH for other models)') from err
    if not isinstance(payload, dict) or payload.get('format') != FORMAT:
        raise ValueError(f'labels:{path} is not a train-classifier file; use torchscript:PATH for other models')
    clf = LabelClassifier(payload['class_names'], payload['resolution'], payload['channels'], payload['width'])
    try:
        clf.net.load_state_dict(payload['state_dict'])
    except RuntimeError as err:
        raise ValueError(f'labels:{path} does not match this version\'s network ({err}); train it again with '
                         f'stylegan2-fair train-classifier') from err
    return clf


@register_classifier('labels')
def build_labels(path, device='cpu', img_resolution=None):
    return load_label_classifier(path)


# ----------------------------------------------------------------------------------------------
# Training on a dataset's labels.

def dataset_class_labels(dataset):
    """int64 [N] class of every item of an ImageFolderDataset opened with use_labels=True."""
    if not getattr(dataset, 'has_onehot_labels', False):
        raise ValueError(f'{dataset.path}: train-classifier needs integer class labels in dataset.json '
                         f'(e.g. dataset_tool --labels-from=subfolder); this dataset has '
                         f'{"vector" if dataset.has_labels else "no"} labels.')
    return np.array([int(np.argmax(dataset.get_label(i))) for i in range(len(dataset))], dtype=np.int64)


def _load_images(dataset, indices, batch_size=256, num_workers=0):
    subset = torch.utils.data.Subset(dataset, indices)
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, num_workers=num_workers)
    return torch.cat([img for img, _label, _idx in loader])  # uint8 [n, C, H, W]


def _to_model_range(images_uint8, device):
    return images_uint8.to(device).to(torch.float32) / 127.5 - 1


@torch.no_grad()
def evaluate(classifier, images_uint8, labels, device, batch_size=256):
    """Accuracy, balanced accuracy (mean per-class recall) and per-class recall."""
    classifier.eval()
    preds = torch.cat([classifier.logits(_to_model_range(part, device)).argmax(1).cpu()
                       for part in images_uint8.split(batch_size)]).numpy()
    labels = np.asarray(labels)
    recalls = [float((preds[labels == k] == k).mean()) if (labels == k).any() else float('nan')
               for k in range(classifier.num_classes)]
    return dict(accuracy=float((preds == labels).mean()), balanced_accuracy=float(np.nanmean(recalls)),
                recall=recalls)


def train_label_classifier(dataset, epochs=10, batch_size=64, lr=2e-3, resolution=None, width=32, balanced=True,
                           val_fraction=0.1, seed=0, device='cpu', class_names=None, num_workers=0, log=print):
    """Train a LabelClassifier on `dataset`'s integer labels; returns (classifier, metrics on the held-out part).

    The images are held in memory as uint8 (a 64x64 RGB image is 12 KiB: 100k images ~ 1.2 GiB).
    """
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    labels = dataset_class_labels(dataset)
    num_classes = int(dataset.label_dim)
    names = list(class_names) if class_names else [f'class{k}' for k in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f'{len(names)} class names given for {num_classes} classes in {dataset.path}')
    order = torch.randperm(len(labels), generator=generator).numpy()
    num_val = int(round(len(labels) * val_fraction)) if len(labels) > 1 else 0
    val_idx, train_idx = order[:num_val], order[num_val:]
    train_images = _load_images(dataset, train_idx, num_workers=num_workers)
    val_images = _load_images(dataset, val_idx, num_workers=num_workers) if num_val else None
    train_labels = torch.from_numpy(labels[train_idx])

    resolution = int(resolution or min(dataset.resolution, MAX_RESOLUTION))
    torch.manual_seed(seed)
    clf = LabelClassifier(names, resolution, dataset.num_channels, width).to(device)
    counts = torch.bincount(train_labels, minlength=num_classes).float()
    # Class-balanced loss: each class counts as much in total, whatever its share of the data.
    class_weight = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    loss_fn = torch.nn.CrossEntropyLoss(weight=class_weight.to(device) if balanced else None)
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    steps_per_epoch = max(len(train_idx) // batch_size, 1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    start = time.time()
    for epoch in range(epochs):
        clf.train()
        perm = torch.randperm(len(train_idx), generator=generator)
        total = 0.0
        for step in range(steps_per_epoch):
            batch = perm[step * batch_size:(step + 1) * batch_size]
            images = _to_model_range(train_images[batch], device)
            loss = loss_fn(clf.logits(images), train_labels[batch].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        message = f'epoch {epoch + 1}/{epochs}  loss {total / steps_per_epoch:.4f}'
        if val_images is not None:
            scores = evaluate(clf, val_images, labels[val_idx], device)
            message += f'  val acc {scores["accuracy"]:.4f}  balanced acc {scores["balanced_accuracy"]:.4f}'
        log(f'{message}  ({time.time() - start:.0f}s)')
    metrics = dict(train_size=len(train_idx), val_size=num_val, epochs=epochs)
    if val_images is not None:
        scores = evaluate(clf, val_images, labels[val_idx], device)
        metrics.update(val_accuracy=scores['accuracy'], val_balanced_accuracy=scores['balanced_accuracy'])
        metrics.update({f'val_recall_{name}': r for name, r in zip(names, scores['recall'])})
    return clf.freeze().cpu(), metrics
