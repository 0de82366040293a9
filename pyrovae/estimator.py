r"""The estimator :class:`VAE`: a thin scikit-learn-style shell over the modules that do the work.

* ``__init__`` only stores the model's settings; :meth:`VAE.fit` checks the data
  (:mod:`pyrovae.data`), draws the validation split (:mod:`pyrovae.validation`), fits the
  size-factor policy on the training entries (:mod:`pyrovae.size_factors`), builds the Pyro pair
  (:mod:`pyrovae.build`), runs SVI (:mod:`pyrovae.fit`) and returns ``self``. Fitted attributes
  end with ``_``. A fit that raises leaves the estimator exactly as it was before the call.
* Every evaluation method is one function of :mod:`pyrovae.posterior` applied a chunk of cells
  at a time, with the same ``n_samples`` standard-normal draws for every cell, so a cell's output
  never depends on the other cells passed with it and repeated calls with the same ``seed``
  agree.
* :meth:`VAE.save` / :meth:`VAE.load` are :mod:`pyrovae.persistence`.

Nothing here touches the global random number generators: ``fit(seed=...)`` seeds a forked copy
of torch's RNG and a local generator.
"""

from __future__ import annotations

import inspect
import os
import secrets
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from . import distributed, persistence, posterior
from ._context import evaluating
from .build import (
    build,
    check_prior_numerics,
    check_settings,
    is_int,
    make_prior_for,
    resolve_device,
)
from .data import CountData, is_anndata
from .fit import FitDivergedError, FitHistory, run_svi
from .priors import UPrior
from .size_factors import SizeFactorPolicy
from .sources import BackedSource, as_source
from .validation import split_validation, validation_interval, validation_loss

__all__ = ["VAE", "NotFittedError", "DEFAULT_TRAINING"]


class NotFittedError(ValueError, AttributeError):
    """The estimator was used before :meth:`VAE.fit` (scikit-learn's exception has the same
    bases)."""


#: What ``fit`` does when it is given neither ``max_epochs`` nor ``validation_fraction``: hold
#: out 10% of the cells and stop after ``patience`` epochs without a better validation loss
#: (best parameters restored), at the latest after ``max_epochs``.
DEFAULT_TRAINING = dict(max_epochs=1000, validation_fraction=0.1, patience=20)

#: Fewest cells for which the default validation split is drawn.
MIN_CELLS_FOR_DEFAULT_VALIDATION = 20

_FITTED = (
    "model_",
    "guide_",
    "n_features_in_",
    "trace_",
    "history_",
    "fit_settings_",
    "layer_",
    "size_factors_",
    "validation_",
)


def _int_arg(name, value, minimum=1, allow_none=False):
    if value is None and allow_none:
        return None
    if not (is_int(value) and value >= minimum):
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        kind = f"None or {kind}" if allow_none else kind
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return int(value)


class VAE:
    r"""Variational autoencoder for counts with a pluggable prior on the random effect :math:`u`.

    Model (see :mod:`pyrovae.model`): :math:`x_{ij} \sim \operatorname{Poisson}(s_i \mu(z_i)_j
    u_{ij})`, :math:`u_{ij} \sim p(u)`, :math:`z_i \sim \mathcal N(0, I_K)`, with :math:`u`
    integrated out by the prior's marginal.

    :param input_dim: number of genes; ``None`` = taken from the data in ``fit``.
    :param int latent_dim: :math:`K \ge 1`.
    :param prior: a :class:`~pyrovae.priors.UPrior` instance (copied in ``fit``) or a name:
        ``"poisson"``, ``"gamma"``/``"nb"``, ``"zig"``/``"zinb"``, ``"lognormal"``.
    :param bool prior_by_gene: with a prior name, one parameter per gene instead of one shared.
    :param hidden: encoder hidden widths (the decoder mirrors them); default two layers of 128.
    :param device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (a GPU when there is one).
    :param dtype: ``torch.float32`` (default) or ``torch.float64``.
    """

    def __init__(
        self,
        input_dim: int | None = None,
        latent_dim: int = 10,
        prior: str | UPrior = "gamma",
        prior_by_gene: bool = False,
        hidden: Sequence[int] = (128, 128),
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.input_dim = input_dim
        self.latent_dim = latent_dim
        self.prior = prior
        self.prior_by_gene = prior_by_gene
        self.hidden = hidden
        self.device = device
        self.dtype = dtype

    # -- scikit-learn parameter protocol ---------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        return [k for k in inspect.signature(cls.__init__).parameters if k != "self"]

    def get_params(self, deep: bool = True) -> dict:
        """The constructor arguments (scikit-learn's protocol; ``deep`` is accepted for
        compatibility: no parameter is itself an estimator)."""
        return {k: getattr(self, k) for k in self._param_names()}

    def set_params(self, **params) -> VAE:
        """Set constructor arguments; returns ``self``. Takes effect at the next ``fit``."""
        valid = self._param_names()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(
                    f"invalid parameter {key!r} for {type(self).__name__}; valid: {valid}"
                )
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- construction ----------------------------------------------------------------------
    def _make_prior(self, n_genes: int) -> UPrior:
        return make_prior_for(self.prior, n_genes, self.prior_by_gene)

    # -- fitting ---------------------------------------------------------------------------
    def fit(
        self,
        x,
        w=None,
        size_factor=None,
        *,
        lr: float = 1e-2,
        max_epochs: int | None = None,
        n_samples: int = 1,
        objective: str = "elbo",
        batch_size: int | None = None,
        optimizer: str = "adam",
        validation_fraction: float | None = None,
        validation_by: str = "cells",
        patience: int | None = None,
        validate_every: int | None = None,
        kl_warmup: int = 0,
        seed: int | None = 0,
        trace: bool = True,
        verbose: bool = False,
        allow_noninteger: bool = False,
        layer: str | None = None,
        clip_norm: float | None = None,
        checkpoint_dir=None,
        checkpoint_every: int | None = None,
        resume: bool = False,
    ) -> VAE:
        """Fit by SVI and return ``self``.

        **Default training** (neither ``max_epochs`` nor ``validation_fraction`` given): 10% of
        the cells are held out and training stops after 20 epochs without a better validation
        loss, restoring the best parameters, at the latest after 1000 epochs
        (:data:`DEFAULT_TRAINING`; data with fewer than 20 cells get no split). Passing
        ``max_epochs`` without ``validation_fraction`` runs exactly that many epochs, as the
        reference package does.

        :param x: counts, cells × genes (numpy, torch, scipy.sparse or AnnData).
        :param w: observed-entry mask (``True``/1 = observed) or ``None``.
        :param size_factor: ``None`` (:math:`s_i = 1`), ``"library"`` (total observed counts /
            the median over training cells) or an array of positive per-cell factors.
        :param lr: learning rate.
        :param max_epochs: passes over the data (see *Default training*).
        :param n_samples: particles per cell for the objective.
        :param objective: ``"elbo"`` (analytic KL), ``"elbo_mc"`` or ``"iwae"``.
        :param batch_size: cells per step (``None`` = full batch).
        :param optimizer: ``"adam"`` or ``"rmsprop"``.
        :param validation_fraction: fraction held out to monitor (and, with ``patience``,
            early-stop on) a validation loss: of the cells, or of the observed entries; ``0`` =
            none (see *Default training* for ``None``).
        :param validation_by: ``"cells"`` — held-out cells, scored by the objective;
            ``"entries"`` — held-out observed entries of every cell, masked during training
            (never seen by the encoder or the size factors) and scored by their posterior
            predictive (:mod:`pyrovae.validation`).
        :param patience: epochs without validation improvement before stopping; the best
            parameters are restored.
        :param validate_every: compute the validation loss every this many epochs; ``None``:
            as rarely as keeps its cost within 20% of the training epochs' (estimated from the
            tensor sizes: :func:`pyrovae.validation.validation_interval`), which is every epoch
            for held-out cells. Patience still counts epochs.
        :param kl_warmup: epochs over which the KL term's weight rises linearly to 1 (ELBO
            warm-up against posterior collapse; see :func:`pyrovae.fit.run_svi`).
        :param seed: seeds parameter initialization, particles, shuffling and the validation
            split (on a forked copy of torch's RNG: the global generators are left as they were);
            ``None`` = fresh entropy.
        :param trace: kept for compatibility; the per-epoch loss is always recorded in ``trace_``.
        :param verbose: show a progress bar.
        :param allow_noninteger: accept non-integer counts (with a warning); the fitted model
            then accepts them in every evaluation method too.
        :param layer: for AnnData input, the layer holding counts (default ``layers['counts']``
            when present, else ``X``); remembered for evaluation on AnnData.
        :param clip_norm: clip the gradient's norm per training cell to this value (off by
            default; see :func:`pyrovae.fit.run_svi`).
        :param checkpoint_dir: a folder to write a checkpoint to every ``checkpoint_every``
            epochs (default 1) and at the end; written atomically (:mod:`pyrovae.checkpoint`).
        :param resume: continue from the checkpoint in ``checkpoint_dir`` (same data and
            settings); the result equals an uninterrupted fit with the same seed.

        **Data-parallel fits.** Called inside an initialised ``torch.distributed`` process group
        (e.g. under ``torchrun``), every rank passes the same data and settings; each trains on
        its share of every batch, DDP averages the gradients, and every rank ends with the same
        parameters (:mod:`pyrovae.distributed`).

        :raises pyrovae.fit.FitDivergedError: NaN/inf loss. The estimator keeps its state from
            before the call; the diverged fit (with the last finite parameters) is the error's
            ``estimator`` attribute.
        """
        check_settings(self.latent_dim, self.input_dim, self.hidden, self.dtype, self.prior)
        settings = self._training_settings(
            lr=lr,
            max_epochs=max_epochs,
            n_samples=n_samples,
            objective=objective,
            batch_size=batch_size,
            optimizer=optimizer,
            validation_fraction=validation_fraction,
            validation_by=validation_by,
            patience=patience,
            validate_every=validate_every,
            kl_warmup=kl_warmup,
            seed=seed,
            allow_noninteger=allow_noninteger,
            clip_norm=clip_norm,
        )
        data = _as_data(x, w, layer, allow_noninteger)
        _check_fit_data(data, self.input_dim, settings)
        if settings["max_epochs"] is None:  # the default: stop on a validation split
            settings.update(DEFAULT_TRAINING)
            if data.n_cells < MIN_CELLS_FOR_DEFAULT_VALIDATION:
                settings.update(validation_fraction=0.0, patience=None)
        seed = settings["seed"] = distributed.broadcast_object(settings["seed"])
        device = resolve_device(self.device)
        fitted = dict(n_features_in_=data.n_genes, layer_=layer, fit_settings_=settings)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            generator = torch.Generator().manual_seed(seed)
            train, held, split, policy = _prepare(data, size_factor, settings, generator)
            prior = self._make_prior(data.n_genes)
            check_prior_numerics(prior, self.dtype, device)
            model, guide = build(
                data.n_genes,
                self.latent_dim,
                prior,
                self.hidden,
                device,
                self.dtype,
                normalise_input=policy.mode is not None,
            )
            if distributed.world_size() > 1:  # other particles on each rank (DDP syncs params)
                torch.manual_seed(seed * 1_000_003 + distributed.rank())
            val_loss = None
            if split is not None:
                score = validation_loss(
                    split,
                    held,
                    rows=distributed.shard(held.n_cells),  # this rank's share; run_svi sums
                    objective=settings["objective"],
                    n_samples=settings["n_samples"],
                    latent_dim=self.latent_dim,
                    dtype=self.dtype,
                    device=device,
                    width=prior.evaluation_width,
                )
                val_loss = lambda: score(model, guide)  # noqa: E731
                if settings["validate_every"] is None:
                    settings["validate_every"] = validation_interval(
                        split, train.n_cells, settings["n_samples"]
                    )
            history = FitHistory()
            fitted.update(
                model_=model,
                guide_=guide,
                history_=history,
                size_factors_=policy,
                validation_=split,
            )
            try:
                run_svi(
                    model,
                    guide,
                    train,
                    objective=settings["objective"],
                    n_samples=settings["n_samples"],
                    lr=settings["lr"],
                    max_epochs=settings["max_epochs"],
                    batch_size=settings["batch_size"],
                    optimizer=settings["optimizer"],
                    validation_loss=val_loss,
                    patience=settings["patience"],
                    validate_every=settings["validate_every"] or 1,
                    kl_warmup=settings["kl_warmup"],
                    generator=generator,
                    dtype=self.dtype,
                    device=device,
                    verbose=verbose,
                    history=history,
                    clip_norm=settings["clip_norm"],
                    checkpoint_dir=checkpoint_dir,
                    checkpoint_every=checkpoint_every,
                    resume=resume,
                )
            except FitDivergedError as err:
                fitted["trace_"] = np.asarray(history.loss)
                err.estimator = _with_state(type(self)(**self.get_params()), fitted)
                raise
        fitted["trace_"] = np.asarray(history.loss)
        _with_state(self, fitted)
        return self

    def _training_settings(self, **s) -> dict:
        """Check the training arguments of ``fit`` (numpy integers accepted)."""
        s["max_epochs"] = _int_arg("max_epochs", s["max_epochs"], allow_none=True)
        s["n_samples"] = _int_arg("n_samples", s["n_samples"])
        s["batch_size"] = _int_arg("batch_size", s["batch_size"], allow_none=True)
        s["patience"] = _int_arg("patience", s["patience"], allow_none=True)
        s["validate_every"] = _int_arg("validate_every", s["validate_every"], allow_none=True)
        s["kl_warmup"] = _int_arg("kl_warmup", s["kl_warmup"], minimum=0)
        if s["seed"] is None:
            s["seed"] = secrets.randbits(62)  # fresh entropy, no global generator involved
        s["seed"] = _int_arg("seed", s["seed"], minimum=0)
        if not (isinstance(s["lr"], int | float | np.floating) and s["lr"] > 0):
            raise ValueError(f"lr must be positive, got {s['lr']!r}")
        s["lr"] = float(s["lr"])
        vf = s["validation_fraction"]
        if vf is None:
            s["validation_fraction"] = None if s["max_epochs"] is None else 0.0
        elif not (isinstance(vf, int | float | np.floating) and 0.0 <= vf < 1.0):
            raise ValueError(f"validation_fraction must be in [0, 1), got {vf!r}")
        else:
            s["validation_fraction"] = float(vf)
            if s["max_epochs"] is None:
                s["max_epochs"] = DEFAULT_TRAINING["max_epochs"]
        clip = s["clip_norm"]
        if clip is not None and not (isinstance(clip, int | float | np.floating) and clip > 0):
            raise ValueError(f"clip_norm must be None or positive, got {clip!r}")
        if s["validation_by"] not in ("cells", "entries"):
            raise ValueError(
                f"validation_by must be 'cells' or 'entries', got {s['validation_by']!r}"
            )
        return s

    # -- fitted state ----------------------------------------------------------------------
    def _check_fitted(self):
        if not hasattr(self, "model_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit first")

    @property
    def trace(self) -> np.ndarray:
        """Per-epoch training loss (negative ELBO / IWAE bound over all training cells)."""
        self._check_fitted()
        return self.trace_

    @property
    def encoder(self):
        """The fitted encoder network (``encoder.mean`` is the layer giving :math:`m`)."""
        self._check_fitted()
        return self.guide_.encoder

    @property
    def decoder(self):
        """The fitted decoder network."""
        self._check_fitted()
        return self.model_.decoder

    @property
    def prior_(self) -> UPrior:
        """The fitted prior on :math:`u` (with learned parameters)."""
        self._check_fitted()
        return self.model_.prior

    @property
    def size_factor_mode_(self) -> str | None:
        """``None``, ``"library"`` or ``"given"`` (see :mod:`pyrovae.size_factors`)."""
        self._check_fitted()
        return self.size_factors_.mode

    @property
    def library_median_(self) -> float | None:
        """Median observed total of the training cells (``size_factor="library"`` fits)."""
        self._check_fitted()
        return self.size_factors_.library_median

    @property
    def validation_cells_(self) -> np.ndarray | None:
        """Indices of the held-out cells (``validation_by="cells"``), else ``None``."""
        self._check_fitted()
        return None if self.validation_ is None else self.validation_.cells

    @property
    def validation_mask_(self) -> np.ndarray | None:
        """Mask of the held-out entries (``validation_by="entries"``), else ``None``."""
        self._check_fitted()
        return None if self.validation_ is None else self.validation_.heldout

    # -- evaluation ------------------------------------------------------------------------
    def _source(self, x, w, size_factor=None, *, score_all=False, with_size_factor=True):
        """Validated evaluation data (in memory, or a source reading the file). With
        ``score_all`` every entry of ``x`` must be a count (they are all scored) and ``w`` only
        says what the encoder and size factors see."""
        self._check_fitted()
        layer = self.layer_ if (is_anndata(x) or isinstance(x, str | os.PathLike)) else None
        allow = self.fit_settings_.get("allow_noninteger", False)
        data = _as_data(x, w, layer, allow, score_all=score_all)
        if data.n_genes != self.n_features_in_:
            raise ValueError(
                f"x has {data.n_genes} genes but the model was fitted on {self.n_features_in_}"
            )
        if not with_size_factor:  # the encoder does not use size factors
            return data
        return data.with_size_factor(self.size_factors_(data, size_factor))

    def _evaluate(self, fn, data: CountData, n_samples: int | None, seed: int) -> np.ndarray:
        device = resolve_device(self.device)
        eps = None
        if n_samples is not None:
            eps = posterior.standard_normal_draws(
                n_samples, self.latent_dim, seed, self.dtype, device
            )
        # under a process group each rank evaluates its share of the cells; all get all rows
        share = distributed.shard(data.n_cells)
        rows = np.arange(data.n_cells)[share] if distributed.world_size() > 1 else None
        out = posterior.evaluate_rows(
            fn, self.model_, self.guide_, data, eps, self.dtype, device, rows
        )
        return distributed.gather_rows(out)

    @evaluating
    def latent(self, x, w=None) -> np.ndarray:
        """:math:`E_q[z]` — the encoder mean — for each cell, shape ``(cells, K)``."""
        return self._evaluate(posterior.latent, self._source(x, w, with_size_factor=False), None, 0)

    @evaluating
    def predict(self, x, w=None, size_factor=None, n_samples: int | None = None, seed: int = 0):
        """Decoder mean: :math:`s\\,\\mu(E_q z)`, or with ``n_samples`` the Monte Carlo mean
        :math:`s\\,E_q[\\mu(z)]` (:math:`s = 1` without size factors). This is the rate *before*
        the random effect :math:`u`; for :math:`E[\\lambda \\mid x]` use :meth:`denoise`."""
        data = self._source(x, w, size_factor)
        return self._evaluate(posterior.predict, data, n_samples, seed)

    @evaluating
    def denoise(self, x, w=None, size_factor=None, n_samples: int = 100, seed: int = 0):
        """Posterior mean :math:`E[\\lambda_{ij} \\mid x_i] \\approx E_q[r_{ij}\\, E[u_{ij} \\mid
        x_{ij}, r_{ij}]]`, with :math:`r = s\\,\\mu(z)` and ``n_samples`` draws from
        :math:`q(z \\mid x)`. Missing entries (``w == 0``) use the prior mean :math:`E[u]`."""
        data = self._source(x, w, size_factor)
        return self._evaluate(posterior.denoise, data, n_samples, seed)

    @evaluating
    def predictive_log_prob(
        self, x, w=None, size_factor=None, n_samples: int = 100, seed: int = 0
    ) -> np.ndarray:
        r"""Per-entry posterior-predictive log pmf :math:`\log E_q[p(x_{ij} \mid z_i)]`, where
        :math:`q` — and the library size factor — see only the entries with ``w == 1``.

        Sum it over the entries with ``w == 0`` for a proper held-out (imputation) score: the
        model's own predictive distribution (NB, ZINB, ... as the prior implies), which neither
        the encoder nor the size factors saw. ``x`` must hold the true counts at every entry.
        """
        data = self._source(x, w, size_factor, score_all=True)
        # the encoder must see w; the likelihood scores x as given at every entry
        scored = data if getattr(data, "w", None) is None else _EncoderMask(data)
        return self._evaluate(posterior.predictive_log_prob, scored, n_samples, seed)

    @evaluating
    def log_likelihood(self, x, w=None, size_factor=None, n_samples: int = 1000, seed: int = 0):
        """Per-cell importance-sampled estimate of :math:`\\log p(x_{i,\\text{obs}})`:
        :math:`\\log \\frac1S \\sum_s p(x_i, z_{is}) / q(z_{is} \\mid x_i)` with ``n_samples``
        draws (a lower bound in expectation that tightens as ``n_samples`` grows)."""
        data = self._source(x, w, size_factor)
        return self._evaluate(posterior.log_likelihood, data, n_samples, seed)

    # -- persistence -----------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the fitted model (settings, parameters, prior, trace, package version)."""
        self._check_fitted()
        persistence.save(self, path)

    @classmethod
    def load(cls, path, device: str | None = None) -> VAE:
        """Load a model written by :meth:`save` (a pickle: only load files you trust).

        :param device: where to put the model (default: the device it was fitted with; a model
            fitted on ``"cuda"`` loads on a CPU-only machine with ``device="cpu"``).
        """
        return persistence.load(cls, path, device)


class _EncoderMask:
    """Batches of ``data`` with ``w`` for the encoder but unmasked counts for scoring."""

    def __init__(self, data: CountData):
        self.data, self.w = data.with_mask(None), data.w
        self.n_cells, self.n_genes = data.n_cells, data.n_genes

    def batch(self, idx, dtype, device):
        x, _, s = self.data.batch(idx, dtype, device)
        return x, torch.as_tensor(self.w[idx], device=device), s


def _on_disk(x) -> bool:
    """A path to an ``.h5ad`` file, a backed AnnData or a :class:`~pyrovae.sources.BackedSource`."""
    return isinstance(x, str | os.PathLike | BackedSource) or (
        is_anndata(x) and getattr(x, "isbacked", False)
    )


def _as_data(x, w, layer, allow_noninteger, *, score_all=False):
    """Validated counts (:func:`pyrovae.sources.as_source`): a
    :class:`~pyrovae.data.CountData` in memory, or a :class:`~pyrovae.sources.BackedSource`
    reading the file block by block."""
    if _on_disk(x) and w is not None:
        raise ValueError("a mask w is not supported for data read from disk; load it first")
    if isinstance(x, BackedSource):
        if layer is not None and x.layer != layer:
            raise ValueError(f"the source reads layer {x.layer!r}, not {layer!r}")
        return x
    return as_source(x, w, layer, allow_noninteger=allow_noninteger, score_all=score_all)


def _prepare(data, size_factor, settings, generator):
    """Split off validation data, then fit the size-factor policy on the training entries only.

    :returns: training data, held-out data (or ``None``), the split (or ``None``), the policy.
    """
    fraction = settings["validation_fraction"] or 0.0
    if fraction == 0.0:
        policy = SizeFactorPolicy.fit(size_factor, data)
        return data.with_size_factor(policy(data, size_factor)), None, None, policy
    by = settings["validation_by"]
    if by == "entries" and not isinstance(data, CountData):
        raise ValueError("validation_by='entries' needs the counts in memory; use 'cells'")
    w_train, split = split_validation(data, fraction, by, generator)
    if split.by == "entries":
        train = data.with_mask(w_train)
        policy = SizeFactorPolicy.fit(size_factor, train)
        s = policy(train, size_factor)
        return train.with_size_factor(s), data.with_size_factor(s), split, policy
    given = size_factor is not None and not isinstance(size_factor, str)
    s_all = np.asarray(size_factor, dtype=np.float64) if given else None
    train, held = data.subset(split.train_cells), data.subset(split.cells)
    policy = SizeFactorPolicy.fit(s_all[split.train_cells] if given else size_factor, train)
    s_train = policy(train, s_all[split.train_cells] if given else None)
    s_held = policy(held, s_all[split.cells] if given else None)
    return train.with_size_factor(s_train), held.with_size_factor(s_held), split, policy


def _check_fit_data(data, input_dim, settings) -> None:
    if input_dim is not None and data.n_genes != input_dim:
        raise ValueError(f"x has {data.n_genes} genes but input_dim is {input_dim}")
    if settings["batch_size"] is None and not isinstance(data, CountData):
        raise ValueError("a fit from disk needs batch_size (e.g. 1024)")
    if not isinstance(data, CountData):
        return
    x, w = data.x, data.w
    if settings["batch_size"] is None and sp.issparse(x) and x.shape[0] * x.shape[1] > 2**27:
        raise ValueError(
            f"a full-batch fit would densify the whole {x.shape[0]}×{x.shape[1]} sparse "
            "matrix; pass batch_size (e.g. 256)"
        )
    if w is not None:
        if not w.any(axis=1).all():
            bad = np.flatnonzero(~w.any(axis=1))
            raise ValueError(f"w masks every entry of cell(s) {bad[:10].tolist()}")
        if not w.any(axis=0).all():
            bad = np.flatnonzero(~w.any(axis=0))
            raise ValueError(f"w masks every entry of gene(s) {bad[:10].tolist()}")


def _with_state(est: VAE, fitted: dict) -> VAE:
    """Replace every fitted attribute of ``est`` (none of a previous fit survives)."""
    for name in _FITTED:
        est.__dict__.pop(name, None)
    for name in _FITTED:
        setattr(est, name, fitted[name])
    return est
