"""Exact chunked nearest-neighbour search (IMLE matching) against brute force."""
import pytest
import torch

from stylegan2_fair.nn_search import full_precision_matmul, nearest_neighbors


def brute_force(queries, pool, mask=None):
    dist = torch.cdist(queries.double(), pool.double()).square()
    if mask is not None:
        dist = dist.masked_fill(~mask, float('inf'))
    best, index = dist.min(1)
    return index, best.float()


@pytest.mark.parametrize('chunk, pool_chunk', [(1, 64), (60, 1), (7, 13), (64, 1000), (4096, 65536)])
def test_matches_brute_force_for_any_chunk_sizes(chunk, pool_chunk):
    gen = torch.Generator().manual_seed(chunk)
    queries, pool = torch.randn(60, 24, generator=gen), torch.randn(300, 24, generator=gen)
    index, dist = nearest_neighbors(queries, pool, chunk=chunk, pool_chunk=pool_chunk)
    want_index, want_dist = brute_force(queries, pool)
    assert torch.equal(index, want_index)
    assert torch.allclose(dist, want_dist, rtol=1e-5, atol=1e-5)


def test_distances_stay_exact_when_far_from_the_origin():
    # The |q|^2 - 2qp + |p|^2 expansion cancels badly here; the winners' distances are recomputed.
    gen = torch.Generator().manual_seed(1)
    offset = 1000.0
    queries, pool = torch.randn(20, 8, generator=gen) + offset, torch.randn(200, 8, generator=gen) + offset
    _, dist = nearest_neighbors(queries, pool, chunk=8, pool_chunk=50)
    want = (queries[:, None] - pool[None]).square().sum(2).min(1).values
    assert torch.allclose(dist, want, rtol=1e-3, atol=1e-3)


def test_groups_restrict_each_query_to_its_own_group():
    gen = torch.Generator().manual_seed(2)
    queries, pool = torch.randn(60, 5, generator=gen), torch.randn(300, 5, generator=gen)
    query_groups, pool_groups = torch.randint(0, 4, [60], generator=gen), torch.randint(0, 4, [300], generator=gen)
    index, dist = nearest_neighbors(queries, pool, chunk=16, pool_chunk=64,
                                    query_groups=query_groups, pool_groups=pool_groups)
    want_index, want_dist = brute_force(queries, pool, query_groups[:, None] == pool_groups[None, :])
    assert torch.equal(pool_groups[index], query_groups)
    assert torch.equal(index, want_index)
    assert torch.allclose(dist, want_dist, rtol=1e-5, atol=1e-5)


def test_a_query_whose_group_has_no_candidate_gets_minus_one_and_inf():
    queries, pool = torch.randn(3, 2), torch.randn(10, 2)
    index, dist = nearest_neighbors(queries, pool, query_groups=torch.tensor([0, 5, 0]),
                                    pool_groups=torch.zeros(10, dtype=torch.int64))
    assert index[1] == -1 and torch.isinf(dist[1])
    assert index[0] >= 0 and torch.isfinite(dist[0])


def test_mismatched_feature_sizes_are_refused():
    with pytest.raises(ValueError, match='same feature size'):
        nearest_neighbors(torch.randn(3, 4), torch.randn(5, 6))


@pytest.fixture
def tf32_on():
    """TF32 on, as --allow-tf32 leaves it for the whole run; the previous setting back afterwards
    (by hand: monkeypatch cannot undo an attribute of torch.backends.cuda.matmul)."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32 = previous


def test_tf32_is_off_during_the_search_and_restored_after(monkeypatch, tf32_on):
    seen = []
    addmm = torch.Tensor.addmm_

    def recording_addmm(self, *args, **kwargs):
        seen.append(torch.backends.cuda.matmul.allow_tf32)
        return addmm(self, *args, **kwargs)
    monkeypatch.setattr(torch.Tensor, 'addmm_', recording_addmm)
    nearest_neighbors(torch.randn(5, 4), torch.randn(7, 4), chunk=2, pool_chunk=3)
    assert seen, 'the search no longer multiplies with addmm_: record the flag in the matmul it uses now'
    assert not any(seen), 'TF32 was on during a distance matmul'
    assert torch.backends.cuda.matmul.allow_tf32 is True


def test_tf32_setting_comes_back_after_an_error(tf32_on):
    with pytest.raises(KeyError):
        with full_precision_matmul():
            assert torch.backends.cuda.matmul.allow_tf32 is False
            raise KeyError('fails inside the search')
    assert torch.backends.cuda.matmul.allow_tf32 is True
