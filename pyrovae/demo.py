"""The main job on embedded data: ``python -m pyrovae.demo`` (what ``make demo`` runs).

1. The reference note's Poisson-thinning simulation (500 cells × 100 genes, numpy seed 0): fit
   NBVAE and ZINBVAE (latent 3) on ``x`` with early stopping on held-out observed entries,
   estimate λ by ``denoise(x)`` and score the independent replicate ``x_val``; compare with
   Poisson NMF (rank 27, the note's choice) and the two limits (true λ; the Bayes posterior mean
   with the true μ and prior).
2. The bundled 10x PBMC 3k subset (2700 cells × 1000 genes): molecular cross-validation
   (binomial thinning into halves), NBVAE with library size factors and minibatches fitted on
   one half and scored on the other, against NMF of the same rank.

Prints one table; takes a few minutes on 2 CPU cores (``--quick``: seconds, for a smoke test).
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from . import metrics, simulate
from .baselines import nmf
from .datasets import pbmc3k
from .evaluation import thinning_experiment
from .experiments import RECOMMENDED
from .reference import NBVAE, ZINBVAE


def _simulation_rows(quick: bool) -> list[dict]:
    sim = simulate.poisson_thinning()
    settings = dict(RECOMMENDED)
    if quick:
        settings.update(max_epochs=20, patience=5, kl_warmup=2)
    rows = []
    for cls in (NBVAE, ZINBVAE):
        start = time.perf_counter()
        m = cls(input_dim=sim.x.shape[1], latent_dim=3).fit(sim.x, **settings)
        score = metrics.poisson_heldout_mean(m.denoise(sim.x), sim.x_val)
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
    loadings, factors, _ = nmf(sim.x, rank=27, max_iters=50 if quick else 10000)
    rows.append(
        dict(
            data="simulation 500×100",
            method="Poisson NMF rank 27",
            score=metrics.poisson_heldout_mean(loadings @ factors.T, sim.x_val),
            seconds=time.perf_counter() - start,
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


def _pbmc_rows(quick: bool) -> list[dict]:
    data = pbmc3k()
    x = data.counts[:300] if quick else data.counts
    fit_kwargs = dict(
        size_factor="library",
        batch_size=128,
        lr=3e-3,
        max_epochs=3 if quick else 100,
        validation_fraction=0.1,
        patience=3 if quick else 10,
        seed=0,
    )
    start = time.perf_counter()
    result = thinning_experiment(
        NBVAE(latent_dim=10),
        x,
        frac=0.5,
        fit_kwargs=fit_kwargs,
        nmf_kwargs=dict(max_iters=20 if quick else 1000),
    )
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
        dict(data=label, method="Poisson NMF rank 10", score=scores["nmf"]),
    ]


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(
        prog="python -m pyrovae.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    start = time.perf_counter()
    table = pd.DataFrame(_simulation_rows(args.quick) + _pbmc_rows(args.quick))
    table = table.set_index(["data", "method"])
    table["epochs"] = table["epochs"].map(lambda v: "" if pd.isna(v) else str(int(v)))
    with pd.option_context("display.width", 120, "display.float_format", "{:.3f}".format):
        print("Held-out mean Poisson log pmf per entry (higher is better): the estimate never saw")
        print("the scored counts (simulation: an independent replicate; PBMC: the other half of")
        print("the molecules).\n")
        print(table.to_string(na_rep=""))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return table


if __name__ == "__main__":
    main()
