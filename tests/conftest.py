"""Shared test fixtures: where the golden outputs of the official code live."""
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
