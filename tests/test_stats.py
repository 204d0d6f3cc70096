import numpy as np
import torch

from stylegan2_fair import stats


def test_collect_reports_num_mean_std_by_name_and_resets():
    stats.collect()
    stats.report('Loss/G/loss', torch.tensor([1.0, 2.0, 3.0]))
    stats.report('Loss/G/loss', 4.0)
    stats.report('Other', np.array([float('nan'), 5.0]))  # non-finite values are dropped
    out = stats.collect()
    assert out['Loss/G/loss']['num'] == 4
    assert np.isclose(out['Loss/G/loss']['mean'], 2.5)
    assert np.isclose(out['Loss/G/loss']['std'], np.std([1, 2, 3, 4]))
    assert out['Other'] == dict(num=1.0, mean=5.0, std=0.0)
    assert stats.collect() == {}


def test_reduce_fn_merges_moments():
    stats.collect()
    stats.report('x', [1.0, 3.0])
    out = stats.collect(reduce_fn=lambda m: {k: v * 2 for k, v in m.items()})  # as if two equal ranks
    assert out['x']['num'] == 4 and np.isclose(out['x']['mean'], 2.0)
