import numpy as np
import pyro
import pytest
import scipy.sparse as sp
import torch

import pyrovae.sources as sources_module

# Small models run fastest on one thread, and CI machines have two cores.
torch.set_num_threads(1)


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


class DensifyRecorder:
    """Records the shape of every sparse-to-dense conversion (toarray/todense, and the row
    gather of :func:`pyrovae.sources.gather_rows` that batches use)."""

    CLASSES = (sp.csr_matrix, sp.csc_matrix, sp.coo_matrix, sp.csr_array, sp.csc_array)

    def __init__(self, monkeypatch):
        self.shapes: list[tuple[int, int]] = []
        for cls in self.CLASSES:
            for name in ("toarray", "todense"):
                monkeypatch.setattr(cls, name, self._wrap(getattr(cls, name)))
        gather = sources_module.gather_rows

        def recording_gather(x, idx, *args, **kwargs):
            out = gather(x, idx, *args, **kwargs)
            self.shapes.append(out.shape)
            return out

        monkeypatch.setattr(sources_module, "gather_rows", recording_gather)

    def _wrap(self, method):
        def wrapper(matrix, *args, **kwargs):
            self.shapes.append(matrix.shape)
            return method(matrix, *args, **kwargs)

        return wrapper

    @property
    def max_rows(self) -> int:
        return max(s[0] for s in self.shapes)


@pytest.fixture
def densify_recorder(monkeypatch):
    """A :class:`DensifyRecorder` active for the test."""
    return DensifyRecorder(monkeypatch)
