"""Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), mean and std over splits."""
import numpy as np

from . import features

INCEPTION_PROBABILITIES = dict(no_output_bias=True)   # the official detector's softmax output


def inception_score(probabilities, num_splits=10):
    """(mean, std) of IS over `num_splits` equal parts of the [N, classes] probabilities."""
    p = np.asarray(probabilities, dtype=np.float64)
    if len(p) < num_splits:
        raise ValueError(f'IS with {num_splits} splits needs at least {num_splits} images, got {len(p)}')
    scores = []
    for part in np.array_split(p, num_splits):
        marginal = part.mean(axis=0, keepdims=True)
        # 0 * log 0 = 0: classes a sample never predicts add nothing to its KL.
        kl = np.where(part > 0, part * (np.log(np.maximum(part, 1e-30)) - np.log(np.maximum(marginal, 1e-30))), 0)
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def compute_is(opts, num_gen, num_splits=10):
    probs = features.generated_features(opts, 'inception', INCEPTION_PROBABILITIES, num_gen,
                                        desc='inception probabilities (generated)')
    if opts.rank != 0:
        return float('nan'), float('nan')
    return inception_score(probs, num_splits)
