"""Peak memory of out-of-core (``--backed``) reading and fitting vs the number of cells.

Generates synthetic CSR ``.h5ad`` files (integer counts, ``--density`` non-zero, 2,000 genes),
written with h5py one block of rows at a time so that generating them never holds the matrix
either, then measures the peak RSS of one child process per case:

* ``read``   — open a :class:`pyrovae.sources.BackedSource` (its streaming validation and
  library-size pass), then one block-shuffled epoch of batches (no model);
* ``memory`` — the in-memory comparison: ``anndata.read_h5ad`` + ``as_counts`` + one epoch of
  batches from :class:`pyrovae.data.CountData`;
* ``fit``    — ``python -m pyrovae fit FILE --backed --epochs 1 --batch-size 1024 --no-denoised``
  (needs an estimator that accepts data sources).

Each case runs as ``python memory.py _measure -- <command>``: a fresh process that runs the
command as its only child and reports ``getrusage(RUSAGE_CHILDREN).ru_maxrss``, so each figure is
that one command's peak. All with ``OMP_NUM_THREADS=1``. Files go to ``--dir`` (default
``/tmp/pyrovae_memory``), never into the repository.

Usage::

    python benchmarks/memory.py --cells 250000 1000000 --modes read memory fit
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def generate(path: Path, n_cells: int, n_genes: int = 2000, density: float = 0.02, seed: int = 0):
    """Write a CSR ``.h5ad`` of integer counts block by block (anndata writes obs/var)."""
    import anndata
    import h5py
    import pandas as pd

    obs = pd.DataFrame(index=pd.Index([f"c{i}" for i in range(n_cells)], dtype=str))
    var = pd.DataFrame(index=pd.Index([f"g{j}" for j in range(n_genes)], dtype=str))
    anndata.AnnData(obs=obs, var=var).write_h5ad(path)
    del obs
    rng = np.random.default_rng(seed)
    block = 4096
    with h5py.File(path, "r+") as f:
        x = f.create_group("X")
        x.attrs["encoding-type"] = "csr_matrix"
        x.attrs["encoding-version"] = "0.1.0"
        x.attrs["shape"] = (n_cells, n_genes)
        kw = dict(maxshape=(None,), chunks=(2**18,))
        data = x.create_dataset("data", shape=(0,), dtype=np.float32, **kw)
        indices = x.create_dataset("indices", shape=(0,), dtype=np.int32, **kw)
        indptr = x.create_dataset("indptr", shape=(n_cells + 1,), dtype=np.int64)
        indptr[0] = 0
        nnz = 0
        for a in range(0, n_cells, block):
            b = min(a + block, n_cells)
            mask = rng.random((b - a, n_genes), dtype=np.float32) < density
            mask[np.arange(b - a), rng.integers(n_genes, size=b - a)] = True  # no empty cell
            rows, cols = np.nonzero(mask)
            values = 1 + rng.poisson(1.0, size=len(rows)).astype(np.float32)
            data.resize((nnz + len(rows),))
            indices.resize((nnz + len(rows),))
            data[nnz:] = values
            indices[nnz:] = cols
            indptr[a + 1 : b + 1] = nnz + np.cumsum(np.bincount(rows, minlength=b - a))
            nnz += len(rows)
    return nnz


# --------------------------------------------------------------------------------------------
# the measured children
# --------------------------------------------------------------------------------------------


def child_read(path: str, batch_size: int) -> dict:
    import torch

    from pyrovae.sources import BackedSource

    t = time.perf_counter()
    src = BackedSource(path)  # validation + library sizes: one streaming pass
    order = src.epoch_order(torch.Generator().manual_seed(0))
    total = 0.0
    for i in range(0, len(order), batch_size):
        x, _, _ = src.batch(np.sort(order[i : i + batch_size]))
        total += float(x.sum())
    assert total == float(src.library_size().sum())
    return {"cells": src.n_cells, "seconds": time.perf_counter() - t}


def child_memory(path: str, batch_size: int) -> dict:
    import anndata
    import torch

    from pyrovae.data import CountData, as_counts

    t = time.perf_counter()
    data = CountData(as_counts(anndata.read_h5ad(path).X))
    order = torch.randperm(data.n_cells, generator=torch.Generator().manual_seed(0)).numpy()
    for i in range(0, len(order), batch_size):
        data.batch(np.sort(order[i : i + batch_size]))
    return {"cells": data.n_cells, "seconds": time.perf_counter() - t}


def measure(command: list[str]) -> dict:
    """Run ``command`` as this process's only child; its peak RSS in MiB (Linux: KiB units)."""
    t = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return {
        "returncode": proc.returncode,
        "peak_rss_mib": peak * scale / 2**20,
        "wall_s": time.perf_counter() - t,
        "stdout_tail": proc.stdout[-400:],
        "stderr_tail": proc.stderr[-800:],
    }


def run_case(mode: str, path: Path, batch_size: int, workdir: Path) -> dict:
    py = sys.executable
    if mode in ("read", "memory"):
        child = [py, __file__, "_child", mode, str(path), "--batch-size", str(batch_size)]
    elif mode == "fit":
        out = workdir / f"out_{path.stem}.h5ad"
        child = [py, "-m", "pyrovae", "fit", str(path), "--backed", "--epochs", "1"]
        child += ["--batch-size", str(batch_size), "--no-denoised", "--quiet", "--out", str(out)]
    else:
        raise ValueError(mode)
    wrapper = [py, __file__, "_measure", "--", *child]
    proc = subprocess.run(wrapper, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"returncode": proc.returncode, "stderr_tail": proc.stderr[-800:]}
    return json.loads(proc.stdout)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    m = sub.add_parser("_measure")
    m.add_argument("command", nargs=argparse.REMAINDER)
    c = sub.add_parser("_child")
    c.add_argument("mode", choices=("read", "memory"))
    c.add_argument("path")
    c.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--cells", type=int, nargs="+", default=[250_000, 1_000_000])
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--density", type=float, default=0.02)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--modes", nargs="+", default=["read", "memory", "fit"])
    parser.add_argument(
        "--memory-max-cells",
        type=int,
        default=250_000,
        help="run the in-memory comparison only up to this many cells",
    )
    parser.add_argument("--dir", type=Path, default=Path("/tmp/pyrovae_memory"))
    args = parser.parse_args(argv)
    if args.cmd == "_measure":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        print(json.dumps(measure(command)))
        return 0
    if args.cmd == "_child":
        fn = child_read if args.mode == "read" else child_memory
        print(json.dumps(fn(args.path, args.batch_size)))
        return 0

    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["PYTHONPATH"] = f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    args.dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.cells:
        path = args.dir / f"cells_{n}_genes_{args.genes}.h5ad"
        if not path.exists():
            t = time.perf_counter()
            nnz = generate(path, n, args.genes, args.density)
            print(
                f"generated {path} ({nnz} stored counts, {path.stat().st_size / 2**20:.0f} MiB) "
                f"in {time.perf_counter() - t:.0f} s",
                flush=True,
            )
        for mode in args.modes:
            if mode == "memory" and n > args.memory_max_cells:
                continue
            res = run_case(mode, path, args.batch_size, args.dir)
            rows.append((n, mode, res))
            if res.get("returncode") == 0:
                print(
                    f"{n:>9} cells  {mode:<7} peak RSS {res['peak_rss_mib']:8.1f} MiB  "
                    f"({res['wall_s']:.0f} s)",
                    flush=True,
                )
            else:
                print(f"{n:>9} cells  {mode:<7} FAILED: {res.get('stderr_tail', '')}", flush=True)
    by_mode: dict = {}
    for n, mode, res in rows:
        if res.get("returncode") == 0:
            by_mode.setdefault(mode, []).append((n, res["peak_rss_mib"]))
    for mode, values in by_mode.items():
        if len(values) > 1:
            (n0, r0), (n1, r1) = values[0], values[-1]
            print(f"{mode}: {n1} vs {n0} cells: peak RSS ratio {r1 / r0:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
