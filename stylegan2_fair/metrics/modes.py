"""Mode counting on stacked data (Metz et al. 2017; Srivastava et al. 2017; Inclusive GAN Table 1):
a mode classifier labels each generated image; we report how many distinct modes appear and the KL
divergence from the generated mode distribution to the uniform one.

The classifier is any callable images -> mode ids: uint8-range images in, int ids in [0, num_modes).
For toy:stacked-digits, `DigitModeClassifier` is one: it reads the digit of each colour channel
with a small classifier trained on scikit-learn's 8x8 digits (rendered like toy_data renders them),
and the mode is 100 * R + 10 * G + B, the toy dataset's own label.
"""
import numpy as np
import torch
import torch.nn.functional as F

from . import features


def mode_statistics(mode_ids, num_modes):
    """(number of distinct modes seen, KL(generated || uniform over num_modes)) in nats."""
    ids = np.asarray(mode_ids, dtype=np.int64).ravel()
    if ids.size == 0:
        raise ValueError('mode statistics need at least one sample')
    if ids.min() < 0 or ids.max() >= num_modes:
        raise ValueError(f'mode ids must lie in [0, {num_modes}); got {ids.min()}..{ids.max()}')
    p = np.bincount(ids, minlength=num_modes) / ids.size
    seen = p > 0
    # KL(p || u) = sum p log(p / (1/M)); empty modes contribute 0.
    kl = float(np.sum(p[seen] * np.log(p[seen] * num_modes)))
    return int(seen.sum()), kl


class DigitModeClassifier:
    """Mode ids of stacked-digit images: one digit per channel, read by a pixel classifier (an SVM).

    Trained at construction on `train_size` digits rendered by toy_data (random scale and shift, as
    the dataset is made) at `resolution`, downsampled to `feature_size` pixels per side. A few
    seconds on a CPU; `accuracy` holds its held-out per-channel accuracy.
    """

    def __init__(self, resolution=32, num_channels=3, train_size=20000, feature_size=8, seed=0):
        from sklearn.svm import SVC
        from .. import toy_data
        self.num_channels = num_channels
        self.feature_size = min(feature_size, resolution)
        rng = np.random.default_rng(seed)
        _, targets = toy_data._source_digits()
        sources = rng.integers(0, len(targets), size=train_size)
        pixels = toy_data.render_digits(sources, resolution, rng)
        x = self._features(torch.from_numpy(pixels)[:, None] * 255)
        y = targets[sources]
        split = train_size * 5 // 6
        # An RBF SVM on 8x8 average-pooled pixels: 99.6% per digit (99% of stacked images read right)
        # after ~2 s of fitting; with 4000 digits it was 97% (94%), which alone cost ~30 of 1000 modes.
        self.model = SVC(C=10)
        self.model.fit(x[:split], y[:split])
        self.accuracy = float(self.model.score(x[split:], y[split:]))

    def _features(self, channel_images):
        x = F.adaptive_avg_pool2d(channel_images.float(), self.feature_size) / 255
        return x.flatten(1).cpu().numpy()

    def digits(self, images):
        """int [N, channels]: the digit read from each channel of uint8-range NCHW images."""
        images = torch.as_tensor(images)
        if images.shape[1] != self.num_channels:
            raise ValueError(f'stacked-digit images have {self.num_channels} channels, got {images.shape[1]}')
        return np.stack([self.model.predict(self._features(images[:, ch:ch + 1])) for ch in range(self.num_channels)], 1)

    def __call__(self, images):
        weights = 10 ** np.arange(self.num_channels - 1, -1, -1)
        return self.digits(images) @ weights

    @property
    def num_modes(self):
        return 10 ** self.num_channels


def resolve_mode_classifier(classifier, opts, num_modes=None):
    """(callable images -> ids, number of modes). None or 'stacked-digits': DigitModeClassifier; a
    classifiers spec (str) or Classifier: the argmax of its class probabilities; any other callable is
    used as it is (give num_modes, or a `num_modes` attribute)."""
    G = opts.G
    if classifier is None or classifier in ('stacked-digits', 'toy:stacked-digits'):
        clf = DigitModeClassifier(resolution=G.img_resolution, num_channels=G.img_channels)
        return clf, clf.num_modes
    from ..classifiers import Classifier, create_classifier
    if isinstance(classifier, (str, Classifier)):
        net = create_classifier(classifier, device=opts.device, img_resolution=G.img_resolution)

        def ids(images):
            with torch.no_grad():
                return net(images.float() / 127.5 - 1).argmax(dim=1).cpu().numpy()
        return ids, num_modes or net.num_classes
    num_modes = num_modes or getattr(classifier, 'num_modes', None)
    if num_modes is None:
        raise ValueError('a custom mode classifier needs the number of modes: pass num_modes=M or give the '
                         'callable a num_modes attribute')
    return classifier, num_modes


def compute_modes(opts, num_gen, classifier=None, num_modes=None, prefix='modes'):
    """Modes covered by `num_gen` generated images and KL to uniform."""
    classifier = classifier if classifier is not None else opts.classifier
    classify, num_modes = resolve_mode_classifier(classifier, opts, num_modes)

    def compute(items):
        images = features.generated_images(opts, items)
        return torch.as_tensor(np.asarray(classify(images)), dtype=torch.int64)
    ids = features.run_in_chunks(opts, num_gen, compute, desc='mode ids').numpy()
    count, kl = mode_statistics(ids, num_modes)
    return {prefix: count, f'{prefix}_kl': kl, f'{prefix}_max': num_modes}
