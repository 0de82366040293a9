"""Wall time of the reference protocol: one 3000-epoch full-batch fit of ``PVAE(100, 3)``.

Exactly the call of the reference note and of the README::

    sim = poisson_thinning()        # 500 x 100, numpy seed 0
    PVAE(100, 3).fit(sim.x, lr=1e-2, n_samples=10, max_epochs=3000)

The fit is timed end to end through the public API (``VAE.fit``: validation, model
construction and the SVI loop); time per epoch = wall time / epochs. With ``--epochs N < 3000``
the 3000-epoch time is extrapolated as ``3000 / N`` times the wall time (set-up included, so a
slight overestimate). ``benchmarks/speed.py`` compares the per-epoch time with the reference
implementation's. Several ``--threads`` values are run one after
the other (``--repeats`` times, alternating), so their times can be compared. The process CPU
time of the fit is printed too (scaled to 3000 epochs): with one thread it is close to what the
wall time would be on an otherwise idle machine.

    .venv/bin/python benchmarks/reference_protocol.py                     # full fit(s)
    .venv/bin/python benchmarks/reference_protocol.py --epochs 300        # extrapolated
    .venv/bin/python benchmarks/reference_protocol.py --threads 1 2 --epochs 300 --repeats 3
    .venv/bin/python benchmarks/reference_protocol.py --tuned-malloc      # see README
    .venv/bin/python benchmarks/reference_protocol.py --quick             # smoke run, < 60 s

Target: <= 60 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from _machine import machine  # benchmarks/_machine.py (scripts run from this folder)

from pyrovae import PVAE
from pyrovae.metrics import poisson_heldout_mean
from pyrovae.simulate import poisson_thinning

RESULTS = Path(__file__).resolve().parent / "results"
REFERENCE_EPOCHS = 3000
#: glibc malloc settings for ``--tuned-malloc``: keep freed memory instead of returning it to the
#: OS after every step (and page-faulting it back in the next one).
TUNED_MALLOC = {"MALLOC_TRIM_THRESHOLD_": str(2**30), "MALLOC_MMAP_THRESHOLD_": str(2**25)}


def timed_fit(x, epochs: int, lr: float, n_samples: int, seed: int):
    """``PVAE(100, 3).fit(...)`` through the public API; returns the estimator, its wall time
    and its process CPU time."""
    t0, c0 = time.perf_counter(), time.process_time()
    est = PVAE(x.shape[1], 3).fit(x, lr=lr, n_samples=n_samples, max_epochs=epochs, seed=seed)
    return est, time.perf_counter() - t0, time.process_time() - c0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=REFERENCE_EPOCHS)
    ap.add_argument("--threads", type=int, nargs="+", default=[1], help="torch threads to try")
    ap.add_argument("--repeats", type=int, default=1, help="fits per thread setting")
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--n-samples", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--tuned-malloc",
        action="store_true",
        help="run with glibc's MALLOC_TRIM_THRESHOLD_=1 GiB, MALLOC_MMAP_THRESHOLD_=32 MiB",
    )
    ap.add_argument("--quick", action="store_true", help="150 epochs, one fit (< 60 s)")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results")
    args = ap.parse_args(argv)
    if args.tuned_malloc and any(os.environ.get(k) != v for k, v in TUNED_MALLOC.items()):
        # glibc reads these once, at start-up: run this script again with them set
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **TUNED_MALLOC})
    if args.quick:
        args.epochs, args.repeats = 150, 1
    m = machine()
    malloc = " ".join(f"{k}={os.environ[k]}" for k in TUNED_MALLOC if k in os.environ)
    print(
        f"machine: {m['nproc']} CPUs ({m['cpu']}), torch {m['torch']}, pyro {m['pyro']}, "
        f"python {m['python']}, load average {m['load']}; malloc: {malloc or 'glibc defaults'}"
    )
    sim = poisson_thinning(0)
    print(
        f"PVAE(100, 3).fit(poisson_thinning().x [500 x 100], lr={args.lr}, "
        f"n_samples={args.n_samples}, max_epochs={args.epochs}, seed={args.seed})"
    )
    results = {t: [] for t in args.threads}
    for r in range(args.repeats):
        order = args.threads if r % 2 == 0 else list(reversed(args.threads))
        for threads in order:
            torch.set_num_threads(threads)
            est, wall, cpu = timed_fit(sim.x, args.epochs, args.lr, args.n_samples, args.seed)
            per_epoch = wall / args.epochs
            full = per_epoch * REFERENCE_EPOCHS
            how = "measured" if args.epochs >= REFERENCE_EPOCHS else "extrapolated"
            score = poisson_heldout_mean(est.denoise(sim.x, n_samples=100), sim.x_val)
            results[threads].append((wall, per_epoch, full, cpu * REFERENCE_EPOCHS / args.epochs))
            print(
                f"  threads {torch.get_num_threads()}: wall {wall:.1f} s for {args.epochs} epochs "
                f"({1e3 * per_epoch:.2f} ms/epoch, set-up included); {REFERENCE_EPOCHS} epochs: "
                f"{full:.1f} s ({how}); final loss {est.trace_[-1]:.5g}, held-out Poisson "
                f"log-lik {score:.4f}; process CPU time {cpu:.1f} s"
            )
    rows = []
    for threads, runs in results.items():
        med = statistics.median(run[1] for run in runs)
        full = statistics.median(run[2] for run in runs)
        cpu = statistics.median(run[3] for run in runs)
        how = "measured" if args.epochs >= REFERENCE_EPOCHS else f"from {args.epochs} epochs"
        print(
            f"threads {threads}: median epoch {1e3 * med:.2f} ms; {REFERENCE_EPOCHS}-epoch fit "
            f"{full:.1f} s ({how}; target <= 60 s), process CPU time {cpu:.1f} s"
        )
        rows.append(
            f"| reference protocol | PVAE(100, 3), 500x100, full batch, S={args.n_samples}, "
            f"{REFERENCE_EPOCHS} epochs{', tuned malloc' if malloc else ''} | "
            f"{1e3 * med:.1f} ms / epoch | {full:.0f} s ({how}; CPU time {cpu:.0f} s) | "
            f"{m['nproc']} x {m['cpu']}, torch {m['torch']}, {threads} thread(s) |"
        )
    header = "| benchmark | setting | time per epoch | wall time | machine |\n|---|---|---|---|---|"
    table = "\n".join([header, *rows])
    print("\nMarkdown rows:\n" + table)
    if not (args.no_save or args.quick):
        RESULTS.mkdir(exist_ok=True)
        with open(RESULTS / "reference_protocol.txt", "a") as fh:  # one section per run
            fh.write(
                f"\n## {time.strftime('%Y-%m-%d %H:%M')}: {' '.join(sys.argv[1:]) or '(defaults)'}"
                f"\nload average at start {m['load']}\n\n{table}\n"
            )


if __name__ == "__main__":
    main()
