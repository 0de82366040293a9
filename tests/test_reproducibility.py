"""Reproducibility and persistence (issue 6), on CPU.

* The same ``seed`` gives bit-identical fitted parameters, trace and outputs, whatever the global
  RNG state; a different seed gives a different fit. Evaluation methods with the same ``seed``
  agree call after call, and a cell's output does not depend on the cells passed with it.
* ``save`` → ``load`` gives identical ``denoise``, ``predict``, ``latent`` and
  ``log_likelihood`` (fixed seed) for every prior class, including a user-written
  :class:`~pyrovae.QuadraturePrior` subclass.

What can and cannot be serialized. ``save`` pickles the fitted prior object, so its class is
stored *by reference* (module and name) and must be importable where the file is loaded:

* a prior class defined at module level of an importable module (like :class:`UserLogNormal`
  below, or anything in a package) saves and loads fine, in this process or another one that can
  import that module;
* a class defined in a script run as ``__main__`` or in a notebook saves, but cannot be loaded by
  another process (pickle looks for ``__main__.ClassName`` there): ``load`` raises a ValueError
  saying so (simulated below);
* a class defined inside a function, or a prior holding a lambda/local function, cannot be
  pickled at all: ``save`` raises a TypeError naming the prior, before writing anything.
"""

import pickle
import sys

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from priors_under_test import PRIOR_FACTORIES
from pyro.distributions import constraints
from pyro.nn import PyroParam

import pyrovae
from pyrovae import priors

FIT = dict(max_epochs=4, lr=2e-2, seed=7)


class UserLogNormal(priors.QuadraturePrior):
    """A user-written prior: log u ~ N(mu, s) with learned mu and s, integrated out numerically."""

    def __init__(self, loc: float = -0.1, scale: float = 0.6):
        super().__init__(n_half=20)
        self.loc = PyroParam(torch.tensor(loc))
        self.scale = PyroParam(torch.tensor(scale), constraint=constraints.positive)

    def base(self):
        return dist.LogNormal(self.loc, self.scale)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(4)
    mu = rng.gamma(2.0, 1.0, size=(30, 2)) @ rng.gamma(1.0, 1.0, size=(2, 7))
    x = rng.poisson(mu * rng.gamma(3.0, 1 / 3.0, size=mu.shape)).astype(np.float64)
    w = np.ones_like(x, dtype=bool)
    w[[0, 5, 9], [1, 3, 6]] = False
    return x, w


def _tiny(**kwargs):
    return pyrovae.VAE(**{"latent_dim": 2, "hidden": (8,), **kwargs})


def _state(est):
    sd = {**est.model_.state_dict(), **{f"g.{k}": v for k, v in est.guide_.state_dict().items()}}
    return {k: v.clone() for k, v in sd.items()}


def _outputs(est, x, w):
    return {
        "denoise": est.denoise(x, w, n_samples=5, seed=1),
        "predict": est.predict(x, w),
        "predict_mc": est.predict(x, w, n_samples=5, seed=2),
        "latent": est.latent(x, w),
        "log_likelihood": est.log_likelihood(x, w, n_samples=20, seed=3),
    }


def _assert_identical(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        if torch.is_tensor(a[k]):
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


SETTINGS = dict(
    objective="iwae", n_samples=3, batch_size=8, validation_fraction=0.2, optimizer="rmsprop"
)


def test_same_seed_same_fit_and_outputs(data):
    x, w = data
    a = _tiny(prior="zinb").fit(x, w=w, **FIT, **SETTINGS)
    torch.rand(100)  # the global RNG state does not matter: fit seeds everything it uses
    np.random.default_rng().random()
    b = _tiny(prior="zinb").fit(x, w=w, **FIT, **SETTINGS)
    _assert_identical(_state(a), _state(b))
    np.testing.assert_array_equal(a.trace_, b.trace_)
    np.testing.assert_array_equal(a.history_.val_loss, b.history_.val_loss)
    _assert_identical(_outputs(a, x, w), _outputs(b, x, w))


def test_different_seed_different_fit(data):
    x, w = data
    a = _tiny(prior="zinb").fit(x, w=w, **FIT, **SETTINGS)
    b = _tiny(prior="zinb").fit(x, w=w, **{**FIT, "seed": 8}, **SETTINGS)
    sa, sb = _state(a), _state(b)
    assert all(not torch.equal(sa[k], sb[k]) for k in sa if sa[k].numel() > 1)
    assert not np.array_equal(a.trace_, b.trace_)
    assert not np.allclose(a.denoise(x, w, seed=1), b.denoise(x, w, seed=1))


def test_evaluation_is_deterministic(data):
    x, w = data
    est = _tiny(prior="gamma").fit(x, w=w, **FIT)
    first = _outputs(est, x, w)
    torch.rand(10)
    _assert_identical(first, _outputs(est, x, w))
    # another seed draws other particles
    assert not np.array_equal(first["denoise"], est.denoise(x, w, n_samples=5, seed=2))
    # (that a cell's output does not depend on the other cells: test_estimator.py)


def test_models_in_one_process_do_not_share_parameters(data):
    x, w = data
    a = _tiny(prior="gamma").fit(x, w=w, **FIT)
    before = _outputs(a, x, w)
    _tiny(prior="gamma").fit(x, w=w, **{**FIT, "seed": 99})  # same parameter names
    _assert_identical(before, _outputs(a, x, w))


# -- persistence -----------------------------------------------------------------------------------
SAVED_PRIORS = {
    **{cls.__name__: factory for cls, factory in PRIOR_FACTORIES.items()},
    "Gamma-per-gene": lambda: PRIOR_FACTORIES[priors.Gamma](7),
    "ZeroInflatedGamma-per-gene": lambda: PRIOR_FACTORIES[priors.ZeroInflatedGamma](7),
    "UserLogNormal": UserLogNormal,
}


@pytest.mark.parametrize("name", list(SAVED_PRIORS))
def test_save_load_gives_identical_outputs(data, tmp_path, name):
    x, w = data
    est = _tiny(prior=SAVED_PRIORS[name]()).fit(x, w=w, size_factor="library", **FIT)
    path = tmp_path / "model.pt"
    est.save(path)
    loaded = pyrovae.VAE.load(path)
    assert type(loaded.prior_) is type(est.prior_)
    _assert_identical(_state(est), _state(loaded))
    np.testing.assert_array_equal(loaded.trace_, est.trace_)
    assert loaded.get_params().keys() == est.get_params().keys()
    assert loaded.n_features_in_ == est.n_features_in_
    _assert_identical(_outputs(est, x, w), _outputs(loaded, x, w))


def test_save_load_float64_and_reference_classes(data, tmp_path):
    x, w = data
    for est in (
        pyrovae.NBVAE(latent_dim=2, hidden=(8,), disp_by_gene=True, dtype=torch.float64),
        pyrovae.ZINBVAE(latent_dim=2, hidden=(8,), logodds_by_gene=True),
        pyrovae.PVAE(latent_dim=2, hidden=(8,)),
    ):
        est.fit(x, w=w, **FIT)
        est.save(tmp_path / "m.pt")
        loaded = pyrovae.VAE.load(tmp_path / "m.pt")
        assert type(loaded) is type(est) and loaded.get_params() == est.get_params()
        assert next(loaded.model_.parameters()).dtype == est.dtype
        _assert_identical(_outputs(est, x, w), _outputs(loaded, x, w))


class _WithLambda(priors.QuadraturePrior):
    def __init__(self):
        super().__init__()
        self.transform = lambda u: u  # cannot be pickled

    def base(self):
        return dist.LogNormal(0.0, 0.5)


def _local_prior():
    class LocalPrior(priors.QuadraturePrior):  # defined in a function: cannot be pickled
        def base(self):
            return dist.LogNormal(0.0, 0.5)

    return LocalPrior()


@pytest.mark.parametrize("make", [_WithLambda, _local_prior], ids=["lambda", "local-class"])
def test_save_of_an_unpicklable_prior_is_a_clear_error(data, tmp_path, make):
    x, _ = data
    est = _tiny(prior=make()).fit(x, max_epochs=1)
    path = tmp_path / "model.pt"
    with pytest.raises(TypeError, match=r"cannot save: the prior .* cannot be pickled"):
        est.save(path)
    assert not path.exists()


def test_a_prior_class_from_main_cannot_be_loaded_elsewhere(data, tmp_path, monkeypatch):
    """What happens to a prior class written in a script or notebook (module ``__main__``): the
    file saves, but another process has no ``__main__.ScriptPrior`` to rebuild it from."""
    x, _ = data

    class ScriptPrior(priors.QuadraturePrior):
        def base(self):
            return dist.LogNormal(0.0, 0.5)

    ScriptPrior.__module__, ScriptPrior.__qualname__ = "__main__", "ScriptPrior"
    main = sys.modules["__main__"]
    monkeypatch.setattr(main, "ScriptPrior", ScriptPrior, raising=False)  # the saving process
    est = _tiny(prior=ScriptPrior()).fit(x, max_epochs=1)
    path = tmp_path / "model.pt"
    est.save(path)
    assert isinstance(pyrovae.VAE.load(path).prior_, ScriptPrior)  # fine in the same process
    monkeypatch.delattr(main, "ScriptPrior")  # "another process"
    with pytest.raises(ValueError, match="refers to a class that cannot be imported here"):
        pyrovae.VAE.load(path)


def test_fixed_distribution_priors_pickle():
    """A QuadraturePrior handed a torch distribution pickles with it."""
    prior = PRIOR_FACTORIES[priors.QuadraturePrior]()
    again = pickle.loads(pickle.dumps(prior))
    assert torch.equal(again.base().loc, prior.base().loc)
