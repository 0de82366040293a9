"""Real-data training options: early stopping, library size factors, save/load and devices."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import scipy.sparse as sp
import torch

import pyrovae.estimator as estimator_module
from pyrovae import NBVAE, PVAE, VAE, ZINBVAE, pyro_context
from pyrovae.data import CountData
from pyrovae.datasets import pbmc3k
from pyrovae.fit import run_svi
from pyrovae.guide import VAEGuide
from pyrovae.model import VAEModel
from pyrovae.priors import make_prior


@pytest.fixture(scope="module")
def x_sparse():
    """200 cells × 300 genes of the bundled PBMC 3k subset (CSR)."""
    return pbmc3k().counts[:200, :300].tocsr()


@pytest.fixture(scope="module")
def x(x_sparse):
    return x_sparse.toarray()


def _params(est):
    return list(est.model_.parameters()) + list(est.guide_.parameters())


# --------------------------------------------------------------------------------------------
# minibatches + validation split + early stopping
# --------------------------------------------------------------------------------------------


def test_early_stopping_restores_the_parameters_of_the_best_validation_loss(x, monkeypatch):
    """Spy on run_svi: snapshot the parameters after every epoch and the RNG state before every
    validation loss, so the recorded best validation loss can be recomputed exactly."""
    snapshots, rng_states, spied = [], [], {}
    run_svi = estimator_module.run_svi

    def spy(model, guide, data, **kwargs):
        validation_loss = kwargs["validation_loss"]
        params = list(model.parameters()) + list(guide.parameters())

        def recorded_validation_loss():
            rng_states.append(torch.get_rng_state())
            return validation_loss()

        kwargs["validation_loss"] = recorded_validation_loss
        kwargs["callback"] = lambda epoch, loss: snapshots.append(
            [p.detach().clone() for p in params]
        )
        spied.update(validation_loss=validation_loss, n_train=data.n_cells)
        return run_svi(model, guide, data, **kwargs)

    monkeypatch.setattr(estimator_module, "run_svi", spy)
    patience = 2
    est = NBVAE(latent_dim=2, hidden=(16,)).fit(
        x[:, :100],
        size_factor="library",
        batch_size=32,
        lr=5e-2,
        max_epochs=80,
        validation_fraction=0.25,
        patience=patience,
        seed=0,
    )
    h = est.history_
    assert spied["n_train"] == 150 and len(est.validation_cells_) == 50  # cells held out
    assert h.stopped_early
    assert len(h.loss) == len(h.val_loss) == len(snapshots) == h.best_epoch + patience + 1
    assert h.val_loss[h.best_epoch] == min(h.val_loss)
    assert 0 < h.best_epoch < len(h.loss) - 1
    # the model holds the parameters of the best epoch, not those of the last one
    for p, best in zip(_params(est), snapshots[h.best_epoch], strict=True):
        assert torch.equal(p, best)
    assert not all(torch.equal(p, q) for p, q in zip(_params(est), snapshots[-1], strict=True))
    # recomputing the validation loss of the restored model reproduces the recorded best
    torch.set_rng_state(rng_states[h.best_epoch])
    assert spied["validation_loss"]() == h.val_loss[h.best_epoch]
    torch.set_rng_state(rng_states[-1])
    assert spied["validation_loss"]() != h.val_loss[-1]


def test_minibatch_sparse_fit_equals_dense_fit(x, x_sparse):
    kwargs = dict(size_factor="library", batch_size=48, max_epochs=2, validation_fraction=0.1)
    dense = NBVAE(latent_dim=2, hidden=(16,)).fit(x, **kwargs)
    sparse = NBVAE(latent_dim=2, hidden=(16,)).fit(x_sparse, **kwargs)
    np.testing.assert_allclose(sparse.trace_, dense.trace_, rtol=1e-6)
    np.testing.assert_allclose(sparse.history_.val_loss, dense.history_.val_loss, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# size factors
# --------------------------------------------------------------------------------------------


def test_library_size_factors_put_new_data_on_the_training_scale(x):
    est = NBVAE(latent_dim=2, hidden=(16,)).fit(x, size_factor="library", max_epochs=2, seed=0)
    library = x.sum(axis=1)
    assert est.size_factor_mode_ == "library"
    assert est.library_median_ == pytest.approx(np.median(library))
    new = x[:25]  # new cells whose own median library size is not the training one
    assert np.median(new.sum(axis=1)) != pytest.approx(est.library_median_)
    s = library[:25] / est.library_median_
    np.testing.assert_allclose(est.predict(new), est.predict(new, size_factor=s), rtol=1e-6)
    np.testing.assert_allclose(est.predict(new), est.predict(x)[:25], rtol=1e-6)
    ones = est.predict(new, size_factor=np.ones(25))
    np.testing.assert_allclose(est.predict(new), ones * s[:, None], rtol=1e-5)
    np.testing.assert_allclose(
        est.denoise(new, n_samples=5), est.denoise(new, size_factor=s, n_samples=5), rtol=1e-6
    )
    # with a mask, only the observed counts make up the library size
    w = np.random.default_rng(0).random(new.shape) > 0.3
    s_obs = (new * w).sum(axis=1) / est.library_median_
    np.testing.assert_allclose(
        est.predict(new, w=w), est.predict(new, w=w, size_factor=s_obs), rtol=1e-6
    )


# --------------------------------------------------------------------------------------------
# save / load
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: ZINBVAE(latent_dim=2, hidden=(16,), disp_by_gene=True),
        lambda: VAE(prior="lognormal", latent_dim=2, hidden=(16, 8)),
    ],
    ids=["zinb-by-gene", "lognormal-quadrature"],
)
def test_save_load_round_trip_gives_identical_outputs(x_sparse, tmp_path, make):
    x_sparse = x_sparse[:, :100]
    est = make().fit(x_sparse, size_factor="library", max_epochs=2, batch_size=64, seed=0)
    path = tmp_path / "model.pt"
    est.save(path)
    back = VAE.load(path)
    assert type(back) is type(est)
    assert back.get_params() == est.get_params()
    assert back.library_median_ == est.library_median_
    np.testing.assert_array_equal(back.trace_, est.trace_)
    sub = x_sparse[:40]
    np.testing.assert_array_equal(back.latent(sub), est.latent(sub))
    np.testing.assert_array_equal(back.denoise(sub, n_samples=5), est.denoise(sub, n_samples=5))
    np.testing.assert_array_equal(back.predict(sub), est.predict(sub))
    np.testing.assert_array_equal(
        back.log_likelihood(sub, n_samples=10), est.log_likelihood(sub, n_samples=10)
    )
    for (name, p), (_, q) in zip(
        back.model_.prior.named_parameters(), est.model_.prior.named_parameters(), strict=True
    ):
        assert torch.equal(p, q), name


@pytest.fixture(scope="module")
def saved(x, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "nbvae.pt"
    NBVAE(latent_dim=2, hidden=(8,)).fit(x, max_epochs=1).save(path)
    return path


def test_loading_a_file_of_an_incompatible_version_is_a_clear_error(saved, tmp_path):
    payload = torch.load(saved, weights_only=False)
    payload["pyrovae_version"] = "97.3.0"
    bad = tmp_path / "future.pt"
    torch.save(payload, bad)
    with pytest.raises(ValueError, match=r"written by pyrovae 97\.3\.0.*not compatible"):
        VAE.load(bad)


def test_loading_something_else_is_a_clear_error(saved, tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="not a pyrovae model file"):
        VAE.load(other)
    with pytest.raises(ValueError, match="holds a NBVAE, not a PVAE"):
        PVAE.load(saved)
    assert isinstance(NBVAE.load(saved), NBVAE)


# --------------------------------------------------------------------------------------------
# devices
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(x):
    with pytest.raises(ValueError, match="no CUDA device"):
        NBVAE(latent_dim=2, device="cuda").fit(x, max_epochs=1)
    est = NBVAE(latent_dim=2, hidden=(8,), device="auto").fit(x, max_epochs=1)
    assert next(est.model_.parameters()).device.type == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tiny_fit_on_cuda(x_sparse, tmp_path):
    est = NBVAE(latent_dim=2, hidden=(16,), device="cuda").fit(
        x_sparse, size_factor="library", batch_size=64, max_epochs=2, validation_fraction=0.2
    )
    assert all(p.device.type == "cuda" for p in _params(est))
    assert np.isfinite(est.trace_).all()
    lam = est.denoise(x_sparse, n_samples=10)
    assert isinstance(lam, np.ndarray) and lam.shape == x_sparse.shape
    assert np.isfinite(lam).all() and (lam > 0).all()
    assert est.latent(x_sparse).shape == (x_sparse.shape[0], 2)
    path = tmp_path / "cuda.pt"
    est.save(path)
    back = VAE.load(path)
    assert next(back.model_.parameters()).device.type == "cuda"
    np.testing.assert_allclose(back.denoise(x_sparse, n_samples=10), lam, rtol=1e-5)
    assert sp.issparse(x_sparse)


# --------------------------------------------------------------------------------------------
# the SVI loop directly: divergence reports, gradient clipping, a one-rank process group
# --------------------------------------------------------------------------------------------


def _pair(n_genes):
    """An NB model and its guide, built as the estimator builds them (seeded)."""
    pyro.set_rng_seed(0)
    with pyro_context():
        model = VAEModel(n_genes, 2, make_prior("nb", n_genes), (8,))
        guide = VAEGuide(n_genes, 2, (8,))
    return model, guide


def _loop_fit(x, **kwargs):
    """A tiny model fitted by run_svi directly (as VAE.fit builds it)."""
    model, guide = _pair(x.shape[1])
    data = CountData(x.astype(np.float32))
    settings = dict(lr=1e-2, max_epochs=2, batch_size=50, seed=0) | kwargs
    history = run_svi(model, guide, data, **settings)
    return model, guide, history


def test_a_divergence_names_the_parameter_the_batch_and_its_cells(x, monkeypatch):
    import pyrovae.fit as fit_module

    real, calls = fit_module._loss_and_grads, []

    def poison(net, *args, **kwargs):
        value = real(net, *args, **kwargs)
        calls.append(1)
        if len(calls) == 6:  # epoch 1, batch 1 (4 batches of 50 of the 200 cells per epoch)
            dict(net.named_parameters())["guide.encoder.body.0.weight"].grad[0, 0] = math.inf
        return value

    seen = []
    data_batch = CountData.batch

    def spy(self, idx=None, *args, **kwargs):
        seen.append(idx)
        return data_batch(self, idx, *args, **kwargs)

    monkeypatch.setattr(fit_module, "_loss_and_grads", poison)
    monkeypatch.setattr(CountData, "batch", spy)
    with pytest.raises(fit_module.FitDivergedError) as info:
        _loop_fit(x[:, :50], max_epochs=3)
    err = info.value
    cells = seen[-1]  # the batch of the failing step
    assert (err.epoch, err.batch, err.parameter) == (1, 1, "guide.encoder.body.0.weight")
    assert err.cells == cells[: len(err.cells)].tolist() and len(err.cells) >= 5
    assert math.isfinite(err.loss)
    message = str(err)
    assert "a gradient (of guide.encoder.body.0.weight" in message
    assert (
        "in epoch 1 (batch 1 of 4, 50 cells: [" in message and str(err.cells[:5])[1:-1] in message
    )
    for advice in ("smaller lr", "clip_norm", "float64", "larger batch"):
        assert advice in message
    assert "\n" not in message  # one line for the CLI


def test_clip_norm_bounds_the_gradient_norm_per_cell(x, monkeypatch):
    import pyrovae.fit as fit_module

    norms = {}

    def recording(name):
        class Recording(torch.optim.Adam):
            def step(self, closure=None):
                grads = [p.grad for g in self.param_groups for p in g["params"]]
                norms.setdefault(name, []).append(
                    float(
                        torch.linalg.vector_norm(
                            torch.stack([torch.linalg.vector_norm(g) for g in grads])
                        )
                    )
                )
                return super().step(closure)

        return Recording

    x = x[:, :50]
    n = len(x)
    monkeypatch.setitem(fit_module.OPTIMIZERS, "adam", recording("plain"))
    _loop_fit(x)
    limit = 0.5 * min(norms["plain"]) / n  # below every unclipped per-cell norm
    monkeypatch.setitem(fit_module.OPTIMIZERS, "adam", recording("clipped"))
    _loop_fit(x, clip_norm=limit)
    assert len(norms["clipped"]) == len(norms["plain"]) == 8
    # the first step starts from the same parameters: its gradient is cut to limit × n cells
    assert norms["clipped"][0] == pytest.approx(limit * n, rel=1e-5)
    assert max(norms["clipped"]) <= limit * n * (1 + 1e-5)
    with pytest.raises(ValueError, match="clip_norm"):
        _loop_fit(x, clip_norm=0.0)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_one_rank_process_group_takes_the_ddp_path_with_identical_results(x, monkeypatch):
    """Inside an initialized process group the loop wraps the model in DDP; with one rank it
    gives bit for bit the fit without a process group."""
    import torch.distributed as torch_dist

    from pyrovae import distributed

    x = x[:, :50]
    plain = [
        p.detach().clone()
        for m in _loop_fit(x, objective="iwae", n_samples=2)[:2]
        for p in m.parameters()
    ]
    for k, v in dict(
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
    ).items():
        monkeypatch.setenv(k, v)
    wrapped = []
    real_ddp = torch.nn.parallel.DistributedDataParallel

    def spy(module, *args, **kwargs):
        wrapped.append(module)
        return real_ddp(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", spy)
    assert distributed.init_from_env()
    try:
        assert torch_dist.get_backend() == "gloo" and distributed.world_size() == 1
        assert not distributed.init_from_env()  # a group exists: nothing to do
        model, guide, _ = _loop_fit(x, objective="iwae", n_samples=2)
    finally:
        distributed.destroy()
    assert len(wrapped) == 1
    for p, q in zip([*model.parameters(), *guide.parameters()], plain, strict=True):
        assert torch.equal(p, q)


def test_a_parameter_that_a_step_leaves_non_finite_is_named(x, monkeypatch):
    import pyrovae.fit as fit_module

    class Poisoned(torch.optim.Adam):
        steps = 0

        def step(self, closure=None):
            out = super().step(closure)
            Poisoned.steps += 1
            if Poisoned.steps == 6:  # epoch 1, batch 1
                with torch.no_grad():
                    self.param_groups[0]["params"][-1].view(-1)[0] = math.nan
            return out

    monkeypatch.setitem(fit_module.OPTIMIZERS, "adam", Poisoned)
    with pytest.raises(fit_module.FitDivergedError, match="not finite after the step") as info:
        model, guide, _ = _loop_fit(x[:, :50], max_epochs=3)
    err = info.value
    assert (err.epoch, err.batch, err.parameter) == (1, 1, "guide.encoder.scale.bias")
    assert "guide.encoder.scale.bias" in str(err) and len(err.cells) == 8


def test_a_source_may_choose_the_epoch_order(x):
    """``source.epoch_order(generator)`` (e.g. block shuffling of a file on disk) replaces the
    default permutation; the batches follow it."""

    class Blocks(CountData):
        orders = []

        def epoch_order(self, generator):
            blocks = torch.randperm(4, generator=generator).numpy()
            order = np.concatenate([np.arange(50 * b, 50 * (b + 1)) for b in blocks])
            self.orders.append(order)
            return order

        def batch(self, idx=None, dtype=torch.float32, device="cpu"):
            self.seen.append(idx)
            return super().batch(idx, dtype, device)

    data = Blocks(x[:, :50].astype(np.float32))
    data.seen = []
    model, guide = _pair(50)
    run_svi(model, guide, data, max_epochs=2, batch_size=50, seed=0)
    assert len(Blocks.orders) == 2 and len(data.seen) == 1 + 8  # one call builds the parameters
    for epoch, order in enumerate(Blocks.orders):
        for b in range(4):  # each batch is one contiguous block, in the drawn order
            np.testing.assert_array_equal(
                data.seen[1 + 4 * epoch + b], order[50 * b : 50 * (b + 1)]
            )
