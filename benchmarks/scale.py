"""One epoch of minibatch NBVAE training on a large sparse matrix: wall time and peak memory.

A synthetic count matrix of ``cells x 2000`` genes with about 95% zeros is built directly as a
``scipy.sparse`` CSR matrix (cells in chunks, never a dense cells x genes array) with uneven
gene detection rates and cell depths, then

    NBVAE(latent_dim=10).fit(x, size_factor="library", batch_size=1024, max_epochs=1)

is timed. Each size runs in a fresh child process, so its peak resident memory
(``getrusage(RUSAGE_SELF).ru_maxrss``: data generation, validation, training) is its own; a
sampler thread also records the peak RSS while ``fit`` runs. The epoch time (the SVI loop only)
comes from a callback on :func:`pyrovae.fit.run_svi`. The one-time cost of the first torch
optimizer of a process (it imports ``torch._dynamo``, about 1 s) is paid before the timing.

    .venv/bin/python benchmarks/scale.py                      # 10k, 30k and 100k cells
    .venv/bin/python benchmarks/scale.py --cells 100000 300000
    .venv/bin/python benchmarks/scale.py --quick              # 10k cells only, < 60 s

Target: peak memory < 4 GiB at 100,000 x 2,000.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from _machine import machine  # benchmarks/_machine.py (scripts run from this folder)

RESULTS = Path(__file__).resolve().parent / "results"
GIB = 2**30


def synthetic_counts(
    n_cells: int, n_genes: int = 2000, density: float = 0.05, seed: int = 0, chunk: int = 10_000
) -> sp.csr_matrix:
    """Sparse counts with roughly ``density`` non-zeros, built chunk by chunk as CSR.

    Cell ``i`` gets about ``density * n_genes * depth_i`` non-zero genes (``depth`` log-normal,
    mean 1), drawn with gene weights that are log-normal too (so detection rates differ between
    genes); each non-zero value is ``1 + Geometric``-distributed with a gene-dependent mean.
    Repeated draws of one gene in a cell are summed (still integer counts).
    """
    rng = np.random.default_rng(seed)
    gene_w = rng.lognormal(0.0, 1.0, n_genes)
    gene_w /= gene_w.sum()
    gene_p = 1.0 / (1.0 + 2.0 * gene_w * n_genes)  # geometric success prob; mean 1/p
    gene_p = np.clip(gene_p, 0.05, 0.95)
    # collisions of repeated draws lose some non-zeros: draw a little more to end near density
    draw = -np.log1p(-density) * n_genes / (1.0 - 0.5 * density * np.square(gene_w).sum() * n_genes)
    data, indices, counts = [], [], []
    for start in range(0, n_cells, chunk):
        m = min(chunk, n_cells - start)
        depth = rng.lognormal(-0.125, 0.5, m)  # mean 1
        k = np.minimum(rng.poisson(draw * depth), n_genes)
        rows = np.repeat(np.arange(m), k)
        cols = rng.choice(n_genes, size=rows.size, p=gene_w)
        vals = rng.geometric(gene_p[cols]).astype(np.float32)
        block = sp.csr_matrix((vals, (rows, cols)), shape=(m, n_genes))  # sums duplicates
        block.sum_duplicates()
        data.append(block.data)
        indices.append(block.indices)
        counts.append(np.diff(block.indptr))
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int64)
    x = sp.csr_matrix(
        (np.concatenate(data), np.concatenate(indices), indptr), shape=(n_cells, n_genes)
    )
    return x


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


class PeakSampler(threading.Thread):
    """Samples the resident set size every ``interval`` seconds; ``peak`` is the largest."""

    def __init__(self, interval: float = 0.005):
        super().__init__(daemon=True)
        self.interval, self.peak, self._done = interval, rss_bytes(), threading.Event()

    def run(self):
        while not self._done.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def stop(self):
        self._done.set()
        self.join()
        self.peak = max(self.peak, rss_bytes())


def child(args) -> dict:
    """One size, in this process: build the matrix, fit one epoch, report times and memory."""
    import torch

    import pyrovae.estimator as estimator_module
    from pyrovae import NBVAE

    torch.set_num_threads(args.threads)
    # the first optimizer of a process imports torch._dynamo (about 1 s, once): not an epoch cost
    t = time.perf_counter()
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    t_first_optimizer = time.perf_counter() - t
    rss_imports = rss_bytes()
    t = time.perf_counter()
    x = synthetic_counts(args.cells[0], args.genes, args.density, args.seed)
    t_data = time.perf_counter() - t
    x_bytes = x.data.nbytes + x.indices.nbytes + x.indptr.nbytes
    rss_data = rss_bytes()

    stamps: list[float] = []
    run_svi = estimator_module.run_svi

    def run_svi_with_clock(*a, **kw):
        stamps.append(time.perf_counter())
        kw["callback"] = lambda epoch, loss: stamps.append(time.perf_counter())
        return run_svi(*a, **kw)

    estimator_module.run_svi = run_svi_with_clock
    sampler = PeakSampler()
    sampler.start()
    t, c = time.perf_counter(), time.process_time()
    est = NBVAE(latent_dim=10).fit(
        x,
        size_factor="library",
        batch_size=args.batch_size,
        n_samples=args.n_samples,
        max_epochs=1,
        seed=args.seed,
    )
    t_fit, cpu_fit = time.perf_counter() - t, time.process_time() - c
    sampler.stop()
    estimator_module.run_svi = run_svi
    return dict(
        cells=x.shape[0],
        genes=x.shape[1],
        zeros=1.0 - x.nnz / (x.shape[0] * x.shape[1]),
        csr_bytes=x_bytes,
        data_s=t_data,
        fit_s=t_fit,
        fit_cpu_s=cpu_fit,
        epoch_s=stamps[1] - stamps[0],
        setup_s=stamps[0] - t,
        first_optimizer_s=t_first_optimizer,
        loss=float(est.trace_[-1]),
        rss_imports=rss_imports,
        rss_data=rss_data,
        peak_fit=sampler.peak,
        maxrss=maxrss_bytes(),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--density", type=float, default=0.05, help="fraction of non-zeros")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--n-samples", type=int, default=1, help="particles (fit's default: 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="10,000 cells only (< 60 s)")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.quick:
        args.cells = [10_000]
    m = machine()
    print(
        f"machine: {m['nproc']} CPUs ({m['cpu']}), python {m['python']}, "
        f"load average {m['load']}; NBVAE(latent_dim=10), batch {args.batch_size}, "
        f"S={args.n_samples}, size_factor='library', one epoch; torch threads {args.threads}"
    )
    results = []
    for n in args.cells:
        cmd = [sys.executable, __file__, "--child", "--cells", str(n)]
        for opt in ("genes", "density", "batch_size", "n_samples", "threads", "seed"):
            cmd += [f"--{opt.replace('_', '-')}", str(getattr(args, opt))]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        results.append(r)
        print(
            f"  {r['cells']:>7} x {r['genes']} ({100 * r['zeros']:.1f}% zeros, CSR "
            f"{r['csr_bytes'] / 2**20:.0f} MiB, built in {r['data_s']:.1f} s): fit "
            f"{r['fit_s']:.1f} s (process CPU time {r['fit_cpu_s']:.1f} s), of which epoch "
            f"{r['epoch_s']:.1f} s "
            f"({1e3 * r['epoch_s'] / r['cells'] * 1000:.0f} ms per 1000 cells); peak RSS during "
            f"fit {r['peak_fit'] / GIB:.2f} GiB, process max RSS {r['maxrss'] / GIB:.2f} GiB "
            f"(after imports {r['rss_imports'] / GIB:.2f} GiB, with data "
            f"{r['rss_data'] / GIB:.2f} GiB)"
        )
    base = results[0]
    if len(results) > 1:
        growth = ", ".join(
            f"{r['cells'] // 1000}k: x{r['epoch_s'] / base['epoch_s']:.2f} time for "
            f"x{r['cells'] / base['cells']:.0f} cells"
            for r in results[1:]
        )
        print(f"time growth relative to {base['cells'] // 1000}k cells: {growth}")
    worst = max(r["maxrss"] for r in results)
    print(f"largest process max RSS {worst / GIB:.2f} GiB (target < 4 GiB)")
    header = (
        "| benchmark | setting | epoch wall time | fit wall time (CPU time) | peak memory (max RSS) | "
        "machine |\n|---|---|---|---|---|---|"
    )
    rows = [
        f"| scale | NBVAE, {r['cells']:,} x {r['genes']:,} CSR ({100 * r['zeros']:.0f}% zeros), "
        f"batch {args.batch_size}, S={args.n_samples} | {r['epoch_s']:.1f} s | {r['fit_s']:.1f} s "
        f"({r['fit_cpu_s']:.1f} s) | "
        f"{r['maxrss'] / GIB:.2f} GiB | {m['nproc']} x {m['cpu']}, torch {r['torch']}, "
        f"{r['threads']} thread(s) |"
        for r in results
    ]
    table = "\n".join([header, *rows])
    print("\nMarkdown rows:\n" + table)
    if not (args.no_save or args.quick):
        RESULTS.mkdir(exist_ok=True)
        with open(RESULTS / "scale.txt", "a") as fh:  # one section per run
            fh.write(
                f"\n## {time.strftime('%Y-%m-%d %H:%M')}: {' '.join(sys.argv[1:]) or '(defaults)'}"
                f"\nload average at start {m['load']}\n\n{table}\n"
            )
        csv = RESULTS / "scale.csv"
        keys = list(results[0])
        new_file = not csv.exists()
        with open(csv, "a") as fh:
            if new_file:
                fh.write(",".join(keys) + "\n")
            for r in results:
                fh.write(",".join(str(r[k]) for k in keys) + "\n")


if __name__ == "__main__":
    main()
