"""Multi-seed tables of the reference note's two simulation experiments (Poisson thinning and
imputation of 10% hidden entries), and the README's results tables generated from them.

Every VAE row is fitted with 5 torch seeds (``seed=0..4``; the simulations stay the note's,
numpy seed 0) under the two settings of ``pyrovae.experiments`` (``REFERENCE``: the note's
3000 full-batch epochs; ``RECOMMENDED``: early stopping on 10% held-out observed entries and a
KL warm-up), with the ELBO and the IWAE bound. A third row per model, ``chosen on validation``,
repeats the setting that a validation split of ``x`` picks (molecular cross-validation of ``x``
for thinning, 10% of the observed entries for imputation) -- never ``x_val`` or the scored
entries. Matrix-factorisation ranks are chosen the same way. Everything is computed by the
functions of ``pyrovae/experiments.py``, which the notebooks 02-03 use as well.

Outputs (``--out``, default ``benchmarks/results``):

* ``thinning_seeds.csv``, ``imputation_seeds.csv``: one row per model, objective, setting and
  seed (column ``seed``), plus the seed-independent baselines and limits;
* ``summary_thinning.csv``, ``summary_imputation.csv``: mean, sd and number of seeds;
* ``thinning_nmf_ranks.csv``, ``imputation_mf_ranks.csv``: validation scores per rank;
* ``tables.md``: the Markdown tables, printed as well; ``--update-readme`` copies them into
  ``docs/results.md`` and, the rows of latent dimension 3 only, into ``README.md``, between
  the ``results:begin``/``results:end`` markers of each.

Cost at full length: 4 fits per (model, objective, seed) -- two settings, plus the two
validation fits of the selection -- half of them 3000 full-batch epochs at roughly 40-100 ms
per epoch on one CPU thread: about 6-8 CPU hours in all (60 thinning and 30 imputation tasks of
a few minutes to ~15 minutes each, plus the rank sweeps: ~15 min). ``--jobs N`` runs N tasks
at a time, one thread each; ``--objectives elbo``, ``--seeds 0 1 2`` or ``--no-select`` cut it
down. ``--select-only`` runs just the two validation fits of each selection and merges their
scores and ``chosen on validation`` rows into the existing CSVs (the rows of the two settings
are kept as they are): half the cost of a full run. Any other run merges its rows into the
existing CSVs: they replace the rows of the same objective, model and seed and keep the rest
(delete the CSVs to start afresh). Each finished selection is saved at once
under ``selection_parts/`` and kept on a rerun, so an interrupted run resumes. ``--smoke``
(tiny epochs, 2 seeds, ranks 1-3, written to a temporary folder unless ``--out`` is given) runs
in about a minute and is what the tests run.

Usage::

    python benchmarks/seed_experiments.py --jobs 16 --update-readme
    python benchmarks/seed_experiments.py --experiments thinning --objectives elbo --jobs 4
    python benchmarks/seed_experiments.py --objectives elbo --select-only --jobs 2
    python benchmarks/seed_experiments.py --smoke
    python benchmarks/seed_experiments.py --tables          # reprint tables.md from the CSVs
    python benchmarks/seed_experiments.py --notebooks 02 03 # also execute those notebooks
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
README = REPO / "README.md"
DOCS = REPO / "docs" / "results.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
SCORE_COLUMNS = {
    "thinning": "held out: denoise(x) vs x_val",
    "imputation": "held out: denoise(x, w)",
}


def _task(kind: str, objective: str | None, seed: int | None, model: str | None, select: bool):
    """One unit of work, run in a worker process: a list of rows (and, for the rank sweeps, a
    frame of validation scores)."""
    import torch

    torch.set_num_threads(1)
    from pyrovae import experiments as ex
    from pyrovae.simulate import imputation, poisson_thinning

    if kind.endswith("-select"):
        kind = kind.removesuffix("-select")
        sim = poisson_thinning() if kind == "thinning" else imputation()
        protocol = "thinning" if kind == "thinning" else "entries"
        w = None if kind == "thinning" else sim.w
        name, scores = ex.select_setting(model, sim.x, w, protocol, objective, seed)
        selection = {"objective": objective, "model": model, "seed": seed}
        return [], {**selection, "chosen": name, "scores": scores}
    if kind == "thinning":
        return ex.thinning_rows(poisson_thinning(), seed, objective, (model,), select), None
    if kind == "imputation":
        return ex.imputation_rows(imputation(), seed, objective, (model,), select), None
    if kind == "thinning-baselines":
        sim = poisson_thinning()
        selected = ex.nmf_thinning_selected(sim)
        return ex.thinning_baseline_rows(sim), selected["validation"].to_frame()
    if kind == "imputation-baselines":
        rows, sweep = ex.imputation_baseline_rows(imputation())
        return rows, sweep
    raise ValueError(kind)


def merge_selections(frame: pd.DataFrame, selections: list[dict]) -> pd.DataFrame:
    """Merge the validation choices of a ``--select-only`` run into a long frame: every candidate
    row of the same objective, model and seed gets its ``validation score``, and a
    ``chosen on validation`` row repeats the candidate with the best one (replacing an earlier
    choice for that objective, model and seed)."""
    from pyrovae import experiments as ex

    frame = frame.copy()
    if "chosen settings" not in frame:
        frame["chosen settings"] = None
    if "validation score" not in frame:
        frame["validation score"] = np.nan
    for sel in selections:
        same = (
            (frame["objective"] == sel["objective"])
            & (frame["model"] == sel["model"])
            & (pd.to_numeric(frame["seed"]) == sel["seed"])
        )
        frame = frame[~(same & (frame["settings"] == ex.CHOSEN))]
        same = same.loc[frame.index]
        for name, value in sel["scores"].items():
            frame.loc[same & (frame["settings"] == name), "validation score"] = value
        name = sel["chosen"]  # select_setting's choice
        row = frame[same & (frame["settings"] == name)]
        if len(row) != 1:
            raise SystemExit(f"{len(row)} rows of {name} for {sel}: run without --select-only")
        extra = {"settings": ex.CHOSEN, "chosen settings": name}
        frame = pd.concat([frame, row.assign(**extra)], ignore_index=True)
    return frame


def merge_rows(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """The rows of a run merged into the existing long CSV: the new rows replace every old row
    of the same objective, model and seed (baselines and limits have no seed), the others are
    kept -- so a run of a subset (``--objectives iwae``, ``--seeds 3 4``) adds to the tables
    instead of overwriting them."""
    if new.empty:
        return old

    def keys(frame):
        seed = pd.to_numeric(frame["seed"], errors="coerce").fillna(-1).astype(int)
        return list(zip(frame["objective"].astype(str), frame["model"], seed, strict=True))

    replaced = set(keys(new))
    keep = [k not in replaced for k in keys(old)]
    return pd.concat([old[keep], new], ignore_index=True)


def tables(out: Path, latent_dims: tuple[int, ...] | None = None) -> str:
    """The Markdown tables computed from the long CSVs in ``out`` (the thinning rows of
    ``latent_dims`` only, when given)."""
    from pyrovae import experiments as ex

    frames = {}
    for kind in ("thinning", "imputation"):
        path = out / f"{kind}_seeds.csv"
        frames[kind] = pd.read_csv(path) if path.exists() else None
    models = ex.MODELS_THINNING
    if latent_dims is not None:
        models = tuple(m for m in models if int(m.rsplit("-", 1)[1]) in latent_dims)
    return ex.markdown_tables(frames["thinning"], frames["imputation"], models)


def readme_tables(out: Path) -> str:
    """The README's block: the tables at latent dimension 3 (the README stays under 8 kB), and a
    link to docs/results.md, whose block has every row, when there are others."""
    text = tables(out, latent_dims=(3,))
    if text != tables(out):
        text += "\nLatent dimension 10 as well: [results.md](docs/results.md#tables).\n"
    return text


def update_documents(out: Path) -> None:
    """Write the tables into the README (:func:`readme_tables`) and docs/results.md (all)."""
    update_readme(readme_tables(out))
    update_readme(tables(out), DOCS)


def update_readme(text: str, readme: Path = README) -> None:
    """Replace the README's block between the results markers with ``text``."""
    old = readme.read_text()
    if BEGIN not in old or END not in old:
        raise SystemExit(f"{readme} has no {BEGIN} ... {END} block")
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    readme.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}{END}", old))


def execute_notebook(path: Path, target: Path) -> float:
    """Execute a notebook with its folder as working directory, write it to ``target``;
    seconds."""
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    start = time.perf_counter()
    try:
        client.execute()
    except Exception:
        failed = Path(tempfile.mkdtemp(prefix="pyrovae-failed-")) / path.name
        nbformat.write(nb, failed)
        print(f"{path.name} FAILED; partially executed copy: {failed}", file=sys.stderr)
        raise
    nbformat.write(nb, target)
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", nargs="+", default=["thinning", "imputation"])
    parser.add_argument("--objectives", nargs="+", default=["elbo", "iwae"])
    parser.add_argument("--seeds", nargs="+", type=int, help="torch seeds (default 0..4)")
    parser.add_argument("--models", nargs="+", help="model labels, e.g. NBVAE-3 (default all)")
    parser.add_argument("--no-select", action="store_true", help="skip the validation choices")
    parser.add_argument("--no-baselines", action="store_true", help="skip NMF sweeps and limits")
    parser.add_argument(
        "--select-only",
        action="store_true",
        help="only the validation fits; merge the choices into the existing CSVs in --out",
    )
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (1 thread each)")
    parser.add_argument("--out", type=Path, help="output folder (default benchmarks/results)")
    parser.add_argument("--smoke", action="store_true", help="tiny fits (PYROVAE_SMOKE=1)")
    parser.add_argument("--tables", action="store_true", help="only print tables from the CSVs")
    parser.add_argument(
        "--update-readme",
        action="store_true",
        help="write the tables into README.md (latent dimension 3) and docs/results.md (all)",
    )
    parser.add_argument("--notebooks", nargs="*", help="then execute these notebooks (prefixes)")
    args = parser.parse_args(argv)

    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    if args.smoke:
        os.environ["PYROVAE_SMOKE"] = "1"
    else:
        os.environ.pop("PYROVAE_SMOKE", None)
    from pyrovae import experiments as ex

    out = args.out or (Path(tempfile.mkdtemp(prefix="pyrovae-smoke-")) if args.smoke else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    if args.tables:
        text = tables(out)
        (out / "tables.md").write_text(text)
        print(text)
        if args.update_readme:
            update_documents(out)
        return 0

    seeds = args.seeds if args.seeds is not None else ex.seeds()
    models = {"thinning": ex.MODELS_THINNING, "imputation": ex.MODELS_IMPUTATION}
    tasks = []
    for kind in args.experiments:
        if kind not in models:
            parser.error(f"unknown experiment {kind!r}")
        chosen = [m for m in models[kind] if not args.models or m in args.models]
        tasks += [
            (f"{kind}-select" if args.select_only else kind, o, s, m, not args.no_select)
            for o in args.objectives
            for s in seeds
            for m in chosen
        ]
        if args.select_only:  # before any fit: every selection needs its two rows
            path = out / f"{kind}_seeds.csv"
            if not path.exists():
                parser.error(f"--select-only merges into {path}, which does not exist")
            frame = pd.read_csv(path)
            cols = ("objective", "model", "settings", "seed")
            have = set(zip(*(frame[c] for c in cols), strict=True))
            missing = [
                t[1:4]
                for t in tasks
                if t[0] == f"{kind}-select"
                and not all(
                    (t[1], t[3], name, t[2]) in have for name in ("REFERENCE", "RECOMMENDED")
                )
            ]
            if missing:
                parser.error(f"--select-only: no {kind} rows to merge into for {missing[:3]} ...")
        if not args.no_baselines and not args.select_only:
            tasks.insert(0, (f"{kind}-baselines", None, None, None, False))
    rows = {"thinning": [], "imputation": []}
    extra, selections = {}, {"thinning": [], "imputation": []}
    parts = out / "selection_parts"  # --select-only: one file per finished selection (resumable)

    def part(t) -> Path:
        return parts / f"{t[0]}_{t[1]}_{t[3]}_seed{t[2]}.json"

    if args.select_only:
        for t in [t for t in tasks if part(t).exists()]:
            selections[t[0].removesuffix("-select")].append(json.loads(part(t).read_text()))
            tasks.remove(t)
            print(f"  kept {t[:4]} from {part(t)}", flush=True)
    print(f"{len(tasks)} tasks, {args.jobs} at a time, seeds {seeds}, out {out}", flush=True)
    start = time.perf_counter()

    def collect(t, result):
        new, frame = result
        kind = t[0].removesuffix("-baselines").removesuffix("-select")
        rows[kind] += new
        if t[0].endswith("-select"):
            selections[kind].append(frame)
            parts.mkdir(exist_ok=True)
            part(t).write_text(json.dumps(frame))
        elif frame is not None:
            extra[kind] = frame
        print(f"  done {t[:4]} ({(time.perf_counter() - start) / 60:.1f} min)", flush=True)

    if args.jobs == 1:  # in this process (also what the tests run)
        for t in tasks:
            collect(t, _task(*t))
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
            futures = {pool.submit(_task, *t): t for t in tasks}
            for fut in as_completed(futures):  # each selection is saved as soon as it is done
                collect(futures[fut], fut.result())
    for kind in args.experiments:
        frame = pd.DataFrame(rows[kind])
        path = out / f"{kind}_seeds.csv"
        if args.select_only:
            frame = merge_selections(pd.read_csv(path), selections[kind])
        elif path.exists():
            frame = merge_rows(pd.read_csv(path), frame)
        frame.to_csv(path, index=False)
        values = [SCORE_COLUMNS[kind]]
        if kind == "imputation":
            values.append(ex.HELDOUT_PREDICTIVE)
        ex.summarize(frame, values).to_csv(out / f"summary_{kind}.csv")
        if kind in extra:
            name = "thinning_nmf_ranks.csv" if kind == "thinning" else "imputation_mf_ranks.csv"
            extra[kind].to_csv(out / name)
    text = tables(out)
    (out / "tables.md").write_text(text)
    print(text)
    print(f"wrote {out}; {(time.perf_counter() - start) / 60:.1f} min")
    if args.update_readme:
        update_documents(out)
        print(f"updated {README}")
    if args.notebooks is not None:
        for path in sorted((REPO / "notebooks").glob("0*.ipynb")):
            if not args.notebooks or path.name.startswith(tuple(args.notebooks)):
                # full mode: in place, so the committed notebooks carry the outputs
                target = out / path.name if args.smoke else path
                print(f"running {path.name} ...", flush=True)
                print(f"  {execute_notebook(path, target):.0f} s -> {target}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
