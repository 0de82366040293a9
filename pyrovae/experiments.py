r"""Settings, reference numbers and scores for the reference note's two simulations.

One place for everything the experiment notebooks (``notebooks/02_poisson_thinning.ipynb``,
``03_imputation.ipynb``, ``04_custom_prior.ipynb``) and ``benchmarks/seed_experiments.py`` share,
so a change of settings reaches all of them.

**Settings.** :data:`REFERENCE` is the note's protocol (3000 full-batch epochs, no validation);
:data:`RECOMMENDED` adds early stopping on 10% held-out observed entries and a KL warm-up.
:func:`settings` returns a copy, cut down when the environment variable ``PYROVAE_SMOKE=1`` is
set (smoke mode: the notebooks then run in well under a minute and write nothing into the
repository).

**Scores** (all log-probabilities in nats; higher is better):

* :func:`thinning_scores` — the *right* protocol (fit on ``x``, :math:`\hat\lambda =`
  ``denoise(x)``, mean Poisson log pmf of the independent draw ``x_val``) and the note's
  *leaking* one (:math:`\hat\lambda =` ``denoise(x_val)``, estimated from the very data it is
  scored on).
* :func:`imputation_scores` — Poisson log pmf summed over the *held-out* entries (``w == 0``) for
  ``predict(w * x)``, ``predict(w * x, n_samples=100)`` and ``denoise(x, w)``; the model's own
  predictive log pmf of those entries (a proper scoring rule); and the note's observed-entry
  sums (``w == 1``: reconstruction, not imputation).
* :func:`thinning_limits`, :func:`imputation_limits` — oracle and naive rows computed from the
  simulation's truth; :func:`masked_mf_sweep`, :func:`nmf_thinning_score` — the NMF/NBMF baselines.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from .baselines import nbmf, nmf
from .fit import FitDivergedError
from .metrics import (
    imputation_score,
    nb_imputation_score,
    poisson_heldout_mean,
    reconstruction_score,
)
from .simulate import Simulation, bayes_posterior_mean_lambda

__all__ = [
    "REFERENCE",
    "RECOMMENDED",
    "SMOKE_CAPS",
    "NOTE_THINNING",
    "REFERENCE_CODE_THINNING",
    "NOTE_IMPUTATION",
    "REFERENCE_CODE_IMPUTATION",
    "smoke",
    "settings",
    "nmf_ranks",
    "nmf_max_iters",
    "results_dir",
    "label",
    "fit_model",
    "thinning_scores",
    "thinning_limits",
    "nmf_thinning_score",
    "imputation_scores",
    "imputation_limits",
    "masked_mf_sweep",
    "THIN_HELDOUT",
    "THIN_LEAKING",
    "HELDOUT_PREDICT",
    "HELDOUT_PREDICT100",
    "HELDOUT_DENOISE",
    "HELDOUT_PREDICTIVE",
    "OBSERVED_PREDICT",
    "OBSERVED_PREDICT100",
]

#: The note's protocol: ``fit(x, lr=1e-2, n_samples=10, max_epochs=3000)``, full batch.
REFERENCE = dict(lr=1e-2, n_samples=10, max_epochs=3000)

#: The note's protocol plus early stopping on 10% held-out observed entries (patience 100
#: epochs, best parameters restored) and a linear KL warm-up over the first 100 epochs.
RECOMMENDED = dict(
    lr=1e-2,
    n_samples=10,
    max_epochs=3000,
    validation_fraction=0.1,
    validation_by="entries",
    patience=100,
    kl_warmup=100,
)

#: Upper bounds applied by :func:`settings` in smoke mode (only to the keys a setting has,
#: except ``max_epochs`` and ``n_samples``, which every fit has).
SMOKE_CAPS = dict(max_epochs=10, n_samples=2, patience=5, kl_warmup=2)

#: The note's published thinning scores (mean log pmf of ``x_val`` under ``denoise(x_val)``:
#: the leaking protocol; the NMF row is fitted on ``x`` and so is not leaking).
NOTE_THINNING = {
    "PVAE-3": -5.047,
    "PVAE-10": -4.236,
    "NBVAE-3": -5.540,
    "NBVAE-10": -5.610,
    "ZINBVAE-3": -9.575,
    "ZINBVAE-10": -9.708,
    "NMF rank 27": -5.082,
}

#: The reference code rerun with the note's calls, scored by the right protocol (issue 4).
REFERENCE_CODE_THINNING = {
    "PVAE-3": -4.588,
    "PVAE-10": -3.449,
    "NBVAE-3": -1.099,
    "NBVAE-10": -1.190,
    "ZINBVAE-3": -1.901,
    "ZINBVAE-10": -1.911,
    "NMF rank 27": -5.046,
}

#: The note's published imputation "scores": Poisson log pmf summed over the *observed* entries
#: (reconstruction), for ``predict(w * x)`` and ``predict(w * x, n_samples=100)``.
NOTE_IMPUTATION = {
    "PVAE": {"predict": -167_575, "predict100": -167_490},
    "NBVAE": {"predict": -231_875, "predict100": -233_566},
    "ZINBVAE": {"predict": -321_748, "predict100": -322_617},
}

#: The reference code rerun with the note's calls, ``predict(w * x)`` scored on the held-out
#: entries (issue 4).
REFERENCE_CODE_IMPUTATION = {"PVAE": -41_305, "NBVAE": -35_593, "ZINBVAE": -36_960}

#: Keys of :func:`imputation_scores` (and column names of the notebooks' tables).
HELDOUT_PREDICT = "held out: predict(w*x)"
HELDOUT_PREDICT100 = "held out: predict(w*x, n_samples=100)"
HELDOUT_DENOISE = "held out: denoise(x, w)"
HELDOUT_PREDICTIVE = "held out: own predictive log pmf"
OBSERVED_PREDICT = "observed (note's score): predict(w*x)"
OBSERVED_PREDICT100 = "observed (note's score): predict(w*x, n_samples=100)"
#: Keys of :func:`thinning_scores`.
THIN_HELDOUT = "held out: denoise(x) vs x_val"
THIN_LEAKING = "note's protocol (leaking): denoise(x_val) vs x_val"


def smoke() -> bool:
    """Whether smoke mode is on (environment variable ``PYROVAE_SMOKE=1``)."""
    return os.environ.get("PYROVAE_SMOKE") == "1"


def settings(base: dict, **overrides) -> dict:
    """A copy of ``base`` (e.g. :data:`RECOMMENDED`) updated with ``overrides``; in smoke mode
    every key in :data:`SMOKE_CAPS` that the result has (and always ``max_epochs`` and
    ``n_samples``) is capped at its smoke value."""
    out = {**base, **overrides}
    if smoke():
        for key, cap in SMOKE_CAPS.items():
            if key in out or key in ("max_epochs", "n_samples"):
                out[key] = min(out.get(key, cap), cap)
    return out


def nmf_ranks() -> list[int]:
    """Ranks of the NMF/NBMF sweep: 1..30 (smoke: 1..3)."""
    return list(range(1, 4 if smoke() else 31))


def nmf_max_iters() -> int:
    """Iteration cap of the NMF/NBMF baselines: the package default 10,000 (smoke: 100)."""
    return 100 if smoke() else 10_000


def results_dir(default: str | Path) -> Path | None:
    """Where the notebooks write their CSVs and figures.

    ``$PYROVAE_RESULTS`` when set (``benchmarks/seed_experiments.py --smoke`` points it at a
    temporary folder); otherwise ``None`` (write nothing) in smoke mode, else ``default``
    (the notebooks pass ``../benchmarks/results``), created if missing.
    """
    env = os.environ.get("PYROVAE_RESULTS")
    if env:
        path = Path(env)
    elif smoke():
        return None
    else:
        path = Path(default)
    path.mkdir(parents=True, exist_ok=True)
    return path


def label(model) -> str:
    """``"NBVAE-3"``: class name and latent dimension, as in the note's tables."""
    return f"{type(model).__name__}-{model.latent_dim}"


def fit_model(model, x, w=None, **kwargs):
    """``model.fit(x, w, **kwargs)`` that survives a divergence.

    A fit whose loss or a gradient turns non-finite raises
    :class:`~pyrovae.fit.FitDivergedError` after restoring the last finite parameters; here the
    model is kept as it is then and the epoch is returned, so an experiment can score it and
    report the divergence instead of stopping.

    :return: ``(model, epoch)``: the (fitted) model and the epoch in which the fit diverged, or
        ``None`` if it did not.
    """
    try:
        model.fit(x, w, **kwargs)
    except FitDivergedError as err:
        return model, err.epoch
    return model, None


# ------------------------------------------------------------------------------------------
# Poisson thinning
# ------------------------------------------------------------------------------------------


def thinning_scores(model, sim: Simulation, n_samples: int = 100) -> dict[str, float]:
    r"""Mean held-out Poisson log pmf of ``sim.x_val`` for a model fitted on ``sim.x``.

    * :data:`THIN_HELDOUT` — :math:`\hat\lambda =` ``denoise(x)`` :math:`= E[\lambda \mid x]`;
      ``x_val`` is an independent draw from the same :math:`\lambda`, so this is a fair score.
    * :data:`THIN_LEAKING` — the note's ``denoise(x_val)``: :math:`\hat\lambda` computed from
      ``x_val`` itself, so the posterior mean of :math:`u` copies the data being scored.

    :param n_samples: draws from :math:`q(z \mid x)` for ``denoise``.
    """
    return {
        THIN_HELDOUT: poisson_heldout_mean(model.denoise(sim.x, n_samples=n_samples), sim.x_val),
        THIN_LEAKING: poisson_heldout_mean(
            model.denoise(sim.x_val, n_samples=n_samples), sim.x_val
        ),
    }


def thinning_limits(sim: Simulation) -> dict[str, float]:
    r"""Oracle rows for the thinning table: ``x_val`` scored under the true :math:`\lambda` (not
    attainable from ``x``) and under the Bayes posterior mean :math:`E[\lambda \mid x]` with the
    true :math:`\mu` and prior (:func:`~pyrovae.simulate.bayes_posterior_mean_lambda`), the best
    expected score of any estimate computed from ``x``."""
    bayes = bayes_posterior_mean_lambda(sim.x, sim.mu, sim.inv_disp)
    return {
        "true λ (oracle)": poisson_heldout_mean(sim.lam, sim.x_val),
        "Bayes limit: E[λ | x] with true μ, θ": poisson_heldout_mean(bayes, sim.x_val),
    }


def nmf_thinning_score(sim: Simulation, rank: int = 27, max_iters: int | None = None) -> float:
    """Poisson NMF of the given rank fitted on ``sim.x``, its means scored on ``sim.x_val``
    (what the note did for NMF; not leaking)."""
    left, right, _ = nmf(sim.x, rank=rank, max_iters=max_iters or nmf_max_iters())
    return poisson_heldout_mean(left @ right.T, sim.x_val)


# ------------------------------------------------------------------------------------------
# imputation
# ------------------------------------------------------------------------------------------


def imputation_scores(model, sim: Simulation, n_samples: int = 100) -> dict[str, float]:
    r"""Imputation scores of a model fitted with ``w=sim.w``.

    Poisson log pmf of ``sim.x`` summed over the held-out entries (``w == 0``) for three point
    estimates: ``predict(w * x)`` (:math:`\mu(E_q z)`; the encoder sees the observed entries
    only, missing ones as 0, exactly as with ``predict(x, w)``), ``predict(w * x,
    n_samples=100)`` (:math:`E_q \mu(z)`) and ``denoise(x, w)`` (:math:`E[\lambda \mid
    x_\text{obs}]`, which for a held-out entry is :math:`E_q[\mu(z)] E[u]`); the model's own
    posterior-predictive log pmf of the held-out entries (NB, ZINB, … as the prior implies:
    ``predictive_log_prob(x, w)[~w].sum()``); and the note's sums over the *observed* entries
    for the two ``predict`` estimates (reconstruction of fitted data, not imputation).
    """
    x, w = sim.x, sim.w
    wx = w * x
    pred = model.predict(wx)
    pred100 = model.predict(wx, n_samples=100)
    return {
        HELDOUT_PREDICT: imputation_score(pred, x, w),
        HELDOUT_PREDICT100: imputation_score(pred100, x, w),
        HELDOUT_DENOISE: imputation_score(model.denoise(x, w, n_samples=n_samples), x, w),
        HELDOUT_PREDICTIVE: float(model.predictive_log_prob(x, w=w)[~w].sum()),
        OBSERVED_PREDICT: reconstruction_score(pred, x, w),
        OBSERVED_PREDICT100: reconstruction_score(pred100, x, w),
    }


def imputation_limits(sim: Simulation) -> dict[str, dict[str, float]]:
    r"""Oracle and naive rows for the imputation table, each ``{"held out": …, "observed": …}``
    (Poisson log pmf sums over ``w == 0`` and ``w == 1``):

    * the true :math:`\mu` (the best a point estimate can do on a held-out entry, whose
      :math:`u` is unknowable), and the true-:math:`\mu` negative-binomial predictive with the
      true inverse dispersion (the best predictive distribution);
    * the true :math:`\lambda = \mu u` (not attainable: it knows :math:`u`);
    * the per-gene mean of the observed entries (the naive baseline).
    """
    x, w = sim.x, sim.w
    gene_mean = np.broadcast_to((x * w).sum(0) / w.sum(0), x.shape)
    return {
        "true μ (Poisson)": {
            "held out": imputation_score(sim.mu, x, w),
            "observed": reconstruction_score(sim.mu, x, w),
        },
        "true μ, NB predictive (true θ)": {
            "held out": nb_imputation_score(sim.mu, sim.inv_disp, x, w),
            "observed": nb_imputation_score(sim.mu, sim.inv_disp, x, ~w),
        },
        "true λ (Poisson, oracle)": {
            "held out": imputation_score(sim.lam, x, w),
            "observed": reconstruction_score(sim.lam, x, w),
        },
        "per-gene mean of observed entries": {
            "held out": imputation_score(gene_mean, x, w),
            "observed": reconstruction_score(gene_mean, x, w),
        },
    }


def masked_mf_sweep(
    sim: Simulation, ranks: Iterable[int] | None = None, max_iters: int | None = None
) -> pd.DataFrame:
    """Masked Poisson NMF and NB matrix factorisation (learned inverse dispersion, started at
    0.1 as in the note) fitted on the observed entries for each rank; the Poisson log pmf of
    their means summed over the held-out entries and, as the note did, over the observed ones.

    :return: a frame indexed by rank with columns ``NMF held out``, ``NBMF held out``,
        ``NMF observed (note's score)``, ``NBMF observed (note's score)``.
    """
    ranks = nmf_ranks() if ranks is None else list(ranks)
    max_iters = max_iters or nmf_max_iters()
    rows = {}
    for rank in ranks:
        row = {}
        for name, fit in (("NMF", nmf), ("NBMF", nbmf)):
            kwargs = dict(inv_disp=0.1, fix_inv_disp=False) if fit is nbmf else {}
            left, right, _ = fit(sim.x, w=sim.w, rank=rank, max_iters=max_iters, **kwargs)
            mean = left @ right.T
            row[f"{name} held out"] = imputation_score(mean, sim.x, sim.w)
            row[f"{name} observed (note's score)"] = reconstruction_score(mean, sim.x, sim.w)
        rows[rank] = row
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "rank"
    return frame[
        [
            "NMF held out",
            "NBMF held out",
            "NMF observed (note's score)",
            "NBMF observed (note's score)",
        ]
    ]
