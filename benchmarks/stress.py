"""Divergence stress grid (issue 13): fits on wide, sparse, skewed droplet-like data must not
diverge and must give finite outputs.

Grid: every closed-form prior (poisson, gamma, zinb) x objective (elbo, iwae) x seeds x without /
with a 10% validation split of cells (patience 10), all with the CLI defaults (latent 10, hidden
128-128, library size factors, batch 128, lr 3e-3, one particle), on
:func:`pyrovae.stress_data.droplet_like` data (one matrix per seed). Each fit runs ``--epochs``
epochs (issue 13's failure came in epoch 0, batch 9). One CSV row per fit: divergence (and its
message), final training loss, validation loss, finiteness of latent/denoise outputs, seconds.

    OMP_NUM_THREADS=1 python benchmarks/stress.py                      # full grid (slow)
    OMP_NUM_THREADS=1 python benchmarks/stress.py --seeds 0 1 --epochs 1 --cells 2000
    # main's code on the same data (the generator is loaded from this checkout by path):
    OMP_NUM_THREADS=1 PYTHONPATH=/path/to/other/checkout python benchmarks/stress.py ...
    # PBMC 3k, all 32,738 genes, instead of the synthetic data:
    OMP_NUM_THREADS=1 python benchmarks/stress.py --h5ad ../shared/data/pbmc3k_10x.h5ad \
        --priors gamma --objectives elbo --validation 0.1 --seeds 0 1 2 3 4

Writes ``benchmarks/results/stress.csv`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import time
from pathlib import Path

import numpy as np
import torch

import pyrovae

HERE = Path(__file__).resolve().parent


def _droplet_like():
    """The generator from *this* checkout, by path, so that other code (PYTHONPATH) can be
    stressed with the very same matrices."""
    spec = importlib.util.spec_from_file_location(
        "_stress_data", HERE.parent / "pyrovae" / "stress_data.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.droplet_like


def one_fit(x, prior, objective, seed, validation, epochs):
    """Fit with the CLI defaults; return a dict of results (never raises on divergence)."""
    est = pyrovae.VAE(latent_dim=10, hidden=(128, 128), prior=prior)
    kwargs = dict(
        size_factor="library",
        batch_size=128,
        lr=3e-3,
        n_samples=1,
        objective=objective,
        max_epochs=epochs,
        seed=seed,
    )
    if validation > 0:
        kwargs.update(validation_fraction=validation, validation_by="cells", patience=10)
    row = dict(prior=prior, objective=objective, seed=seed, validation=validation, epochs=epochs)
    t0 = time.perf_counter()
    try:
        est.fit(x, **kwargs)
        row.update(diverged=False, message="")
    except pyrovae.FitDivergedError as err:
        row.update(diverged=True, message=str(err).splitlines()[0][:300])
    row["seconds"] = round(time.perf_counter() - t0, 1)
    trace = getattr(est, "trace_", [])
    row["loss"] = float(trace[-1]) if len(trace) else float("nan")
    hist = getattr(est, "history_", None)
    val = hist.val_loss if hist is not None else []
    row["val_loss"] = float(val[-1]) if len(val) else float("nan")
    finite = True
    if not row["diverged"]:
        sub = x[:256]
        with torch.no_grad():
            finite = bool(
                np.isfinite(est.latent(sub)).all()
                and np.isfinite(est.denoise(sub, n_samples=2)).all()
            )
    row["finite_outputs"] = finite
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=2000)
    parser.add_argument("--genes", type=int, default=15000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--priors", nargs="+", default=["poisson", "gamma", "zinb"])
    parser.add_argument("--objectives", nargs="+", default=["elbo", "iwae"])
    parser.add_argument("--validation", type=float, nargs="+", default=[0.0, 0.1])
    parser.add_argument("--h5ad", type=Path, help="real data instead of droplet_like")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "stress.csv")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.h5ad is not None:
        import anndata
        import scipy.sparse as sp

        adata = anndata.read_h5ad(args.h5ad)
        data = {None: sp.csr_matrix(adata.X, dtype=np.float32)}
        label = args.h5ad.name
    else:
        droplet_like = _droplet_like()
        data = {s: droplet_like(args.cells, args.genes, s) for s in args.seeds}
        label = f"droplet_like({args.cells}, {args.genes})"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with args.out.open("w", newline="") as fh:
        writer = None
        for seed in args.seeds:
            x = data[None] if None in data else data[seed]
            for prior in args.priors:
                for objective in args.objectives:
                    for validation in args.validation:
                        row = {"data": label, "code": pyrovae.__file__}
                        row.update(one_fit(x, prior, objective, seed, validation, args.epochs))
                        rows.append(row)
                        if writer is None:
                            writer = csv.DictWriter(fh, fieldnames=list(row))
                            writer.writeheader()
                        writer.writerow(row)
                        fh.flush()
                        print(
                            f"{prior:8s} {objective:5s} seed {seed} val {validation}: "
                            + ("DIVERGED " + row["message"] if row["diverged"] else "ok")
                            + f" loss {row['loss']:.6g} ({row['seconds']} s)",
                            flush=True,
                        )
    bad = [r for r in rows if r["diverged"] or not r["finite_outputs"]]
    print(f"{len(rows)} fits, {len(bad)} diverged or non-finite; wrote {args.out}")


if __name__ == "__main__":
    main()
