"""Training speed of pyrovae (issue 10), in one run, through the public API only.

(a) **Seed protocol** (the reference note): ``poisson_thinning()`` 500 × 100, full batch,
    ``fit(x, lr=1e-2, n_samples=10, max_epochs=E)`` of ``PVAE``/``NBVAE``/``ZINBVAE`` (latent 3,
    shared dispersion / log-odds), alternated fit by fit with the reference implementation
    ``scmodes.lra.vae`` (same call) when it can be imported (else skipped with a message).
    Time per epoch = wall time of a fit / E (a fit's set-up, small next to E epochs, is included
    on both sides); after one warm-up fit each, ``--repeats`` pairs in alternating order; the
    ratio is pyrovae / reference, median over the pairs.
(b) **CBMC** (8,617 × 2,000 sparse, ``--data``): ``VAE(prior="gamma", prior_by_gene=True,
    latent_dim=10, hidden=(128,))``, ``size_factor="library"``, ``batch_size=128``, Adam
    ``lr=1e-3``, ``n_samples=1``. Time per epoch = (wall(fit with 1 + T epochs) − wall(fit with
    1 epoch)) / T: one warm-up epoch, set-up cancels; ``--cbmc-repeats`` rounds, each timing
    pyrovae, the plain VAE and scvi-tools in turn; the ratios are medians of the rounds' ratios. Against :class:`plain_vae.PlainVAE`, the
    same architecture and likelihood in plain PyTorch (dense data, same batch size, its own
    epochs timed after a warm-up epoch), after checking that it computes pyrovae's loss from the
    fitted pyrovae parameters; scvi-tools ``SCVI`` (1 hidden layer of 128, latent 10, NB with
    per-gene dispersion, batch 128) when importable; ``device="cuda"`` when a GPU is present.
(c) **Early stopping**: the CBMC fit with ``validation_fraction=0.1`` by cells and by entries
    (patience 10⁶, never stops) against none; extra cost per epoch in % (target ≤ 25%), the
    median over ``--val-repeats`` rounds that each time the three in turn (one round swung from
    −17% to +50% between runs).

Run from the repository root (prints the load average before and after, and torch's threads)::

    python benchmarks/speed.py                       # all of it, a few minutes on 2 cores
    python benchmarks/speed.py --only seed --repeats 5
    PYTHONPATH=/tmp/scmodes_ref python benchmarks/speed.py --only seed   # with the reference
    python benchmarks/speed.py --quick               # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from _machine import machine  # benchmarks/ is sys.path[0] when this script runs
from plain_vae import PlainTrainer, PlainVAE

from pyrovae import NBVAE, PVAE, VAE, ZINBVAE
from pyrovae.simulate import poisson_thinning

#: the shared data folder next to the checkout (``../shared/data``), else this machine's
_NEXT_TO_REPO = Path(__file__).resolve().parents[2] / "shared" / "data" / "cbmc_top2000.h5ad"
DEFAULT_DATA = (
    _NEXT_TO_REPO if _NEXT_TO_REPO.exists() else Path("/work/shared/data/cbmc_top2000.h5ad")
)


def _load() -> str:
    return "n/a" if not hasattr(os, "getloadavg") else " ".join(f"{v:.2f}" for v in os.getloadavg())


def _wall(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


# -- (a) seed protocol ------------------------------------------------------------------------
def seed_protocol(args) -> None:
    print("\n== (a) seed protocol: poisson_thinning() 500x100, full batch, n_samples=10, lr 1e-2")
    try:
        import scmodes.lra.vae as ref
    except ImportError as err:
        ref = None
        print(f"reference scmodes.lra.vae not importable ({err}): timing pyrovae alone")
    device = "cpu"
    if torch.cuda.is_available():
        device = "cuda"  # the reference's fit moves itself to the GPU when there is one
        print("CUDA present: the reference fits on the GPU, so pyrovae runs with device='cuda'")
    sim = poisson_thinning()
    x = torch.tensor(sim.x, dtype=torch.float32)
    p, epochs = x.shape[1], args.seed_epochs
    cases = [
        ("PVAE", lambda: PVAE(p, 3, device=device), lambda: ref.PVAE(p, 3)),
        (
            "NBVAE",
            lambda: NBVAE(p, 3, disp_by_gene=False, device=device),
            lambda: ref.NBVAE(p, 3, disp_by_gene=False),
        ),
        (
            "ZINBVAE",
            lambda: ZINBVAE(p, 3, disp_by_gene=False, logodds_by_gene=False, device=device),
            lambda: ref.ZINBVAE(p, 3, disp_by_gene=False, logodds_by_gene=False),
        ),
    ]
    fit_kw = dict(lr=1e-2, n_samples=10)
    print(f"time per epoch = wall(fit(..., max_epochs={epochs})) / {epochs}; {args.repeats} pairs")
    for name, ours, theirs in cases:
        makers = {"pyrovae": ours} if ref is None else {"pyrovae": ours, "reference": theirs}
        for make in makers.values():  # warm-up
            make().fit(x, max_epochs=max(2, epochs // 5), **fit_kw)
        times = {k: [] for k in makers}
        for r in range(args.repeats):
            order = list(makers) if r % 2 == 0 else list(reversed(makers))
            for who in order:
                make = makers[who]
                t, _ = _wall(lambda make=make: make().fit(x, max_epochs=epochs, **fit_kw))
                times[who].append(t / epochs)
        line = f"  {name:8s} pyrovae {1e3 * statistics.median(times['pyrovae']):7.2f} ms/epoch"
        if ref is not None:
            ratios = [a / b for a, b in zip(times["pyrovae"], times["reference"], strict=True)]
            line += (
                f"  reference {1e3 * statistics.median(times['reference']):7.2f} ms/epoch"
                f"  ratio {statistics.median(ratios):.3f} (pairs: "
                + " ".join(f"{v:.2f}" for v in ratios)
                + ")  target <= 1.0"
            )
        print(line, flush=True)


# -- (b) CBMC against a plain PyTorch VAE -----------------------------------------------------
def load_cbmc(args):
    import anndata

    adata = anndata.read_h5ad(args.data)
    x = sp.csr_matrix(adata.X)
    if args.quick:
        x = x[: args.quick_cells]
    return x


def cbmc_estimator(device="cpu"):
    return VAE(prior="gamma", prior_by_gene=True, latent_dim=10, hidden=(128,), device=device)


def cbmc_fit_kwargs(args, **extra):
    return dict(
        size_factor="library",
        batch_size=128,
        lr=1e-3,
        n_samples=args.n_samples,
        seed=0,
        **extra,
    )


_WARM: set = set()


def time_pyrovae(x, args, device="cpu", timed=1, **extra):
    """Per-epoch time as (wall(1 + timed epochs) - wall(1 epoch)) / timed; returns it and the
    one-epoch fit."""
    kw = cbmc_fit_kwargs(args, **extra)
    if device not in _WARM:  # the first fit in a process pays one-off costs: not timed
        cbmc_estimator(device).fit(x, max_epochs=1, **kw)
        _WARM.add(device)
    t1, est = _wall(lambda: cbmc_estimator(device).fit(x, max_epochs=1, **kw))
    t2, _ = _wall(lambda: cbmc_estimator(device).fit(x, max_epochs=1 + timed, **kw))
    return max(t2 - t1, 1e-9) / timed, est


def check_same_loss(est, x, args, device) -> None:
    """Stop unless the plain VAE, given the fitted pyrovae parameters, computes pyrovae's
    encoder mean, decoder mean and training loss (same particles) on the first 256 cells."""
    import pyro

    from pyrovae import objectives

    net = PlainVAE.like(est)
    rows = x[:256]
    xd = torch.as_tensor(rows.toarray() if sp.issparse(rows) else rows, dtype=torch.float32)
    xd = xd.to(device)
    lib = xd.sum(-1)
    s = lib / est.library_median_
    print(
        f"plain VAE mirrors the fitted model: encoder input {net.encoder_input!r}, bounded "
        f"outputs {net.bounds}, hidden {[m.out_features for m in net.enc[::2]]}, likelihood "
        f"{net.likelihood} (theta {tuple(net.log_theta.shape) if net.likelihood == 'nb' else ''})"
    )
    with torch.no_grad():
        loc, _ = net.encode(xd)
        mu = s.unsqueeze(-1) * net.log_mu(loc).exp()
    checks = {
        "latent()": (est.latent(rows), loc.cpu().numpy()),
        "predict()": (est.predict(rows), mu.cpu().numpy()),
    }
    for name, (a, b) in checks.items():
        if not np.allclose(a, b, rtol=1e-4, atol=1e-5):
            sys.exit(f"the plain VAE's {name} differs from pyrovae's: fix benchmarks/plain_vae.py")
    elbo = objectives.make_elbo("elbo", args.n_samples)
    torch.manual_seed(1)
    with pyro.validation_enabled(False):
        a = objectives.loss(elbo, est.model_, est.guide_, xd, None, s)
    torch.manual_seed(1)
    with torch.no_grad():
        b = float(net.loss(xd, s.log(), args.n_samples))
    print(f"same-loss check (256 cells, same parameters and draws): pyrovae {a:.7g}  plain {b:.7g}")
    if not math.isclose(a, b, rel_tol=1e-4):
        sys.exit("the plain VAE does not compute pyrovae's loss: fix benchmarks/plain_vae.py")


def time_plain(est, x, args, device, timed) -> float:
    net = PlainVAE.like(est)  # same architecture; its starting parameters do not matter
    for m in net.modules():
        if isinstance(m, torch.nn.Linear):
            m.reset_parameters()
    with torch.no_grad():
        if net.likelihood == "nb":
            net.log_theta.zero_()
    xd = torch.as_tensor(x.toarray() if sp.issparse(x) else x, dtype=torch.float32).to(device)
    lib = xd.sum(-1)
    s = lib / lib.median()  # as pyrovae's library size factors (median over the cells)
    trainer = PlainTrainer(net, xd, s, args.n_samples, 128, 1e-3, seed=0)
    trainer.epoch()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    t, _ = _wall(lambda: [trainer.epoch() for _ in range(timed)])
    return t / timed


def time_scvi(x, args, timed) -> float | None:
    try:
        import anndata
        import scvi
    except ImportError as err:
        print(f"scvi-tools not importable ({err}): skipped")
        return None
    import logging
    import warnings

    scvi.settings.verbosity = logging.ERROR
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", module="scvi")
    adata = anndata.AnnData(sp.csr_matrix(x, dtype=np.float32))
    scvi.model.SCVI.setup_anndata(adata)

    def run(epochs):
        model = scvi.model.SCVI(
            adata, n_hidden=128, n_latent=10, n_layers=1, gene_likelihood="nb", dispersion="gene"
        )
        model.train(
            max_epochs=epochs,
            batch_size=128,
            train_size=1.0,
            early_stopping=False,
            accelerator="cpu",
            plan_kwargs=dict(lr=1e-3),
            enable_progress_bar=False,
            enable_model_summary=False,
            logger=False,
        )

    t1, _ = _wall(lambda: run(1))
    t2, _ = _wall(lambda: run(1 + timed))
    return max(t2 - t1, 1e-9) / timed


def cbmc(args, x) -> float:
    n = x.shape[0]
    timed = args.cbmc_epochs
    print(
        f"\n== (b) CBMC {n}x{x.shape[1]} sparse: per-gene NB, hidden (128,), latent 10, batch 128, "
        f"library size factors, Adam lr 1e-3, n_samples={args.n_samples}; per epoch = "
        f"(wall(1+{timed} epochs) - wall(1 epoch)) / {timed}"
    )
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    cpu_epoch = math.nan
    use_scvi = True
    for device in devices:
        rounds = []  # (pyrovae, plain, scvi or None) seconds per epoch, alternated per round
        for r in range(args.cbmc_repeats):
            t_py, est = time_pyrovae(x, args, device=device, timed=timed)
            if r == 0:
                check_same_loss(est, x, args, device)
            t_plain = time_plain(est, x, args, device, timed)
            t_scvi = time_scvi(x, args, timed) if device == "cpu" and use_scvi else None
            use_scvi = t_scvi is not None
            rounds.append((t_py, t_plain, t_scvi))
        t_py = statistics.median(r[0] for r in rounds)
        t_plain = statistics.median(r[1] for r in rounds)
        ratios = [a / b for a, b, _ in rounds]
        print(
            f"  {device}: pyrovae {t_py:.3f} s/epoch ({n / t_py:,.0f} cells/s)  plain PyTorch "
            f"{t_plain:.3f} s/epoch ({n / t_plain:,.0f} cells/s)  ratio pyrovae/plain "
            f"{statistics.median(ratios):.3f} (median of rounds: "
            f"{' '.join(f'{r:.2f}' for r in ratios)}; target <= 1.15)",
            flush=True,
        )
        if device == "cpu":
            cpu_epoch = t_py
            if use_scvi:
                t_scvi = statistics.median(r[2] for r in rounds)
                ratios = [c / a for a, _, c in rounds]
                print(
                    f"  scvi-tools SCVI (cpu): {t_scvi:.3f} s/epoch ({n / t_scvi:,.0f} cells/s); "
                    f"pyrovae cells/s / scvi cells/s = {statistics.median(ratios):.3f} (median "
                    f"of rounds: {' '.join(f'{r:.2f}' for r in ratios)}; target >= 1.35)"
                )
    if "cuda" not in devices:
        print("  cuda: skipped (torch.cuda.is_available() is False)")
    return cpu_epoch


# -- (c) early-stopping overhead --------------------------------------------------------------
def validation(args, x) -> None:
    timed, repeats = args.val_epochs, args.val_repeats
    print(
        f"\n== (c) early stopping on CBMC {x.shape[0]}x{x.shape[1]}: validation_fraction=0.1, "
        f"patience 10^6; per epoch = (wall(1+{timed}) - wall(1)) / {timed}; {repeats} rounds, "
        "each timing none, by cells and by entries in turn"
    )
    extra = {by: [] for by in ("cells", "entries")}  # per round: t / t(no validation) - 1
    for r in range(repeats):
        base, _ = time_pyrovae(x, args, timed=timed)
        line = f"  round {r + 1}: no validation {base:.3f} s/epoch"
        for by in extra:
            t, _ = time_pyrovae(
                x, args, timed=timed, validation_fraction=0.1, validation_by=by, patience=10**6
            )
            extra[by].append(t / base - 1)
            line += f"; by {by} {t:.3f} ({100 * extra[by][-1]:+.1f}%)"
        print(line, flush=True)
    for by, values in extra.items():
        print(
            f"  validation by {by:7s} {100 * statistics.median(values):+.1f}% per epoch (median "
            f"of rounds: {' '.join(f'{100 * v:+.1f}%' for v in values)}; target <= +25%)",
            flush=True,
        )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["seed", "cbmc", "validation"], action="append")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CBMC .h5ad")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--repeats", type=int, default=3, help="(a): timed pairs per model")
    ap.add_argument("--seed-epochs", type=int, default=50, help="(a): epochs per timed fit")
    ap.add_argument("--cbmc-epochs", type=int, default=2, help="(b): timed epochs")
    ap.add_argument("--cbmc-repeats", type=int, default=3, help="(b): alternated rounds")
    ap.add_argument("--val-epochs", type=int, default=4, help="(c): timed epochs")
    ap.add_argument("--val-repeats", type=int, default=5, help="(c): alternated rounds")
    ap.add_argument("--n-samples", type=int, default=1, help="(b), (c): particles")
    ap.add_argument("--quick", action="store_true", help="smoke run: few epochs, CBMC subset")
    ap.add_argument("--quick-cells", type=int, default=1000, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats, args.seed_epochs, args.cbmc_epochs, args.val_epochs = 1, 5, 1, 1
        args.cbmc_repeats = args.val_repeats = 1
    only = set(args.only or ["seed", "cbmc", "validation"])
    m = machine()
    print(
        f"machine: {m['nproc']} CPUs ({m['cpu']}), torch {m['torch']}, pyro {m['pyro']}, "
        f"python {m['python']}; torch threads {torch.get_num_threads()}; load average "
        f"before {_load()}" + ("; QUICK smoke run (numbers not meaningful)" if args.quick else "")
    )
    start = time.perf_counter()
    if "seed" in only:
        seed_protocol(args)
    if only & {"cbmc", "validation"}:
        x = load_cbmc(args)
        if "cbmc" in only:
            cbmc(args, x)
        if "validation" in only:
            validation(args, x)
    print(
        f"\nload average after {_load()}; torch threads {torch.get_num_threads()}; "
        f"total {time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
