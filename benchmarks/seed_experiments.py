"""Run the experiment notebooks end to end and print their headline tables.

Expected run time at full length, one CPU thread per kernel, the notebooks one after the other:
02_poisson_thinning about 30-50 min (24 VAE fits, 12 of them for 3000 full-batch epochs at
roughly 40-100 ms per epoch), 03_imputation about 20-35 min (the NMF/NBMF rank sweep alone took
5.5 min; 12 VAE fits, 6 of them for 3000 epochs), 04_custom_prior 1-2 min (measured: 59 s and
88 s) -- about one to one and a half hours in all. The 02/03 figures are estimates from timed
pieces on a busy 2-core machine; each notebook prints its own run time in its last cell. In smoke
mode each notebook takes 15-30 s.

Usage (from anywhere; the notebooks run with their own folder as working directory)::

    python benchmarks/seed_experiments.py            # full length: executes notebooks/02-04 in
                                                     # place, so the committed notebooks carry the
                                                     # outputs, and writes benchmarks/results/
    python benchmarks/seed_experiments.py 04 03      # only these notebooks (name prefixes)
    python benchmarks/seed_experiments.py --smoke    # smoke mode (PYROVAE_SMOKE=1): executed copies
                                                     # and CSVs go to a temporary folder; nothing in
                                                     # the repository changes
    python benchmarks/seed_experiments.py --tables   # only print the tables of benchmarks/results/

Settings live in ``pyrovae/experiments.py``. A notebook that fails is not overwritten; its
partially executed copy is written to a temporary folder and the script exits with status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbclient
import nbformat
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(
    p for p in (REPO / "notebooks").glob("0*.ipynb") if p.name[:2] in ("02", "03", "04")
)
RESULTS = REPO / "benchmarks" / "results"


def execute(path: Path, out: Path) -> float:
    """Execute ``path`` with its folder as working directory, write it to ``out``; seconds."""
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=None,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    try:
        client.execute()
    except Exception:
        failed = Path(tempfile.mkdtemp(prefix="pyrovae-failed-")) / path.name
        nbformat.write(nb, failed)
        print(f"{path.name} FAILED; partially executed copy: {failed}", file=sys.stderr)
        raise
    nbformat.write(nb, out)
    return time.perf_counter() - start


def _read(folder: Path, name: str) -> pd.DataFrame | None:
    path = folder / name
    if not path.exists():
        print(f"(no {path})")
        return None
    return pd.read_csv(path)


def print_tables(folder: Path) -> None:
    """The headline tables, read back from the CSVs the notebooks wrote."""
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 20)
    held = "held out: denoise(x) vs x_val"
    thin = _read(folder, "thinning.csv")
    if thin is not None:
        print("\n== Poisson thinning: mean log pmf of x_val under denoise(x) (higher is better)")
        vae = thin[thin["settings"].isin(["REFERENCE", "RECOMMENDED"])]
        table = vae.pivot_table(index="model", columns=["objective", "settings"], values=held)
        columns = [(o, s) for o in ("elbo", "iwae") for s in ("REFERENCE", "RECOMMENDED")]
        table = table.reindex(columns=[c for c in columns if c in table.columns])
        print(table.loc[list(dict.fromkeys(vae["model"]))].round(3).to_string())
        other = thin[~thin["settings"].isin(["REFERENCE", "RECOMMENDED"])]
        print(other.drop_duplicates("model").set_index("model")[[held]].round(3).to_string())
    imp = _read(folder, "imputation.csv")
    if imp is not None:
        print("\n== Imputation: Poisson log pmf summed over the held-out entries")
        cols = [c for c in imp.columns if c.startswith("held out")]
        print(imp.set_index(["model", "objective", "settings"])[cols].round(0).to_string())
    lim = _read(folder, "imputation_limits.csv")
    if lim is not None:
        print(lim.set_index("row").round(0).to_string())
    prior = _read(folder, "custom_prior.csv")
    if prior is not None:
        print("\n== Custom log-normal prior vs NBVAE (thinning data, same settings)")
        print(prior.set_index("row").round(3).to_string())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("only", nargs="*", help="notebook name prefixes (default: 02 03 04)")
    parser.add_argument("--smoke", action="store_true", help="smoke mode into a temporary folder")
    parser.add_argument("--tables", action="store_true", help="only print the existing tables")
    args = parser.parse_args(argv)
    if args.tables:
        print_tables(RESULTS)
        return 0
    chosen = [p for p in NOTEBOOKS if not args.only or p.name.startswith(tuple(args.only))]
    if not chosen:
        parser.error(f"no notebook matches {args.only}")
    # the kernels inherit this environment
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    os.environ.pop("MPLBACKEND", None)  # keep the inline backend, so figures are embedded
    if args.smoke:
        out_dir = Path(tempfile.mkdtemp(prefix="pyrovae-smoke-"))
        results = out_dir / "results"
        os.environ["PYROVAE_SMOKE"] = "1"
        os.environ["PYROVAE_RESULTS"] = str(results)
    else:
        out_dir, results = None, RESULTS
        os.environ.pop("PYROVAE_SMOKE", None)
        os.environ.pop("PYROVAE_RESULTS", None)  # the notebooks write to ../benchmarks/results
    mode = "smoke" if args.smoke else "full"
    for path in chosen:
        out = path if out_dir is None else out_dir / path.name
        print(f"running {path.name} ({mode}) ...", flush=True)
        seconds = execute(path, out)
        print(f"  {path.name}: {seconds:.1f} s -> {out}", flush=True)
    print_tables(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
