"""Partial recall (Self-Diagnosing GAN, Lee et al. 2021, Sec. 3.2 and Table 6): the recall of
Kynkaanniemi et al. (2019) restricted to the real images of one subgroup, i.e. the share of those
images inside the k-NN manifold (k=3) of the generated images. Features are Inception pool3, as in
the authors' code. A low partial recall for a minority means G does not cover it."""
from . import features
from .fid import INCEPTION_FEATURES
from .precision_recall import manifold_coverage


def compute_partial_recall(opts, max_real, num_gen, nhood_size=3, detector='inception', prefix='partial_recall'):
    """Recall of all used reals (`<prefix>`) and of the reals of each subgroup (`<prefix>/<group>`)."""
    detector_kwargs = INCEPTION_FEATURES if detector == 'inception' else dict(return_features=True)
    real = features.real_features(opts, detector, detector_kwargs, max_items=max_real)
    fake = features.generated_features(opts, detector, detector_kwargs, num_gen)
    recall, inside = manifold_coverage(opts, fake, real, nhood_size)
    results = {prefix: recall}
    results.update(features.breakdown(prefix, inside, features.subgroups(opts, len(real))))
    return results
