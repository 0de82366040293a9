"""Cells per second of a data-parallel fit on CBMC with 1 and 2 processes (1 thread each).

    python benchmarks/ddp_speed.py [--data cbmc_top2000.h5ad] [--procs 1 2] [--epochs 2]

Each process count runs ``torchrun --standalone --nproc-per-node=W`` on this script's worker
mode: every rank fits ``VAE(prior="gamma", prior_by_gene=True, latent_dim=10, hidden=(128,))``
with library size factors, batch 128 and 1024 (the global batch, split across ranks), Adam 1e-3, no
validation; the time per epoch is (wall(1 + E epochs) - wall(1 epoch)) / E, so start-up and
the first epoch cancel out. Rank 0 prints the result. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cbmc_top2000.h5ad"


def worker(data: Path, epochs: int, batch_size: int) -> None:
    import anndata
    import torch

    import pyrovae
    from pyrovae import distributed

    torch.set_num_threads(1)
    with distributed.process_group("gloo"):
        x = anndata.read_h5ad(data).X
        kw = dict(
            size_factor="library", batch_size=batch_size, lr=1e-3, seed=0, validation_fraction=0
        )

        def wall(n_epochs: int) -> float:
            distributed.barrier()
            t = time.perf_counter()
            pyrovae.VAE(prior="gamma", prior_by_gene=True, latent_dim=10, hidden=(128,)).fit(
                x, max_epochs=n_epochs, **kw
            )
            distributed.barrier()
            return time.perf_counter() - t

        per_epoch = (wall(1 + epochs) - wall(1)) / epochs
        if distributed.is_main():
            w = distributed.world_size()
            print(
                f"W={w}, batch {batch_size}: {per_epoch:.3f} s/epoch, {x.shape[0] / per_epoch:,.0f} cells/s",
                flush=True,
            )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, nargs="+", default=[128, 1024])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.data, args.epochs, args.batch_size[0])
        return 0
    print(f"load average before {os.getloadavg()}", flush=True)
    for batch_size in args.batch_size:
        for w in args.procs:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
            cmd += [f"--nproc-per-node={w}", __file__, "--worker", "--data", str(args.data)]
            cmd += ["--epochs", str(args.epochs), "--batch-size", str(batch_size)]
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            subprocess.run(cmd, check=True, env=env)
    print(f"load average after {os.getloadavg()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
