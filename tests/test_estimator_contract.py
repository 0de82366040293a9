"""The estimator's contract: scikit-learn's parameter protocol, no global RNG side effects, failed
fits that change nothing, no stale state, no hidden-entry leaks, the default training schedule."""

from __future__ import annotations

import random

import numpy as np
import pytest
import scipy.special as sc
import scipy.stats as st
import torch
from sklearn.base import clone

import pyrovae
from pyrovae import NBVAE, PVAE, VAE, ZINBVAE, NotFittedError

# ruff: noqa: NPY002 - the legacy global numpy RNG is what these tests watch
FAST = dict(max_epochs=3, lr=1e-2)
ESTIMATORS = [
    lambda: VAE(latent_dim=2, hidden=(8,), prior="zinb", prior_by_gene=True),
    lambda: PVAE(input_dim=12, latent_dim=2, hidden=(8,)),
    lambda: NBVAE(latent_dim=2, disp_by_gene=True, hidden=(8,)),
    lambda: ZINBVAE(latent_dim=2, logodds_by_gene=True, hidden=(8,), dtype=torch.float64),
]


def _state(est):
    """Everything a fitted estimator holds, as comparable values."""
    params = [p.detach().clone() for p in (*est.model_.parameters(), *est.guide_.parameters())]
    return dict(vars(est)), params


# -- scikit-learn's parameter protocol ------------------------------------------------------
@pytest.mark.parametrize("make", ESTIMATORS)
def test_clone_and_params_round_trip(make):
    est = make()
    params = est.get_params(deep=True)
    assert params == est.get_params(deep=False)
    twin = clone(est)
    assert type(twin) is type(est) and twin.get_params() == params
    assert twin.set_params(latent_dim=3) is twin and twin.latent_dim == 3
    assert est.latent_dim == 2  # the clone is independent
    with pytest.raises(ValueError, match="invalid parameter 'latnt_dim'"):
        est.set_params(latnt_dim=3)


def test_clone_of_a_fitted_estimator_is_unfitted(counts):
    est = NBVAE(latent_dim=2, hidden=(8,)).fit(counts, **FAST)
    twin = clone(est)
    with pytest.raises(NotFittedError):
        twin.denoise(counts)


def test_not_fitted_error_has_scikit_learn_bases(counts):
    assert issubclass(NotFittedError, ValueError) and issubclass(NotFittedError, AttributeError)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        VAE().latent(counts)


def test_set_params_takes_effect_at_the_next_fit(counts):
    est = VAE(latent_dim=2, hidden=(8,)).fit(counts, **FAST)
    est.set_params(latent_dim=3).fit(counts, **FAST)
    assert est.latent(counts).shape == (len(counts), 3)


# -- random number generators ---------------------------------------------------------------
def test_fit_and_evaluation_leave_global_rngs_alone(counts):
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    est = NBVAE(latent_dim=2, hidden=(8,)).fit(
        counts, seed=0, validation_fraction=0.2, batch_size=16, n_samples=2, max_epochs=2
    )
    est.denoise(counts, n_samples=3)
    est.fit(counts, seed=None, **FAST)
    after = (torch.get_rng_state(), np.random.get_state()[1], random.getstate())
    assert torch.equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    assert before[2] == after[2]


def test_same_seed_same_fit_whatever_the_global_state(counts):
    torch.manual_seed(1)
    a = NBVAE(latent_dim=2, hidden=(8,)).fit(counts, seed=4, batch_size=16, **FAST)
    torch.manual_seed(99)
    torch.rand(10)
    b = NBVAE(latent_dim=2, hidden=(8,)).fit(counts, seed=4, batch_size=16, **FAST)
    np.testing.assert_array_equal(a.trace_, b.trace_)
    np.testing.assert_array_equal(a.denoise(counts), b.denoise(counts))


def test_seed_none_gives_different_fits(counts):
    a = NBVAE(latent_dim=2, hidden=(8,)).fit(counts, seed=None, **FAST)
    b = NBVAE(latent_dim=2, hidden=(8,)).fit(counts, seed=None, **FAST)
    assert not np.array_equal(a.trace_, b.trace_)


# -- numpy integers -------------------------------------------------------------------------
def test_numpy_integers_are_accepted(counts):
    est = VAE(latent_dim=np.int64(2), hidden=(np.int32(8),), input_dim=np.int64(12))
    est.fit(
        counts,
        max_epochs=np.int64(2),
        batch_size=np.int32(16),
        n_samples=np.int64(2),
        kl_warmup=np.int64(1),
        seed=np.int64(3),
    )
    assert len(est.trace_) == 2 and est.latent(counts).shape == (len(counts), 2)
    assert est.denoise(counts, n_samples=np.int64(2)).shape == counts.shape


# -- failed fits ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [dict(lr=0), dict(max_epochs=0), dict(validation_by="genes", validation_fraction=0.1)],
    ids=["lr", "epochs", "validation_by"],
)
def test_a_fit_that_raises_changes_nothing(counts, bad):
    fresh = NBVAE(latent_dim=2, hidden=(8,))
    with pytest.raises(ValueError):
        fresh.fit(counts, **{**FAST, **bad})
    assert not hasattr(fresh, "model_")

    est = NBVAE(latent_dim=2, hidden=(8,)).fit(counts, size_factor="library", **FAST)
    attrs, params = _state(est)
    out = est.denoise(counts)
    with pytest.raises(ValueError):
        est.fit(counts[:, :5], **{**FAST, **bad})
    after_attrs, after_params = _state(est)
    assert after_attrs.keys() == attrs.keys()
    assert all(after_attrs[k] is attrs[k] for k in attrs)
    for p, q in zip(params, after_params, strict=True):
        assert torch.equal(p, q)
    np.testing.assert_array_equal(est.denoise(counts), out)


def test_a_diverged_refit_keeps_the_earlier_fit_and_returns_its_own(counts):
    est = NBVAE(latent_dim=2, hidden=(8,)).fit(counts, **FAST)
    out = est.denoise(counts)
    with pytest.raises(pyrovae.FitDivergedError) as info:
        est.fit(counts, lr=1e6, max_epochs=50)
    np.testing.assert_array_equal(est.denoise(counts), out)
    diverged = info.value.estimator
    assert diverged is not est and len(diverged.trace_) == info.value.epoch
    assert np.all(np.isfinite(diverged.denoise(counts, n_samples=2)))


def test_refit_leaves_no_stale_attributes(counts):
    est = NBVAE(latent_dim=2, hidden=(8,)).fit(
        counts, size_factor="library", validation_fraction=0.2, **FAST
    )
    assert est.validation_cells_ is not None and est.library_median_ is not None
    est.fit(counts, validation_fraction=0.1, validation_by="entries", **FAST)
    assert est.validation_cells_ is None and est.library_median_ is None
    assert est.validation_mask_ is not None
    est.fit(counts, **FAST)
    assert est.validation_mask_ is None and est.validation_ is None
    assert est.size_factor_mode_ is None


# -- hidden entries never leak --------------------------------------------------------------
@pytest.fixture
def masked(counts):
    rng = np.random.default_rng(0)
    w = rng.random(counts.shape) > 0.2
    w[:, 0] = True
    other = counts.copy()
    other[~w] = rng.integers(0, 500, size=(~w).sum())  # very different hidden values
    return w, other


@pytest.mark.parametrize("size_factor", [None, "library"])
def test_hidden_entries_change_no_output_at_observed_entries(counts, masked, size_factor):
    w, other = masked
    est = NBVAE(latent_dim=2, hidden=(8,), dtype=torch.float64).fit(
        counts, w=w, size_factor=size_factor, **FAST
    )
    for method in ("latent", "predict", "denoise", "log_likelihood"):
        kwargs = {} if method == "latent" else dict(size_factor=None)
        if method == "log_likelihood":
            kwargs["n_samples"] = 5
        a = getattr(est, method)(counts, w, **kwargs)
        b = getattr(est, method)(other, w, **kwargs)
        np.testing.assert_array_equal(a, b, err_msg=method)
    a = est.predictive_log_prob(counts, w, n_samples=5)
    b = est.predictive_log_prob(other, w, n_samples=5)
    np.testing.assert_array_equal(a[w], b[w])


def test_predictive_log_prob_matches_an_independent_computation(counts, masked):
    """log (1/S) Σ_s NB(x_ij; s_i μ(z_is)_j, θ), q and s_i from the observed entries only."""
    w, other = masked
    est = NBVAE(latent_dim=2, hidden=(8,), dtype=torch.float64).fit(
        counts, w=w, size_factor="library", **FAST
    )
    got = est.predictive_log_prob(other, w, n_samples=4, seed=7)
    g = torch.Generator().manual_seed(7)
    eps = torch.randn(4, 2, generator=g, dtype=torch.float64).unsqueeze(-2)
    observed = np.where(w, other, 0.0).astype(np.float64)
    lib = observed.sum(1)
    s = lib / np.median(np.where(w, counts, 0.0).sum(1))
    with torch.no_grad():
        loc, scale = est.encoder(torch.as_tensor(observed), torch.as_tensor(w))
        mu = est.model_.rate(loc + scale * eps, torch.as_tensor(s)).numpy()
    theta = float(est.prior_.inv_dispersion.detach())
    lp = st.nbinom.logpmf(other, theta, theta / (theta + mu))
    expected = sc.logsumexp(lp, axis=0) - np.log(4)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


def test_entry_validation_never_trains_on_its_held_out_entries(counts):
    """Changing the values of held-out validation entries changes no training loss and no
    parameter (the size factors see only training entries, too)."""
    settings = dict(validation_fraction=0.2, validation_by="entries", size_factor="library", **FAST)
    a = NBVAE(latent_dim=2, hidden=(8,), dtype=torch.float64).fit(counts, **settings)
    other = counts.copy()
    held = a.validation_mask_
    other[held] = other[held] * 7 + 3
    b = NBVAE(latent_dim=2, hidden=(8,), dtype=torch.float64).fit(other, **settings)
    np.testing.assert_array_equal(b.validation_mask_, held)
    np.testing.assert_array_equal(a.trace_, b.trace_)
    assert a.library_median_ == b.library_median_
    for p, q in zip(_state(a)[1], _state(b)[1], strict=True):
        assert torch.equal(p, q)
    assert a.history_.val_loss != b.history_.val_loss  # the held-out entries are scored


def test_kl_warmup_scales_the_kl_term(counts):
    """In warm-up epoch e the recorded loss is -(E_q log p(x|z) - (e+1)/W KL): with the same
    seed it lies between the plain ELBO fit's loss and the KL-free reconstruction term."""
    plain = NBVAE(latent_dim=2, hidden=(8,), dtype=torch.float64).fit(counts, max_epochs=1)
    warm = NBVAE(latent_dim=2, hidden=(8,), dtype=torch.float64).fit(
        counts, max_epochs=1, kl_warmup=4
    )
    # same initial parameters and (analytic KL) no particles differ: the first epoch's loss
    # differs by exactly (1 - 1/4) KL > 0
    assert warm.trace_[0] < plain.trace_[0]
    later = NBVAE(latent_dim=2, hidden=(8,), dtype=torch.float64).fit(
        counts, max_epochs=1, kl_warmup=1
    )
    np.testing.assert_allclose(later.trace_, plain.trace_, rtol=1e-12)


# -- AnnData layers --------------------------------------------------------------------------
def test_the_fitted_layer_is_used_for_anndata_evaluation(counts):
    anndata = pytest.importorskip("anndata")
    adata = anndata.AnnData(X=np.zeros_like(counts))
    adata.layers["raw"] = counts
    est = NBVAE(latent_dim=2, hidden=(8,)).fit(adata, layer="raw", **FAST)
    assert est.layer_ == "raw"
    np.testing.assert_array_equal(est.latent(adata), est.latent(counts))
    np.testing.assert_array_equal(est.denoise(adata), est.denoise(counts))


# -- defaults --------------------------------------------------------------------------------
def test_default_fit_stops_on_a_validation_split(counts):
    x = np.tile(counts, (2, 1))
    est = NBVAE(latent_dim=2, hidden=(8,)).fit(x, lr=5e-2)
    settings = est.fit_settings_
    assert settings["validation_fraction"] == 0.1 and settings["patience"] == 20
    assert len(est.validation_cells_) == round(0.1 * len(x))
    assert est.history_.stopped_early and len(est.trace_) < 1000
    assert len(est.history_.val_loss) == len(est.trace_)


def test_explicit_max_epochs_keeps_the_reference_protocol(counts):
    est = PVAE(counts.shape[1], 2, hidden=(8,)).fit(
        counts, lr=1e-2, n_samples=2, max_epochs=4, trace=True
    )
    assert len(est.trace_) == 4 and est.validation_ is None
    assert est.fit_settings_["validation_fraction"] == 0.0


def test_prior_by_gene_learns_one_parameter_per_gene(counts):
    est = VAE(latent_dim=2, hidden=(8,), prior="gamma", prior_by_gene=True).fit(counts, **FAST)
    theta = est.prior_.inv_dispersion.detach()
    assert theta.shape == (counts.shape[1],) and len(torch.unique(theta)) > 1


# -- persistence -----------------------------------------------------------------------------
@pytest.mark.parametrize("content", [b"", b"not a model", b"PK\x03\x04garbage"])
def test_loading_a_corrupt_file_names_the_problem(tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="cannot load .*model.pt"):
        VAE.load(path)


def test_loading_a_truncated_model_names_the_problem(tmp_path, counts):
    path = tmp_path / "model.pt"
    NBVAE(latent_dim=2, hidden=(8,)).fit(counts, **FAST).save(path)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ValueError, match="cannot load"):
        VAE.load(path)


def test_load_moves_the_model_to_the_requested_device(tmp_path, counts):
    path = tmp_path / "model.pt"
    est = NBVAE(latent_dim=2, hidden=(8,), device="auto").fit(counts, **FAST)
    est.save(path)
    back = NBVAE.load(path, device="cpu")
    assert back.device == "cpu"
    assert all(p.device.type == "cpu" for p in back.model_.parameters())
    np.testing.assert_allclose(back.denoise(counts), est.denoise(counts), rtol=1e-6)
    assert type(back) is NBVAE and VAE.load(path).__class__ is NBVAE
    with pytest.raises(ValueError, match="holds a NBVAE, not a PVAE"):
        PVAE.load(path)


# -- checkpoints through the estimator --------------------------------------------------------
def test_fit_resumed_from_a_checkpoint_equals_an_uninterrupted_fit(counts, tmp_path):
    settings = dict(
        batch_size=16,
        n_samples=2,
        validation_fraction=0.2,
        validation_by="entries",
        validate_every=1,  # (a shorter fit validates its last epoch: not an interruption)
        seed=3,
    )
    whole = NBVAE(latent_dim=2, hidden=(8,)).fit(
        counts, max_epochs=4, checkpoint_dir=tmp_path / "a", **settings
    )
    NBVAE(latent_dim=2, hidden=(8,)).fit(
        counts, max_epochs=2, checkpoint_dir=tmp_path / "b", **settings
    )
    resumed = NBVAE(latent_dim=2, hidden=(8,)).fit(
        counts, max_epochs=4, checkpoint_dir=tmp_path / "b", resume=True, **settings
    )
    np.testing.assert_array_equal(resumed.trace_, whole.trace_)
    assert resumed.history_.val_loss == whole.history_.val_loss
    for p, q in zip(_state(resumed)[1], _state(whole)[1], strict=True):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="checkpoint"):
        NBVAE(latent_dim=2, hidden=(8,)).fit(
            counts, max_epochs=4, checkpoint_dir=tmp_path / "missing", resume=True, **settings
        )


def test_validation_runs_every_k_epochs_and_patience_counts_epochs(counts):
    est = NBVAE(latent_dim=2, hidden=(8,)).fit(
        counts, max_epochs=7, validation_fraction=0.2, validation_by="entries", validate_every=3
    )
    assert est.history_.val_epochs == [2, 5, 6] and len(est.history_.val_loss) == 3
    # automatic: every epoch for held-out cells; for held-out entries as rarely as keeps the
    # 10-particle pass over all cells within 20% of 3 x (training cells x particles)
    cells = NBVAE(latent_dim=2, hidden=(8,)).fit(counts, max_epochs=3, validation_fraction=0.1)
    assert cells.fit_settings_["validate_every"] == 1
    assert cells.history_.val_epochs == [0, 1, 2]
    for n_samples, k in ((1, 17), (10, 2)):
        entries = NBVAE(latent_dim=2, hidden=(8,)).fit(
            counts,
            max_epochs=2,
            n_samples=n_samples,
            validation_fraction=0.1,
            validation_by="entries",
        )
        assert entries.fit_settings_["validate_every"] == k
    # patience counts epochs: with validation every 4 epochs and patience 4, one validation
    # without improvement stops the fit
    lr_too_high = NBVAE(latent_dim=2, hidden=(8,)).fit(
        counts, lr=0.5, max_epochs=40, validation_fraction=0.2, validate_every=4, patience=4
    )
    h = lr_too_high.history_
    assert h.stopped_early and h.val_epochs[-1] - h.best_epoch == 4
    assert h.best_epoch in h.val_epochs
