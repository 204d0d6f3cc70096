"""The auxiliary-classifier interface shared by fairness losses, reweighting and metrics.

A `Classifier` maps generator-range images (float, [-1, 1], NCHW, RGB or grayscale, any
resolution) to class probabilities [N, num_classes]. It is differentiable with respect to its input
(the fairness loss backpropagates through it into G), batched, and lives on one device; its own
parameters are frozen. Each backend converts the images to what its network expects.
"""
import torch
import torch.nn.functional as F


class Classifier(torch.nn.Module):
    """Base class: subclasses implement `class_probabilities(images)`; `class_names` lists the classes."""

    def __init__(self, class_names):
        super().__init__()
        self.class_names = [str(name) for name in class_names]

    @property
    def num_classes(self):
        return len(self.class_names)

    def class_probabilities(self, images):
        raise NotImplementedError

    def forward(self, images):
        if images.ndim != 4:
            raise ValueError(f'{type(self).__name__} expects images [N, C, H, W] in [-1, 1], got shape '
                             f'{list(images.shape)}; add a batch dimension with images[None].')
        return self.class_probabilities(images)

    def freeze(self):
        """Evaluation mode, no parameter gradients (input gradients still flow)."""
        self.eval()
        self.requires_grad_(False)
        return self

    @torch.no_grad()
    def predict(self, images, batch_size=256):
        """Probabilities of many images, in batches, without gradients."""
        return torch.cat([self(part) for part in images.split(batch_size)])


def match_channels(images, channels):
    """Grayscale -> RGB by repetition (or RGB -> gray by the mean) so a network sees `channels` channels."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1:
        return images.repeat(1, channels, 1, 1)
    if channels == 1:
        return images.mean(dim=1, keepdim=True)
    raise ValueError(f'cannot feed {have}-channel images to a classifier that takes {channels} channels')


def resize_keep_aspect(images, size):
    """Resize to fit `size` x `size` keeping the aspect ratio and pad the rest with black (0),
    centred, as DeepFace's `resize_image` does (bilinear, no antialiasing, like cv2.INTER_LINEAR)."""
    height, width = images.shape[2:]
    if (height, width) == (size, size):
        return images
    factor = min(size / height, size / width)
    new_h, new_w = max(int(height * factor), 1), max(int(width * factor), 1)
    images = F.interpolate(images, size=(new_h, new_w), mode='bilinear', align_corners=False)
    pad_h, pad_w = size - new_h, size - new_w
    if pad_h or pad_w:
        images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    return images


def resize_square(images, size):
    """Bilinear resize to `size` x `size` (antialiased when shrinking), for square-trained networks."""
    if images.shape[2:] == (size, size):
        return images
    shrink = images.shape[2] > size or images.shape[3] > size
    return F.interpolate(images, size=(size, size), mode='bilinear', align_corners=False, antialias=shrink)
