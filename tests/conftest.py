import os

import numpy as np
import pyro
import pytest
import torch

# Small models run fastest on one thread, and CI machines have two cores.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYROVAE_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow; run with PYROVAE_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_pyro():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield


@pytest.fixture
def counts():
    """A small rank-2 negative-binomial data set (60 cells × 12 genes)."""
    rng = np.random.default_rng(1)
    mu = rng.lognormal(size=(60, 2)) @ rng.lognormal(size=(2, 12))
    return rng.poisson(mu * rng.gamma(2.0, 0.5, size=mu.shape)).astype(np.float32)
