"""Shared test fixtures: the golden outputs of the official code, a toy dataset, a pinned thread count."""
import os
import pathlib

import pytest
import torch

# One intra-op thread: the tests use tiny tensors, where a second thread mostly adds contention
# (up to 60x slower when the machine is busy) and makes runs less reproducible.
torch.set_num_threads(1)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _fixtures_dir():
    # CI clones the repo with shared/ beside it; STYLEGAN2_FAIR_FIXTURES overrides.
    env = os.environ.get('STYLEGAN2_FAIR_FIXTURES')
    if env:
        return pathlib.Path(env)
    return REPO_ROOT.parent / 'shared' / 'fixtures' / 'stylegan2-ada'


@pytest.fixture(scope='session')
def official_fixtures():
    path = _fixtures_dir()
    if not (path / 'ops.npz').is_file():
        pytest.skip(f'golden fixtures not found at {path}; set STYLEGAN2_FAIR_FIXTURES')
    return path


@pytest.fixture
def one_thread():
    """Exactly one intra-op thread for the test (an in-process train CLI may have set more): tiny
    tensors only lose from more, and exact comparisons between runs need one summation order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def toy_zip(tmp_path_factory):
    """64 colored digits at 8x8 (75% red), one per test module."""
    from stylegan2_fair.cli.dataset_tool import convert_dataset
    path = tmp_path_factory.mktemp('data') / 'toy8.zip'
    convert_dataset('toy:colored-digits', str(path), resolution=8, num_images=64, majority=0.75, progress=False)
    return str(path)
