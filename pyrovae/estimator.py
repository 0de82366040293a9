r"""Estimators: :class:`VAE` and the reference's :class:`PVAE`, :class:`NBVAE`, :class:`ZINBVAE`.

scikit-learn conventions: ``__init__`` only stores the model's settings, :meth:`VAE.fit` builds and
trains the Pyro model/guide pair and returns ``self``; fitted attributes end with ``_``
(``model_``, ``guide_``, ``trace_``, ``history_``, ``n_features_in_``). Training settings are
arguments of ``fit``, as in the reference package (``fit(x, w=w, lr=1e-2, n_samples=10,
max_epochs=3000, trace=True)``).

All evaluation methods run the networks without dropout or batch statistics and use the same
``n_samples`` standard-normal draws :math:`\epsilon_s` for every cell
(:math:`z_{is} = m_i + S_i^{1/2} \epsilon_s`), so a cell's output never depends on the other cells
passed with it, and repeated calls with the same ``seed`` agree.
"""

from __future__ import annotations

import copy
import math
import pickle
from collections.abc import Sequence

import numpy as np
import pyro
import pyro.distributions as dist
import scipy.sparse as sp
import torch

from . import __version__, objectives
from ._chunking import auto_chunk, row_chunks
from ._context import evaluating, localize, pyro_context
from .data import CountData, as_counts, as_mask, library_size, matrix_of
from .fit import FitHistory, run_svi
from .guide import VAEGuide
from .model import VAEModel
from .priors import Gamma, PointMass, UPrior, ZeroInflatedGamma, make_prior

__all__ = ["VAE", "PVAE", "NBVAE", "ZINBVAE", "NotFittedError"]


class NotFittedError(RuntimeError, AttributeError):
    """The estimator was used before :meth:`VAE.fit`."""


def _resolve_device(device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' requested but no CUDA device is available")
    return device


class VAE:
    r"""Variational autoencoder for counts with a pluggable prior on the random effect :math:`u`.

    Model (see :mod:`pyrovae.model`): :math:`x_{ij} \sim \operatorname{Poisson}(s_i \mu(z_i)_j
    u_{ij})`, :math:`u_{ij} \sim p(u)`, :math:`z_i \sim \mathcal N(0, I_K)`, with :math:`u`
    integrated out by the prior's marginal.

    :param input_dim: number of genes; ``None`` = taken from the data in ``fit``.
    :param int latent_dim: :math:`K \ge 1`.
    :param prior: a :class:`~pyrovae.priors.UPrior` instance (copied in ``fit``) or a name:
        ``"poisson"``, ``"gamma"``/``"nb"``, ``"zig"``/``"zinb"``.
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

    # -- construction ----------------------------------------------------------------------
    def _check_settings(self):
        if not (_is_int(self.latent_dim) and self.latent_dim >= 1):
            raise ValueError(f"latent_dim must be an int >= 1, got {self.latent_dim!r}")
        if self.input_dim is not None and not (_is_int(self.input_dim) and self.input_dim >= 1):
            raise ValueError(f"input_dim must be None or an int >= 1, got {self.input_dim!r}")
        hidden = tuple(self.hidden)
        if not all(_is_int(h) and h >= 1 for h in hidden):
            raise ValueError(f"hidden must be positive ints, got {self.hidden!r}")
        if self.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {self.dtype}")
        if not isinstance(self.prior, (str, UPrior)):
            raise TypeError(f"prior must be a name or a UPrior, got {type(self.prior).__name__}")

    def _make_prior(self, n_genes: int) -> UPrior:
        if isinstance(self.prior, UPrior):
            prior = localize(copy.deepcopy(self.prior))
            n = getattr(prior, "n_genes", None)
            if n is not None and n != n_genes:
                raise ValueError(f"the prior was built for {n} genes but x has {n_genes}")
            return prior
        return make_prior(self.prior, n_genes if self.prior_by_gene else None)

    def _build(self, n_genes: int):
        hidden = tuple(self.hidden)
        device = _resolve_device(self.device)
        with pyro_context():
            prior = self._make_prior(n_genes)
            model = VAEModel(n_genes, self.latent_dim, prior, hidden).to(device, self.dtype)
            guide = VAEGuide(n_genes, self.latent_dim, hidden).to(device, self.dtype)
        return model, guide

    # -- data ------------------------------------------------------------------------------
    def _data(
        self,
        x,
        w,
        size_factor,
        allow_noninteger=False,
        fitting=False,
        layer=None,
        with_size_factor=True,
    ) -> CountData:
        x = matrix_of(x, layer)
        if not fitting:
            self._check_fitted()
            # a model fitted with allow_noninteger=True accepts (and warns about) them here too
            allow_noninteger = self.fit_settings_.get("allow_noninteger", False)
        w_np = as_mask(w, _shape(x))
        x = as_counts(x, allow_noninteger=allow_noninteger, missing=None if w_np is None else ~w_np)
        if fitting:
            if self.input_dim is not None and x.shape[1] != self.input_dim:
                raise ValueError(f"x has {x.shape[1]} genes but input_dim is {self.input_dim}")
            if w_np is not None:
                if not w_np.any(axis=1).all():
                    bad = np.flatnonzero(~w_np.any(axis=1))
                    raise ValueError(f"w masks every entry of cell(s) {bad[:10].tolist()}")
                if not w_np.any(axis=0).all():
                    bad = np.flatnonzero(~w_np.any(axis=0))
                    raise ValueError(f"w masks every entry of gene(s) {bad[:10].tolist()}")
        else:
            self._check_fitted()
            if x.shape[1] != self.n_features_in_:
                raise ValueError(
                    f"x has {x.shape[1]} genes but the model was fitted on {self.n_features_in_}"
                )
        if not with_size_factor:  # the encoder does not use size factors
            return CountData(x, w_np)
        return CountData(x, w_np, self._size_factor(x, w_np, size_factor, fitting))

    def _size_factor(self, x, w, size_factor, fitting):
        if isinstance(size_factor, str):
            if size_factor != "library":
                raise ValueError(
                    f"size_factor must be None, 'library' or an array, got {size_factor!r}"
                )
            total = library_size(x, w)
            if np.any(total <= 0):
                bad = np.flatnonzero(total <= 0)
                raise ValueError(
                    f"size_factor='library' needs counts in every cell; cell(s) {bad[:10].tolist()} "
                    "have none"
                )
            if fitting:
                self.size_factor_mode_ = "library"
                self.library_median_ = float(np.median(total))
            return total / self.library_median_
        if size_factor is None:
            if fitting:
                self.size_factor_mode_ = None
                return None
            if self.size_factor_mode_ == "library":
                return self._size_factor(x, w, "library", False)
            if self.size_factor_mode_ == "given":
                raise ValueError("this model was fitted with size factors: pass size_factor")
            return None
        s = np.asarray(
            size_factor.detach().cpu() if torch.is_tensor(size_factor) else size_factor,
            dtype=np.float64,
        )
        if s.shape != (x.shape[0],):
            raise ValueError(f"size_factor must have shape ({x.shape[0]},), got {s.shape}")
        if not np.all(np.isfinite(s) & (s > 0)):
            raise ValueError("size_factor must be positive and finite")
        if fitting:
            self.size_factor_mode_ = "given"
        return s

    # -- fitting ---------------------------------------------------------------------------
    def fit(
        self,
        x,
        w=None,
        size_factor=None,
        *,
        lr: float = 1e-2,
        max_epochs: int = 3000,
        n_samples: int = 1,
        objective: str = "elbo",
        batch_size: int | None = None,
        optimizer: str = "adam",
        validation_fraction: float = 0.0,
        validation_by: str = "cells",
        patience: int | None = None,
        kl_warmup: int = 0,
        seed: int | None = 0,
        trace: bool = True,
        verbose: bool = False,
        allow_noninteger: bool = False,
        layer: str | None = None,
    ) -> VAE:
        """Fit by SVI and return ``self``.

        :param x: counts, cells × genes (numpy, torch, scipy.sparse or AnnData).
        :param w: observed-entry mask (``True``/1 = observed) or ``None``.
        :param size_factor: ``None`` (:math:`s_i = 1`), ``"library"`` (total observed counts /
            their median) or an array of positive per-cell factors.
        :param lr: learning rate.
        :param max_epochs: passes over the data.
        :param n_samples: particles per cell for the objective.
        :param objective: ``"elbo"`` (analytic KL), ``"elbo_mc"`` or ``"iwae"``.
        :param batch_size: cells per step (``None`` = full batch).
        :param optimizer: ``"adam"`` or ``"rmsprop"``.
        :param validation_fraction: fraction held out to monitor (and, with ``patience``,
            early-stop on) a validation loss: of the cells, or of the observed entries.
        :param validation_by: ``"cells"`` — held-out cells, scored by the objective (the
            negative bound of those cells); ``"entries"`` — held-out observed entries of every
            cell, masked during training and scored by their posterior predictive
            (:func:`pyrovae.objectives.heldout_entries_loss`). Held-out cells or entries never
            take part in a gradient step.
        :param patience: epochs without validation improvement before stopping; the best
            parameters are restored.
        :param kl_warmup: epochs over which the KL term's weight rises linearly to 1 (ELBO
            warm-up against posterior collapse; see :func:`pyrovae.fit.run_svi`).
        :param seed: seeds parameter initialization, particles and shuffling; ``None`` = leave
            the global RNG alone.
        :param trace: kept for compatibility; the per-epoch loss is always recorded in ``trace_``.
        :param verbose: show a progress bar.
        :param allow_noninteger: accept non-integer counts (with a warning); the fitted model
            then accepts them in ``denoise``, ``predict``, ``latent`` and ``log_likelihood`` too.
        :param layer: for AnnData input, the layer holding counts (default ``layers['counts']``
            when present, else ``X``).
        :raises pyrovae.fit.FitDivergedError: NaN/inf loss; the model keeps the last finite
            parameters and the trace so far.
        """
        self._check_settings()
        if not 0.0 <= validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}")
        data = self._data(
            x, w, size_factor, allow_noninteger=allow_noninteger, fitting=True, layer=layer
        )
        if seed is not None:
            pyro.set_rng_seed(seed)
        generator = torch.Generator().manual_seed(
            seed if seed is not None else int(torch.randint(2**31, ()))
        )
        if batch_size is None and sp.issparse(data.x) and data.n_cells * data.n_genes > 2**27:
            raise ValueError(
                f"a full-batch fit would densify the whole {data.n_cells}×{data.n_genes} sparse "
                "matrix; pass batch_size (e.g. 256)"
            )
        validation_loss = None
        if validation_fraction > 0:
            data, validation_loss = self._split_validation(
                data, validation_fraction, validation_by, objective, n_samples, generator
            )
        self.n_features_in_ = data.n_genes
        self.layer_ = layer
        self.model_, self.guide_ = self._build(data.n_genes)
        self.history_ = FitHistory()
        self.fit_settings_ = dict(
            lr=lr,
            max_epochs=max_epochs,
            n_samples=n_samples,
            objective=objective,
            batch_size=batch_size,
            optimizer=optimizer,
            validation_fraction=validation_fraction,
            validation_by=validation_by,
            patience=patience,
            kl_warmup=kl_warmup,
            seed=seed,
            allow_noninteger=allow_noninteger,
        )
        try:
            run_svi(
                self.model_,
                self.guide_,
                data,
                objective=objective,
                n_samples=n_samples,
                lr=lr,
                max_epochs=max_epochs,
                batch_size=batch_size,
                optimizer=optimizer,
                validation_loss=validation_loss,
                patience=patience,
                kl_warmup=kl_warmup,
                generator=generator,
                dtype=self.dtype,
                device=_resolve_device(self.device),
                verbose=verbose,
                history=self.history_,
            )
        finally:
            self.trace_ = np.asarray(self.history_.loss)
        return self

    def _split_validation(self, data, fraction, by, objective, n_samples, generator):
        """Hold out cells or observed entries; return the training data and a loss closure.

        The closure walks the held-out data in chunks of cells (sparse input is densified a
        chunk at a time; small data sets are densified once and kept).
        """
        if by == "cells":
            n_val = max(1, int(round(fraction * data.n_cells)))
            if n_val >= data.n_cells:
                raise ValueError("validation_fraction leaves no training cells")
            perm = torch.randperm(data.n_cells, generator=generator).numpy()
            self.validation_cells_ = np.sort(perm[:n_val])
            held = data.subset(self.validation_cells_)
            data = data.subset(np.sort(perm[n_val:]))
            elbo = objectives.make_elbo(objective, n_samples)
            chunks = self._validation_chunks(held, n_samples, lambda idx: ())

            def loss():
                return sum(
                    objectives.loss(elbo, self.model_, self.guide_, xb, wb, sb)
                    for _, xb, wb, sb in chunks()
                )

            return data, loss
        if by == "entries":
            w = np.ones(data.x.shape, bool) if data.w is None else data.w
            u = torch.rand(w.shape, generator=generator, dtype=torch.float64).numpy()
            held = w & (u < fraction)
            train = w & ~held
            if not (train.any(axis=1).all() and train.any(axis=0).all()):
                raise ValueError(
                    "validation_fraction hides every observed entry of some cell or gene; "
                    "use a smaller fraction"
                )
            self.validation_mask_ = held
            device = _resolve_device(self.device)
            masks = lambda idx: tuple(  # noqa: E731
                torch.as_tensor(a[idx], device=device) for a in (train, held)
            )
            eps = self._eps(max(n_samples, 10), 12345)
            chunks = self._validation_chunks(CountData(data.x, w, data.size_factor), 10, masks)

            def loss():
                return sum(
                    objectives.heldout_entries_loss(
                        self.model_, self.guide_, xb, w_train, w_held, sb, eps
                    )
                    for _, xb, _, sb, w_train, w_held in chunks()
                )

            return CountData(data.x, train, data.size_factor), loss
        raise ValueError(f"validation_by must be 'cells' or 'entries', got {by!r}")

    def _validation_chunks(self, data, n_samples, extra):
        """A callable yielding ``(rows, x, w, s, *extra(rows))`` chunks of ``data``; kept in
        memory when the whole data set fits in one chunk's budget."""

        def chunks():
            for idx, xb, wb, sb in self._chunks(data, n_samples, with_rows=True):
                yield (idx, xb, wb, sb, *extra(idx))

        if data.n_cells <= auto_chunk(data.n_genes, n_samples):
            cached = list(chunks())
            return lambda: iter(cached)
        return chunks

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

    def _check_fitted(self):
        if not hasattr(self, "model_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit first")

    # -- evaluation ------------------------------------------------------------------------
    def _eps(self, n_samples, seed):
        if not (isinstance(n_samples, int) and n_samples >= 1):
            raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
        g = torch.Generator().manual_seed(seed)
        eps = torch.randn(n_samples, self.latent_dim, generator=g, dtype=self.dtype)
        return eps.to(_resolve_device(self.device)).unsqueeze(-2)  # (S, 1, K)

    def _chunks(self, data: CountData, n_samples: int = 1, with_rows: bool = False):
        """Dense batches of at most :func:`auto_chunk` cells (a memory budget for the
        ``(particles, cells, genes)`` tensors); sparse input is densified one chunk at a time."""
        device = _resolve_device(self.device)
        for rows in row_chunks(data.n_cells, auto_chunk(data.n_genes, n_samples)):
            idx = np.arange(rows.start, rows.stop)
            batch = data.batch(idx, self.dtype, device)
            yield (idx, *batch) if with_rows else batch

    @evaluating
    def latent(self, x, w=None) -> np.ndarray:
        """:math:`E_q[z]` — the encoder mean — for each cell, shape ``(cells, K)``."""
        self._check_fitted()
        data = self._data(x, w, None, with_size_factor=False)
        out = [self.guide_.encoder(xb, wb)[0] for xb, wb, _ in self._chunks(data)]
        return torch.cat(out).cpu().numpy()

    @evaluating
    def predict(self, x, w=None, size_factor=None, n_samples: int | None = None, seed: int = 0):
        """Decoder mean: :math:`s\\,\\mu(E_q z)`, or with ``n_samples`` the Monte Carlo mean
        :math:`s\\,E_q[\\mu(z)]` (:math:`s = 1` without size factors). This is the rate *before*
        the random effect :math:`u`; for :math:`E[\\lambda \\mid x]` use :meth:`denoise`."""
        data = self._data(x, w, size_factor)
        eps = None if n_samples is None else self._eps(n_samples, seed)
        out = []
        for xb, wb, sb in self._chunks(data, n_samples or 1):
            loc, scale = self.guide_.encoder(xb, wb)
            if eps is None:
                out.append(self.model_.rate(loc, sb))
            else:
                out.append(self.model_.rate(loc + scale * eps, sb).mean(0))
        return torch.cat(out).cpu().numpy()

    @evaluating
    def denoise(self, x, w=None, size_factor=None, n_samples: int = 100, seed: int = 0):
        """Posterior mean :math:`E[\\lambda_{ij} \\mid x_i] \\approx E_q[r_{ij}\\, E[u_{ij} \\mid
        x_{ij}, r_{ij}]]`, with :math:`r = s\\,\\mu(z)` and ``n_samples`` draws from
        :math:`q(z \\mid x)`. Missing entries (``w == 0``) use the prior mean :math:`E[u]`."""
        data = self._data(x, w, size_factor)
        eps = self._eps(n_samples, seed)
        prior = self.model_.prior
        out = []
        for xb, wb, sb in self._chunks(data, n_samples):
            loc, scale = self.guide_.encoder(xb, wb)
            rate = self.model_.rate(loc + scale * eps, sb)
            eu = prior.posterior_mean(xb, rate)
            if wb is not None:
                eu = torch.where(wb, eu, prior.mean().to(rate).expand_as(eu))
            out.append((rate * eu).mean(0))
        return torch.cat(out).cpu().numpy()

    @evaluating
    def predictive_log_prob(
        self, x, w=None, size_factor=None, n_samples: int = 100, seed: int = 0
    ) -> np.ndarray:
        r"""Per-entry posterior-predictive log pmf :math:`\log E_q[p(x_{ij} \mid z_i)]`, where
        :math:`q` sees only the entries with ``w == 1``.

        Sum it over the entries with ``w == 0`` for a proper held-out (imputation) score: the
        model's own predictive distribution (NB, ZINB, ... as the prior implies), which the
        encoder never saw. ``x`` must hold the true counts at every entry to be scored.
        """
        data = self._data(x, None, size_factor)
        w_np = as_mask(w, data.x.shape)
        eps = self._eps(n_samples, seed)
        out = []
        for idx, xb, _, sb in self._chunks(data, n_samples, with_rows=True):
            wb = None if w_np is None else torch.as_tensor(w_np[idx], device=eps.device)
            out.append(objectives.predictive_log_prob(self.model_, self.guide_, xb, wb, sb, eps))
        return torch.cat(out).cpu().numpy()

    @evaluating
    def log_likelihood(self, x, w=None, size_factor=None, n_samples: int = 1000, seed: int = 0):
        """Per-cell importance-sampled estimate of :math:`\\log p(x_{i,\\text{obs}})`:
        :math:`\\log \\frac1S \\sum_s p(x_i, z_{is}) / q(z_{is} \\mid x_i)` with ``n_samples``
        draws (a lower bound in expectation that tightens as ``n_samples`` grows)."""
        data = self._data(x, w, size_factor)
        eps = self._eps(n_samples, seed)
        prior = self.model_.prior
        out = []
        for xb, wb, sb in self._chunks(data, n_samples):
            loc, scale = self.guide_.encoder(xb, wb)
            z = loc + scale * eps
            lp = prior.marginal(self.model_.rate(z, sb)).log_prob(xb)
            if wb is not None:
                lp = torch.where(wb, lp, torch.zeros_like(lp))
            log_w = (
                lp.sum(-1)
                + dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
                - dist.Normal(loc, scale).log_prob(z).sum(-1)
            )
            out.append(torch.logsumexp(log_w, 0) - math.log(n_samples))
        return torch.cat(out).cpu().numpy()

    # -- persistence -----------------------------------------------------------------------
    def get_params(self) -> dict:
        """The constructor arguments (scikit-learn style)."""
        import inspect

        names = inspect.signature(type(self).__init__).parameters
        return {k: getattr(self, k) for k in names if k != "self"}

    def save(self, path) -> None:
        """Write the fitted model (settings, parameters, prior, trace, package version)."""
        self._check_fitted()
        try:  # fail before touching ``path`` when the prior cannot be written
            pickle.dumps(self.model_.prior)
        except (pickle.PicklingError, AttributeError, TypeError) as err:
            raise TypeError(
                f"cannot save: the prior {type(self.model_.prior).__qualname__} cannot be pickled "
                f"({err}). Define prior classes at module level in an importable module and "
                "keep no lambdas, local functions or open handles on them."
            ) from err
        payload = {
            "format": 1,
            "pyrovae_version": __version__,
            "class": type(self).__name__,
            "params": self.get_params(),
            "n_features_in_": self.n_features_in_,
            "prior": self.model_.prior,
            "model_state": self.model_.state_dict(),
            "guide_state": self.guide_.state_dict(),
            "trace_": self.trace_,
            "history_": self.history_,
            "size_factor_mode_": self.size_factor_mode_,
            "library_median_": getattr(self, "library_median_", None),
            "fit_settings_": self.fit_settings_,
            "layer_": getattr(self, "layer_", None),
            "validation_cells_": getattr(self, "validation_cells_", None),
            "validation_mask_": getattr(self, "validation_mask_", None),
        }
        torch.save(payload, path)

    @classmethod
    def load(cls, path, device: str | None = None) -> VAE:
        """Load a model written by :meth:`save` (a pickle: only load files you trust).

        :param device: where to put the model (default: the device it was fitted with; a model
            fitted on ``"cuda"`` loads on a CPU-only machine with ``device="cpu"``).
        """
        try:
            payload = torch.load(path, map_location="cpu", weights_only=False)
        except (AttributeError, ImportError) as err:
            raise ValueError(
                f"cannot load {path}: it refers to a class that cannot be imported here ({err}); "
                "a prior class defined in a script's __main__ or in a notebook must be importable "
                "(define it in a module) to load the model in another process"
            ) from err
        if not isinstance(payload, dict) or payload.get("format") != 1:
            raise ValueError(f"{path} is not a pyrovae model file of a known format")
        major = payload["pyrovae_version"].split(".")[:2]
        if major != __version__.split(".")[:2]:
            raise ValueError(
                f"{path} was written by pyrovae {payload['pyrovae_version']}, which is not "
                f"compatible with this pyrovae {__version__}"
            )
        klass = _ESTIMATORS[payload["class"]]
        if not issubclass(klass, cls):
            raise ValueError(f"{path} holds a {payload['class']}, not a {cls.__name__}")
        params = dict(payload["params"])
        if device is not None:
            params["device"] = device
        est = klass(**params)
        est.n_features_in_ = payload["n_features_in_"]
        device = _resolve_device(est.device)
        hidden = tuple(est.hidden)
        with pyro_context():
            prior = localize(payload["prior"])
            est.model_ = VAEModel(est.n_features_in_, est.latent_dim, prior, hidden)
            est.guide_ = VAEGuide(est.n_features_in_, est.latent_dim, hidden)
        # cast first: loading float64 values into the float32 modules would round them
        est.model_.to(device, est.dtype)
        est.guide_.to(device, est.dtype)
        est.model_.load_state_dict(payload["model_state"])
        est.guide_.load_state_dict(payload["guide_state"])
        est.trace_ = payload["trace_"]
        est.history_ = payload["history_"]
        est.size_factor_mode_ = payload["size_factor_mode_"]
        if payload["library_median_"] is not None:
            est.library_median_ = payload["library_median_"]
        est.fit_settings_ = payload["fit_settings_"]
        for name in ("layer_", "validation_cells_", "validation_mask_"):
            if payload.get(name) is not None or name == "layer_":
                setattr(est, name, payload.get(name))
        return est


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _shape(x) -> tuple[int, ...]:
    shape = getattr(x, "shape", None)
    if shape is None:
        shape = np.shape(x)
    return tuple(shape)


class PVAE(VAE):
    """Poisson VAE (:math:`u = 1`), the reference's ``PVAE(input_dim, latent_dim)``."""

    def __init__(
        self, input_dim=None, latent_dim=10, hidden=(128, 128), device="cpu", dtype=torch.float32
    ):
        super().__init__(input_dim, latent_dim, "poisson", False, hidden, device, dtype)

    def _make_prior(self, n_genes):
        return PointMass()


class NBVAE(VAE):
    """Negative binomial VAE (:math:`u \\sim \\operatorname{Gamma}(\\theta, \\theta)`).

    :param bool disp_by_gene: one inverse dispersion per gene (else one shared).
    """

    def __init__(
        self,
        input_dim=None,
        latent_dim=10,
        disp_by_gene=False,
        hidden=(128, 128),
        device="cpu",
        dtype=torch.float32,
    ):
        super().__init__(input_dim, latent_dim, "gamma", disp_by_gene, hidden, device, dtype)
        self.disp_by_gene = disp_by_gene

    def _make_prior(self, n_genes):
        return Gamma(n_genes=n_genes if self.disp_by_gene else None)


class ZINBVAE(VAE):
    """Zero-inflated negative binomial VAE (:math:`u` zero-inflated Gamma).

    :param bool disp_by_gene: one inverse dispersion per gene.
    :param bool logodds_by_gene: one zero-inflation log-odds per gene.
    """

    def __init__(
        self,
        input_dim=None,
        latent_dim=10,
        disp_by_gene=False,
        logodds_by_gene=False,
        hidden=(128, 128),
        device="cpu",
        dtype=torch.float32,
    ):
        super().__init__(input_dim, latent_dim, "zinb", disp_by_gene, hidden, device, dtype)
        self.disp_by_gene = disp_by_gene
        self.logodds_by_gene = logodds_by_gene

    def _make_prior(self, n_genes):
        by_gene = self.disp_by_gene or self.logodds_by_gene
        return ZeroInflatedGamma(
            n_genes=n_genes if by_gene else None,
            disp_by_gene=self.disp_by_gene,
            logodds_by_gene=self.logodds_by_gene,
        )


_ESTIMATORS = {c.__name__: c for c in (VAE, PVAE, NBVAE, ZINBVAE)}
