import collections

import numpy as np
import pytest
from scipy import stats as sps

from stylegan2_fair.samplers import InfiniteSampler, WeightedInfiniteSampler


def take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_uniform_sampler_visits_every_item_once_per_epoch():
    drawn = take(InfiniteSampler(10, seed=3), 30)
    for epoch in range(3):
        assert sorted(drawn[epoch * 10:(epoch + 1) * 10]) == list(range(10))
    assert drawn[:10] != drawn[10:20]  # a fresh permutation each epoch


def test_ranks_split_one_stream_independent_of_process_count():
    single = take(InfiniteSampler(7, seed=1), 28)
    ranks = [take(InfiniteSampler(7, rank=r, num_replicas=2, seed=1), 14) for r in range(2)]
    interleaved = [ranks[i % 2][i // 2] for i in range(28)]
    assert interleaved == single


def test_start_position_continues_the_stream():
    full = take(InfiniteSampler(9, seed=5), 40)
    assert take(InfiniteSampler(9, seed=5, start=13), 27) == full[13:]
    weighted = take(WeightedInfiniteSampler(np.arange(1, 6), seed=2), 30)
    assert take(WeightedInfiniteSampler(np.arange(1, 6), seed=2, start=7), 23) == weighted[7:]


def test_weighted_frequencies_follow_weights_chi_square():
    weights = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    n = 20000
    counts = collections.Counter(take(WeightedInfiniteSampler(weights, seed=0), n))
    observed = np.array([counts[i] for i in range(len(weights))])
    expected = weights / weights.sum() * n
    assert sps.chisquare(observed, expected).pvalue > 1e-3
    # and a uniform expectation is rejected, so the test can fail
    assert sps.chisquare(observed, np.full(5, n / 5)).pvalue < 1e-6


def test_weighted_sampler_same_distribution_on_two_ranks():
    weights = np.array([5.0, 1.0, 1.0, 1.0])
    single = take(WeightedInfiniteSampler(weights, seed=4), 2000)
    ranks = [take(WeightedInfiniteSampler(weights, rank=r, num_replicas=2, seed=4), 1000) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == sorted(single)
    for part in ranks:
        share = np.mean(np.array(part) == 0)
        assert abs(share - 5 / 8) < 0.05


@pytest.mark.parametrize('weights', [[], [0, 0], [1, -1], [1, np.nan]])
def test_bad_weights_are_rejected(weights):
    with pytest.raises(ValueError, match='weights'):
        WeightedInfiniteSampler(weights)
