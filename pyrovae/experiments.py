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

**Selections never look at scored data.** Every choice an experiment makes — the rank of a
matrix factorisation, ``REFERENCE`` or ``RECOMMENDED`` — is made on a validation split of the
data the fit may see (:func:`split_observed`: a fraction of the *observed* entries of ``x``;
:func:`select_setting` with ``protocol="thinning"``: a 50/50 binomial split of the molecules of
``x``), never on ``x_val`` or on the held-out entries that are scored.

**Seeds.** :func:`thinning_rows` and :func:`imputation_rows` run one torch seed of the whole
table (the simulations stay the note's, numpy seed 0); ``benchmarks/seed_experiments.py`` runs
:func:`seeds` of them and :func:`summarize` / :func:`markdown_tables` turn the long frames into
mean ± sd tables.
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
    binomial_thin,
    imputation_score,
    nb_imputation_score,
    poisson_heldout_mean,
    reconstruction_score,
    thinning_rescale,
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
    "CHOSEN",
    "VALIDATION_FRACTION",
    "MODELS_THINNING",
    "MODELS_IMPUTATION",
    "seeds",
    "split_observed",
    "select_mf_rank",
    "nmf_thinning_selected",
    "select_setting",
    "thinning_rows",
    "thinning_baseline_rows",
    "imputation_rows",
    "imputation_baseline_rows",
    "summarize",
    "format_mean_sd",
    "markdown_tables",
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
    sim: Simulation,
    ranks: Iterable[int] | None = None,
    max_iters: int | None = None,
    fraction: float | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Masked Poisson NMF and NB matrix factorisation (learned inverse dispersion, started at
    0.1 as in the note) for each rank, in two versions:

    * fitted on the observed entries less a validation split (:func:`split_observed`, a
      ``fraction`` of the observed entries, ``seed``) and scored on that split — the column
      ``… validation``, **the only one a rank may be chosen by**;
    * fitted on all observed entries and scored on the held-out entries (``… held out``, the
      imputation score; shown for every rank as a diagnostic, never used for a choice) and, as
      the note did, on the observed ones (``… observed (note's score)``: reconstruction).

    All scores are Poisson log pmfs of the fitted means, summed over the entries named.

    :param fraction: validation fraction of the observed entries (default
        :data:`VALIDATION_FRACTION`).
    :return: a frame indexed by rank with columns ``NMF validation``, ``NBMF validation``,
        ``NMF held out``, ``NBMF held out``, ``NMF observed (note's score)``,
        ``NBMF observed (note's score)``.
    """
    ranks = nmf_ranks() if ranks is None else list(ranks)
    max_iters = max_iters or nmf_max_iters()
    fraction = VALIDATION_FRACTION if fraction is None else fraction
    w_fit, w_valid = split_observed(sim.w, fraction, seed)
    rows = {}
    for rank in ranks:
        row = {}
        for name, fit in (("NMF", nmf), ("NBMF", nbmf)):
            kwargs = dict(inv_disp=0.1, fix_inv_disp=False) if fit is nbmf else {}
            left, right, _ = fit(sim.x, w=w_fit, rank=rank, max_iters=max_iters, **kwargs)
            row[f"{name} validation"] = imputation_score(left @ right.T, sim.x, ~w_valid)
            left, right, _ = fit(sim.x, w=sim.w, rank=rank, max_iters=max_iters, **kwargs)
            mean = left @ right.T
            row[f"{name} held out"] = imputation_score(mean, sim.x, sim.w)
            row[f"{name} observed (note's score)"] = reconstruction_score(mean, sim.x, sim.w)
        rows[rank] = row
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "rank"
    return frame[
        [
            "NMF validation",
            "NBMF validation",
            "NMF held out",
            "NBMF held out",
            "NMF observed (note's score)",
            "NBMF observed (note's score)",
        ]
    ]


# ------------------------------------------------------------------------------------------
# validation splits and selections (never on scored data)
# ------------------------------------------------------------------------------------------

#: Fraction of the observed entries held out for a selection.
VALIDATION_FRACTION = 0.1

#: ``settings`` label of the row that reports the setting chosen on validation data.
CHOSEN = "chosen on validation"

#: The note's models of the thinning experiment and of the imputation experiment (labels as
#: returned by :func:`label`).
MODELS_THINNING = ("PVAE-3", "PVAE-10", "NBVAE-3", "NBVAE-10", "ZINBVAE-3", "ZINBVAE-10")
MODELS_IMPUTATION = ("PVAE-3", "NBVAE-3", "ZINBVAE-3")

_CANDIDATES = {"REFERENCE": REFERENCE, "RECOMMENDED": RECOMMENDED}


def seeds(n: int = 5) -> list[int]:
    """Torch seeds of the multi-seed tables: ``0 … n-1`` (smoke mode: ``[0, 1]``, so that a
    standard deviation still exists)."""
    return [0, 1] if smoke() else list(range(n))


def split_observed(w, fraction: float | None = None, seed: int = 0):
    r"""Split the observed entries into a fitting and a validation part.

    Each observed entry (``w`` true; every entry if ``w`` is ``None``) goes to the validation
    part independently with probability ``fraction``, drawn from
    ``np.random.default_rng(seed)``; entries with ``w`` false are in neither part.

    :param w: ``(cells, genes)`` observation mask (bool or 0/1), or an int tuple ``shape`` for
        "all observed".
    :param fraction: probability of an observed entry being held out for validation, in
        ``(0, 1)`` (default :data:`VALIDATION_FRACTION`).
    :return: ``(w_fit, w_valid)``: disjoint boolean masks whose union is ``w``.
    """
    fraction = VALIDATION_FRACTION if fraction is None else fraction
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie strictly between 0 and 1, got {fraction}")
    w = np.ones(w, dtype=bool) if isinstance(w, tuple) else np.asarray(w).astype(bool)
    valid = w & (np.random.default_rng(seed).random(w.shape) < fraction)
    return w & ~valid, valid


def select_mf_rank(
    x,
    w=None,
    ranks: Iterable[int] | None = None,
    kind: str = "nmf",
    fraction: float | None = None,
    seed: int = 0,
    max_iters: int | None = None,
) -> tuple[int, pd.Series]:
    """The rank of a masked Poisson NMF (``kind="nmf"``) or NB factorisation (``"nbmf"``)
    chosen on a validation split of the observed entries: fit on ``w_fit``, score the Poisson
    log pmf of the fitted means summed over ``w_valid`` (:func:`split_observed`), keep the best.

    :param x: ``(cells, genes)`` counts.
    :param w: observation mask (``None``: all observed).
    :return: ``(rank, scores)``: the chosen rank and the validation score of every rank.
    """
    fit = {"nmf": nmf, "nbmf": nbmf}[kind]
    kwargs = dict(inv_disp=0.1, fix_inv_disp=False) if fit is nbmf else {}
    x = np.asarray(x)
    w_fit, w_valid = split_observed(x.shape if w is None else w, fraction, seed)
    ranks = nmf_ranks() if ranks is None else list(ranks)
    scores = {}
    for rank in ranks:
        left, right, _ = fit(
            x, w=w_fit, rank=rank, max_iters=max_iters or nmf_max_iters(), **kwargs
        )
        scores[rank] = imputation_score(left @ right.T, x, ~w_valid)
    series = pd.Series(scores, name="validation score")
    series.index.name = "rank"
    return int(series.idxmax()), series


def nmf_thinning_selected(
    sim: Simulation, ranks: Iterable[int] | None = None, seed: int = 0, max_iters: int | None = None
) -> dict:
    """Poisson NMF for the thinning table with its rank chosen on 10% of the entries of
    ``sim.x`` (:func:`select_mf_rank`), refitted on all of ``sim.x`` and scored on ``sim.x_val``.

    :return: ``{"rank": …, "score": …, "validation": <scores per rank>}``.
    """
    rank, validation = select_mf_rank(sim.x, None, ranks, "nmf", seed=seed, max_iters=max_iters)
    return {
        "rank": rank,
        "score": nmf_thinning_score(sim, rank=rank, max_iters=max_iters),
        "validation": validation,
    }


def _make(model_label: str, input_dim: int):
    from .reference import NBVAE, PVAE, ZINBVAE

    name, k = model_label.rsplit("-", 1)
    cls = {"PVAE": PVAE, "NBVAE": NBVAE, "ZINBVAE": ZINBVAE}[name]
    return cls(input_dim=input_dim, latent_dim=int(k))


def select_setting(
    model_label: str,
    x,
    w=None,
    protocol: str = "entries",
    objective: str = "elbo",
    seed: int = 0,
    candidates: Iterable[str] = ("REFERENCE", "RECOMMENDED"),
    n_samples: int = 100,
) -> tuple[str, dict[str, float]]:
    r"""Choose between :data:`REFERENCE` and :data:`RECOMMENDED` on a validation split of ``x``.

    * ``protocol="thinning"`` (molecular cross-validation of ``x``): split the molecules of
      ``x`` 50/50 (:func:`~pyrovae.metrics.binomial_thin`, ``seed``), fit each candidate on one
      half, score the other half by the mean Poisson log pmf under the rescaled
      ``denoise`` of the first — the thinning experiment's own score, on ``x`` alone.
    * ``protocol="entries"``: hide a :data:`VALIDATION_FRACTION` of the observed entries
      (:func:`split_observed`, ``seed``), fit each candidate with the rest, score the hidden
      ones by the mean Poisson log pmf of ``denoise(x, w_fit)`` — the imputation score.

    Neither reads ``x_val`` or the entries with ``w`` false.

    :param model_label: e.g. ``"NBVAE-3"``.
    :return: ``(name, scores)``: the chosen candidate and every candidate's validation score
        (mean log pmf per validation entry).
    """
    x = np.asarray(x)
    if protocol == "thinning":
        x_fit, x_valid = binomial_thin(x, 0.5, seed=seed)
        w_fit = None if w is None else w
    elif protocol == "entries":
        w_fit, w_valid = split_observed(x.shape if w is None else w, seed=seed)
        x_fit = x
    else:
        raise ValueError(f"protocol must be 'entries' or 'thinning', got {protocol!r}")
    scores = {}
    for name in candidates:
        model = _make(model_label, x.shape[1])
        fit_model(
            model, x_fit, w_fit, objective=objective, seed=seed, **settings(_CANDIDATES[name])
        )
        lam = model.denoise(x_fit, w_fit, n_samples=n_samples)
        if protocol == "thinning":
            scores[name] = poisson_heldout_mean(thinning_rescale(lam, 0.5), x_valid)
        else:
            scores[name] = imputation_score(lam, x, ~w_valid) / int(w_valid.sum())
    return max(scores, key=lambda k: scores[k]), scores


def _fit_info(model, diverged) -> dict:
    return {
        "epochs run": len(model.trace_),
        "epoch kept": model.history_.best_epoch,
        "diverged in epoch": diverged,
    }


def _chosen_rows(rows: list[dict], chosen: dict) -> list[dict]:
    """One extra row per model: a copy of the row of the setting chosen on validation."""
    out = []
    for (model_label, name), val in chosen.items():
        row = next(r for r in rows if r["model"] == model_label and r["settings"] == name)
        out.append({**row, "settings": CHOSEN, "chosen settings": name, "validation score": val})
    return out


def thinning_rows(
    sim: Simulation,
    seed: int,
    objective: str = "elbo",
    models: Iterable[str] = MODELS_THINNING,
    select: bool = True,
    n_samples: int = 100,
) -> list[dict]:
    """One torch seed of the thinning table: every model under :data:`REFERENCE` and
    :data:`RECOMMENDED` (fitted on ``sim.x`` with ``seed=seed``, scored by
    :func:`thinning_scores`) and, with ``select``, a row :data:`CHOSEN` repeating the setting
    that :func:`select_setting` (``protocol="thinning"``, on ``sim.x`` only) picks.

    :return: a list of flat dicts (one CSV row each; ``seed`` is a column).
    """
    rows, chosen = [], {}
    for model_label in models:
        for name, base in _CANDIDATES.items():
            model, diverged = fit_model(
                _make(model_label, sim.x.shape[1]),
                sim.x,
                objective=objective,
                seed=seed,
                **settings(base),
            )
            rows.append(
                {
                    "experiment": "thinning",
                    "objective": objective,
                    "model": model_label,
                    "settings": name,
                    "seed": seed,
                    **thinning_scores(model, sim, n_samples=n_samples),
                    **_fit_info(model, diverged),
                }
            )
        if select:
            name, scores = select_setting(
                model_label, sim.x, None, "thinning", objective, seed, n_samples=n_samples
            )
            for r in rows[-2:]:
                r["validation score"] = scores[r["settings"]]
            chosen[model_label, name] = scores[name]
    return rows + _chosen_rows(rows, chosen)


def thinning_baseline_rows(sim: Simulation, max_iters: int | None = None) -> list[dict]:
    """The thinning table's rows that do not depend on a torch seed: Poisson NMF of the note's
    rank 27, Poisson NMF with its rank chosen on validation entries of ``x``
    (:func:`nmf_thinning_selected`; NMF initialisation seed 0) and :func:`thinning_limits`."""
    selected = nmf_thinning_selected(sim, max_iters=max_iters)
    base = {"experiment": "thinning", "objective": "-", "seed": 0}
    rows = [
        {
            **base,
            "model": "NMF rank 27 (the note's)",
            "settings": "-",
            THIN_HELDOUT: nmf_thinning_score(sim, rank=27, max_iters=max_iters),
        },
        {
            **base,
            "model": f"NMF rank {selected['rank']} (chosen on validation)",
            "settings": CHOSEN,
            THIN_HELDOUT: selected["score"],
            "validation score": float(selected["validation"].max()),
        },
    ]
    rows += [
        {**base, "model": k, "settings": "limit", THIN_HELDOUT: v}
        for k, v in thinning_limits(sim).items()
    ]
    return rows


def imputation_rows(
    sim: Simulation,
    seed: int,
    objective: str = "elbo",
    models: Iterable[str] = MODELS_IMPUTATION,
    select: bool = True,
    n_samples: int = 100,
) -> list[dict]:
    """One torch seed of the imputation table: every model fitted with ``w=sim.w`` under
    :data:`REFERENCE` and :data:`RECOMMENDED` (``seed=seed``), scored by
    :func:`imputation_scores`, plus the spread of the latent means (near 0 for a collapsed
    posterior) and, with ``select``, a row :data:`CHOSEN` for the setting that
    :func:`select_setting` (``protocol="entries"``: 10% of the *observed* entries) picks.
    """
    rows, chosen = [], {}
    wx = sim.w * sim.x
    for model_label in models:
        for name, base in _CANDIDATES.items():
            model, diverged = fit_model(
                _make(model_label, sim.x.shape[1]),
                sim.x,
                sim.w,
                objective=objective,
                seed=seed,
                **settings(base),
            )
            rows.append(
                {
                    "experiment": "imputation",
                    "objective": objective,
                    "model": model_label,
                    "settings": name,
                    "seed": seed,
                    **imputation_scores(model, sim, n_samples=n_samples),
                    **_fit_info(model, diverged),
                    "spread of E_q z": float(model.latent(wx).std(axis=0).mean()),
                }
            )
        if select:
            name, scores = select_setting(
                model_label, sim.x, sim.w, "entries", objective, seed, n_samples=n_samples
            )
            for r in rows[-2:]:
                r["validation score"] = scores[r["settings"]]
            chosen[model_label, name] = scores[name]
    return rows + _chosen_rows(rows, chosen)


def imputation_baseline_rows(
    sim: Simulation, ranks: Iterable[int] | None = None, max_iters: int | None = None
) -> tuple[list[dict], pd.DataFrame]:
    """The imputation table's rows that do not depend on a torch seed: masked NMF and NBMF at
    the rank chosen on validation entries (:func:`masked_mf_sweep`'s ``validation`` columns,
    then the fit on all observed entries scored on the held-out ones), and
    :func:`imputation_limits`.

    :return: ``(rows, sweep)``.
    """
    sweep = masked_mf_sweep(sim, ranks=ranks, max_iters=max_iters)
    base = {"experiment": "imputation", "objective": "-", "seed": 0}
    rows = []
    for name in ("NMF", "NBMF"):
        rank = int(sweep[f"{name} validation"].idxmax())
        rows.append(
            {
                **base,
                "model": f"masked {name}, rank {rank} (chosen on validation)",
                "settings": CHOSEN,
                HELDOUT_DENOISE: sweep.loc[rank, f"{name} held out"],
                "validation score": sweep.loc[rank, f"{name} validation"],
            }
        )
    for key, value in imputation_limits(sim).items():
        rows.append({**base, "model": key, "settings": "limit", HELDOUT_DENOISE: value["held out"]})
    return rows, sweep


# ------------------------------------------------------------------------------------------
# summaries
# ------------------------------------------------------------------------------------------


def summarize(frame: pd.DataFrame, values: Iterable[str]) -> pd.DataFrame:
    """Mean, sample standard deviation and number of seeds of ``values`` for every
    ``(experiment, objective, model, settings)`` of a long frame with a ``seed`` column.

    :return: a frame with columns ``<value> mean``, ``<value> sd`` for each value and
        ``n seeds``; for :data:`CHOSEN` rows also ``chosen settings`` (e.g.
        ``"RECOMMENDED 5/5"``).
    """
    keys = ["experiment", "objective", "model", "settings"]
    values = list(values)
    groups = frame.groupby(keys, sort=False)
    out = pd.concat(
        [groups[values].mean().add_suffix(" mean"), groups[values].std().add_suffix(" sd")],
        axis=1,
    )
    out = out[[f"{v} {s}" for v in values for s in ("mean", "sd")]]
    out["n seeds"] = groups["seed"].nunique()
    if "chosen settings" in frame:

        def tally(col):
            counts = col.dropna().value_counts()
            return ", ".join(f"{k} {v}/{len(col)}" for k, v in counts.items()) or ""

        out["chosen settings"] = groups["chosen settings"].agg(tally)
    return out


def format_mean_sd(mean: float, sd: float, digits: int = 3) -> str:
    """``"−1.020 ± 0.003"`` (Unicode minus; ``digits=0`` adds thousands separators); the mean
    alone when ``sd`` is NaN (one seed), ``""`` when ``mean`` is NaN."""
    if not np.isfinite(mean):
        return ""
    fmt = f"{{:,.{digits}f}}"
    text = fmt.format(mean).replace("-", "−")
    return text if not np.isfinite(sd) else f"{text} ± {fmt.format(sd)}"


def _cell(summary, key, value, digits):
    if key not in summary.index:
        return ""
    row = summary.loc[key]
    return format_mean_sd(row[f"{value} mean"], row[f"{value} sd"], digits)


def _results_table(
    frame: pd.DataFrame,
    kind: str,
    models: list[str],
    value: str,
    digits: int,
    title: str,
    baselines: str,
    own: str | None = None,
) -> str:
    """One Markdown results table: per model, mean ± sd over seeds of ``value`` for each
    objective × (REFERENCE, RECOMMENDED, and chosen where that objective has choices),
    optionally ``own`` (ELBO, RECOMMENDED) as a last column, then the seed-independent rows as
    one line starting with ``baselines``."""
    summary = summarize(frame, [value] if own is None else [value, own])
    n = int(frame["seed"].nunique())
    models = [m for m in models if m in set(frame["model"])]
    objectives = [o for o in ("elbo", "iwae") if o in set(frame["objective"])]
    chosen = {
        o for o in objectives if ((frame["objective"] == o) & (frame["settings"] == CHOSEN)).any()
    }
    columns = [
        (o, s)
        for o in objectives
        for s in ("REFERENCE", "RECOMMENDED", CHOSEN)
        if s != CHOSEN or o in chosen
    ]
    head = [f"{o.upper()}, {'chosen' if s == CHOSEN else s}" for o, s in columns]
    if own is not None:
        head.append("own predictive, ELBO, RECOMMENDED")
    lines = [
        title.format(n=n),
        "",
        "| model | " + " | ".join(head) + " |",
        "|---" * (len(head) + 1) + "|",
    ]
    for m in models:
        cells = []
        for o, s in columns:
            text = _cell(summary, (kind, o, m, s), value, digits)
            if s == CHOSEN and text:
                text += f" ({summary.loc[(kind, o, m, s), 'chosen settings']})"
            cells.append(text)
        if own is not None:
            cells.append(_cell(summary, (kind, "elbo", m, "RECOMMENDED"), own, digits))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    others = summary[summary.index.get_level_values("objective") == "-"]
    if len(others):
        lines += [
            "",
            baselines
            + "; ".join(
                f"{key[2]} {format_mean_sd(row[f'{value} mean'], np.nan, digits)}"
                for key, row in others.iterrows()
            )
            + ".",
        ]
    return "\n".join(lines)


def markdown_tables(
    thinning: pd.DataFrame | None,
    imputation: pd.DataFrame | None,
    thinning_models: tuple[str, ...] = MODELS_THINNING,
) -> str:
    """The README's results tables (Markdown), computed from the long multi-seed frames written
    by ``benchmarks/seed_experiments.py``: mean ± sd over seeds of the held-out scores, the
    settings chosen on validation data, and the seed-independent baselines and limits.

    :param thinning_models: the thinning rows to show, in this order (those with results)."""
    parts = []
    if thinning is not None:
        parts.append(
            _results_table(
                thinning,
                "thinning",
                thinning_models,
                THIN_HELDOUT,
                3,
                "**Poisson thinning**: mean log pmf of `x_val` under `denoise(x)` (mean ± sd over "
                "{n} torch seeds; higher is better; *chosen*: the setting picked by molecular "
                "cross-validation of `x`, with how often each was picked)",
                "Baselines and limits: ",
            )
        )
    if imputation is not None:
        parts.append(
            _results_table(
                imputation,
                "imputation",
                MODELS_IMPUTATION,
                HELDOUT_DENOISE,
                0,
                "**Imputation of 10% hidden entries**: Poisson log pmf of `denoise(x, w)` summed "
                "over the hidden entries (mean ± sd over {n} torch seeds; *chosen*: the setting "
                "picked on 10% of the observed entries), and the model's own predictive log pmf "
                "of them",
                "Baselines and limits (Poisson log pmf summed over the hidden entries; the NB "
                "predictive row is the limit of the own-predictive column): ",
                own=HELDOUT_PREDICTIVE,
            )
        )
    return "\n\n".join(parts) + "\n"
