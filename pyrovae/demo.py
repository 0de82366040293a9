"""The main job on embedded data: ``python -m pyrovae.demo`` (what ``make demo`` runs).

1. The reference note's Poisson-thinning simulation (500 cells × 100 genes, numpy seed 0): fit
   NBVAE and ZINBVAE (latent 3) on ``x`` with early stopping on held-out cells,
   estimate λ by ``denoise(x)`` and score the independent replicate ``x_val``; compare with
   Poisson NMF (rank 27, the note's choice) and the two limits (true λ; the Bayes posterior mean
   with the true μ and prior).
2. The bundled 10x PBMC 3k subset (2700 cells × 1000 genes): molecular cross-validation
   (binomial thinning into halves), NBVAE with library size factors and minibatches fitted on
   one half and scored on the other, against NMF of the same rank.

Settings are cut to finish in about a minute on 2 CPU cores (:data:`SIMULATION`,
:data:`PBMC`, printed above the table): fewer particles and epochs than the note's 3000
full-batch epochs with 10 particles (the table also lists the reference code's scores under the
note's protocol, :data:`pyrovae.experiments.REFERENCE_CODE_THINNING`, for comparison), and a
progress bar (tqdm, on stderr) for each fit. Prints one table (``--quick``: seconds, for a smoke
test).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import metrics, simulate
from .baselines import nmf
from .datasets import pbmc3k
from .evaluation import thinning_experiment
from .experiments import REFERENCE_CODE_THINNING
from .reference import NBVAE, ZINBVAE

#: Simulation fits (full batch): the note's lr, fewer particles and epochs, early stopping on
#: 10% held-out cells (cheaper per epoch than held-out entries), a short KL warm-up.
SIMULATION = dict(
    lr=1e-2,
    n_samples=3,
    max_epochs=250,
    validation_fraction=0.1,
    validation_by="cells",
    patience=30,
    kl_warmup=20,
)
#: PBMC thinning fit: library size factors, minibatches, early stopping on 10% held-out cells.
PBMC = dict(
    size_factor="library",
    batch_size=256,
    lr=1e-2,
    max_epochs=15,
    validation_fraction=0.1,
    patience=5,
    seed=0,
)
#: draws from q(z | x) for ``denoise``: simulation, PBMC.
DENOISE_SAMPLES = dict(simulation=50, pbmc=20)
NMF_ITERS = dict(simulation=500, pbmc=100)
QUICK = dict(max_epochs=5, patience=2, kl_warmup=1)


class _NMFProgress:
    """A tqdm bar (stderr) driven by :func:`pyrovae.baselines.nmf`'s callback, opened at the
    fit's first iteration (so it does not sit under another fit's bar)."""

    def __init__(self, desc: str, total: int, verbose: bool):
        self.desc, self.total, self.verbose, self.bar = desc, total, verbose, None

    def __call__(self, iteration: int, loglik: float) -> None:
        if self.bar is None:
            self.bar = tqdm(total=self.total, desc=self.desc, unit="it", disable=not self.verbose)
        if iteration:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _simulation_rows(quick: bool, verbose: bool) -> list[dict]:
    sim = simulate.poisson_thinning()
    settings = dict(SIMULATION, verbose=verbose)
    if quick:
        settings.update(QUICK)
    rows = []
    for cls in (NBVAE, ZINBVAE):
        _announce(f"simulation: {cls.__name__}-3", verbose)
        start = time.perf_counter()
        m = cls(input_dim=sim.x.shape[1], latent_dim=3).fit(sim.x, **settings)
        lam = m.denoise(sim.x, n_samples=10 if quick else DENOISE_SAMPLES["simulation"])
        score = metrics.poisson_heldout_mean(lam, sim.x_val)
        rows.append(
            dict(
                data="simulation 500×100",
                method=f"{cls.__name__}-3 denoise(x)",
                score=score,
                epochs=len(m.trace_),
                seconds=time.perf_counter() - start,
            )
        )
    start = time.perf_counter()
    iters = 50 if quick else NMF_ITERS["simulation"]
    progress = _NMFProgress("NMF rank 27", iters, verbose)
    loadings, factors, _ = nmf(sim.x, rank=27, max_iters=iters, callback=progress)
    progress.close()
    rows.append(
        dict(
            data="simulation 500×100",
            method=f"Poisson NMF rank 27 ({iters} it.)",
            score=metrics.poisson_heldout_mean(loadings @ factors.T, sim.x_val),
            seconds=time.perf_counter() - start,
        )
    )
    for name in ("NBVAE-3", "ZINBVAE-3"):
        rows.append(
            dict(
                data="simulation 500×100",
                method=f"ref.: reference code {name}, note's protocol",
                score=REFERENCE_CODE_THINNING[name],
            )
        )
    bayes = simulate.bayes_posterior_mean_lambda(sim.x, sim.mu, sim.inv_disp)
    rows.append(
        dict(
            data="simulation 500×100",
            method="limit: Bayes E[λ|x] (true μ, prior)",
            score=metrics.poisson_heldout_mean(bayes, sim.x_val),
        )
    )
    rows.append(
        dict(
            data="simulation 500×100",
            method="limit: true λ",
            score=metrics.poisson_heldout_mean(sim.lam, sim.x_val),
        )
    )
    return rows


def _pbmc_rows(quick: bool, verbose: bool) -> list[dict]:
    data = pbmc3k()
    x = data.counts[:300] if quick else data.counts
    fit_kwargs = dict(PBMC, verbose=verbose)
    if quick:
        fit_kwargs.update(max_epochs=3, patience=2)
    iters = 20 if quick else NMF_ITERS["pbmc"]
    progress = _NMFProgress("NMF rank 10", iters, verbose)
    _announce(f"PBMC {x.shape[0]}×{x.shape[1]} thinning: NBVAE-10, then NMF", verbose)
    start = time.perf_counter()
    result = thinning_experiment(
        NBVAE(latent_dim=10),
        x,
        frac=0.5,
        fit_kwargs=fit_kwargs,
        n_samples=10 if quick else DENOISE_SAMPLES["pbmc"],
        nmf_kwargs=dict(max_iters=iters, callback=progress),
    )
    progress.close()
    seconds = time.perf_counter() - start
    scores = result["scores"]["mean"]
    est = result["estimator"]
    label = f"PBMC 3k {x.shape[0]}×{x.shape[1]} (thinning)"
    return [
        dict(
            data=label,
            method="NBVAE-10 denoise(x_train)",
            score=scores["vae_denoise"],
            epochs=len(est.trace_),
            seconds=seconds,
        ),
        dict(data=label, method="NBVAE-10 predict(x_train)", score=scores["vae_predict"]),
        dict(data=label, method=f"Poisson NMF rank 10 ({iters} it.)", score=scores["nmf"]),
    ]


def _settings_header(quick: bool) -> str:
    sim = dict(SIMULATION, **(QUICK if quick else {}))
    pbmc = dict(PBMC, **(dict(max_epochs=3, patience=2) if quick else {}))
    show = lambda d: ", ".join(f"{k}={v}" for k, v in d.items())  # noqa: E731
    draws = dict(simulation=10, pbmc=10) if quick else DENOISE_SAMPLES
    return (
        f"Simulation fits: fit({show(sim)}); denoise n_samples={draws['simulation']}.\n"
        f"PBMC fit (on the thinned half): fit({show(pbmc)}); denoise n_samples="
        f"{draws['pbmc']}.\n"
    )


def _threads(requested: int | None) -> tuple[int, float | None]:
    """Threads for torch (and BLAS): ``requested``, else up to 2 — but 1 when the machine is
    already busy (1-minute load average above ``cores - 0.5``), where extra threads only wait for
    each other (several times slower than one thread)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be positive, got {requested}")
        return requested, load
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = min(2, cores or 1, torch.get_num_threads())
    if load is not None and load > (cores or 1) - 0.5:
        n = 1
    return n, load


def _blas_threads(n: int):
    """Limit numpy's BLAS threads too (NMF) when threadpoolctl is installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(n)


def _announce(what: str, verbose: bool) -> None:
    """Name the fit whose progress bar follows (stderr, with the bars)."""
    if verbose:
        print(what, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(
        prog="python -m pyrovae.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: 2, or 1 on a busy machine)"
    )
    args = parser.parse_args(argv)
    verbose = not args.no_progress
    threads, load = _threads(args.threads)
    torch.set_num_threads(threads)
    start = time.perf_counter()
    with _blas_threads(threads):
        rows = _simulation_rows(args.quick, verbose) + _pbmc_rows(args.quick, verbose)
    table = pd.DataFrame(rows)
    table = table.set_index(["data", "method"])
    table["epochs"] = table["epochs"].map(lambda v: "" if pd.isna(v) else str(int(v)))
    with pd.option_context("display.width", 120, "display.float_format", "{:.3f}".format):
        print("Held-out mean Poisson log pmf per entry (higher is better): the estimate never saw")
        print("the scored counts (simulation: an independent replicate; PBMC: the other half of")
        print("the molecules).")
        print(_settings_header(args.quick), end="")
        shown = "n/a" if load is None else f"{load:.2f}"
        print(f"{threads} CPU thread(s); load average at the start {shown}.\n")
        print(table.to_string(na_rep=""))
    print(f"\ntotal {time.perf_counter() - start:.0f} s", flush=True)
    return table


if __name__ == "__main__":
    main()
