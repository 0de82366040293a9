"""Real-data benchmark: pyrovae against scVI, Poisson NMF and the per-gene mean on PBMC 3k and
CBMC, scored only on data the fits never saw.

**Data.** ``pbmc3k``: the subset shipped with the package (``pyrovae.datasets.pbmc3k()``: 2700
cells × 1000 highly variable genes of 10x Genomics' "3k PBMCs from a Healthy Donor", CC BY 4.0).
``cbmc``: ``cbmc_top2000.h5ad`` in the folder given by ``--data`` (default ``$PYROVAE_DATA``):
the CITE-seq cord blood mononuclear cells of Stoeckius et al. 2017 (GEO GSE100866) as
redistributed by the ``ttgump/scDCC`` repository (``data/CITE_PBMC/CITE_CBMC_counts_top2000.h5``,
8617 cells × 2000 genes, raw UMI counts in ``X``, cell-type codes in ``obs["label"]``). A data set
whose file is missing is skipped with a message.

**Protocols** (each with 3 seeds; the seed sets the split, the fits and the NMF initialisation):

* ``thinning`` — molecular cross-validation: every molecule goes to ``x_train`` with
  probability 1/2 (``pyrovae.metrics.binomial_thin``), the methods are fitted on ``x_train`` and
  their estimated rates (rescaled to the other half) are scored by the mean Poisson log pmf of
  every entry of ``x_val``.
* ``hidden`` — 10% of the entries are hidden (``pyrovae.evaluation.mask_entries``); the methods
  are fitted on the others and scored by the mean Poisson log pmf of the hidden entries.

**Methods.** pyrovae ``PVAE``, ``NBVAE``, ``ZINBVAE`` and a user-written log-normal prior (a
``QuadraturePrior`` subclass defined in this file), latent dimension 10, library size factors,
minibatches of 128, early stopping on 10% of the cells; the estimate is ``denoise``. The
user-written prior integrates over 33 quadrature nodes and is by far the slowest fit; it is a
unit of work of its own (same split), and ``--user-prior-seeds`` limits the seeds it is fitted
for (the tables give each row's number of seeds). **scVI**
(``scvi-tools``, optional: ``pip install -e '.[bench]'``; skipped with a message when missing),
same latent dimension, NB likelihood, minibatches of 128, early stopping on 10% of the cells with
the same patience as pyrovae's (10 epochs), at most 100 epochs (pyrovae: at most 200; scvi-tools
would pick 400 for data this small -- cut for time; the ``epochs`` column says where each fit
stopped); its estimate is the decoder mean at the
inferred library size (``get_normalized_expression(library_size="latent")``). scVI takes no
mask, so in the ``hidden`` protocol it sees the hidden entries as zeros (the corruption protocol
of the scVI paper). **Poisson NMF** with its rank chosen on 10% of the entries it may see
(``pyrovae.experiments.select_mf_rank``), then refitted. **Per-gene mean** of the entries a
method may see, and the same scaled by each cell's library size.

**Clusters** (``cbmc`` only, needs scanpy, igraph and scikit-learn): Leiden clusters
(:func:`leiden_clusters`: 15 nearest neighbours, modularity, resolution 1) of the kNN graph on
``X_pyrovae`` (NBVAE fitted on all counts), on scVI's latent means and on the PCA (same
dimension) of log-normalised counts, compared with ``obs["label"]``: adjusted Rand index of the
clusters and silhouette of the labels in each representation.

Outputs (``--out``, default ``benchmarks/results``): each unit of work (one data set,
protocol and seed; or one data set's clusters for one seed) is written as soon as it is done to
``real_data_parts/<unit>.csv`` and skipped when the script is run again, so a long run can be
interrupted, resumed or split over processes (e.g. ``--datasets pbmc3k`` in one, ``--datasets
cbmc`` in another). Every run then merges all parts into ``real_data.csv`` (one row per data
set, protocol, method and seed), ``real_data_clusters.csv`` and ``real_data.md`` (mean ± sd
tables and, per data set and protocol, whether the best pyrovae model beats scVI and NMF).

Usage::

    python benchmarks/real_data.py --data /path/to/folder
    python benchmarks/real_data.py --data /path/to/folder --datasets cbmc --seeds 1 2
    python benchmarks/real_data.py --data /path/to/folder --datasets cbmc --protocols  # clusters only
    python benchmarks/real_data.py --report         # merge the parts written so far
    python benchmarks/real_data.py --smoke          # 300 cells × 200 genes, 2 epochs, 1 seed
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
LATENT_DIM = 10
USER_PRIOR = "pyrovae user log-normal prior"


def _lognormal_prior():
    """A user-written prior: log u ~ N(-σ²/2, σ²) with one learned σ, by quadrature."""
    import pyro.distributions as dist
    import torch
    from pyro.distributions import constraints
    from pyro.nn import PyroParam

    from pyrovae import QuadraturePrior

    class UserLogNormal(QuadraturePrior):
        def __init__(self):
            super().__init__(n_half=16, step=0.2)
            self.sigma = PyroParam(torch.tensor(1.0), constraint=constraints.positive)

        def base(self):
            return dist.LogNormal(-(self.sigma**2) / 2, self.sigma)

    return UserLogNormal()


def load(name: str, data_dir: Path | None, smoke: bool):
    """``(counts CSR float32, labels or None)``, or ``None`` when the file is missing."""
    if name == "pbmc3k":
        from pyrovae.datasets import pbmc3k

        x, labels = pbmc3k().counts, None
    elif name == "cbmc":
        path = None if data_dir is None else data_dir / "cbmc_top2000.h5ad"
        if path is None or not path.exists():
            print(f"skipping cbmc: no {path or 'cbmc_top2000.h5ad (pass --data)'}")
            return None
        import anndata

        adata = anndata.read_h5ad(path)
        x, labels = sp.csr_matrix(adata.X, dtype=np.float32), adata.obs["label"].astype(str).values
    else:
        raise ValueError(name)
    if smoke:  # 300 cells, the 200 genes with the largest totals
        rows = np.random.default_rng(0).choice(x.shape[0], 300, replace=False)
        x = x[np.sort(rows)]
        genes = np.sort(np.argsort(-np.asarray(x.sum(0)).ravel())[:200])
        x = x[:, genes]
        labels = None if labels is None else labels[np.sort(rows)]
    return sp.csr_matrix(x), labels


def settings(smoke: bool) -> dict:
    return dict(
        fit=dict(
            size_factor="library",
            batch_size=128,
            lr=3e-3,
            max_epochs=2 if smoke else 200,
            validation_fraction=0.1,
            patience=10,
        ),
        n_samples=5 if smoke else 50,
        ranks=[2, 3] if smoke else [2, 5, 10, 15, 20, 30],
        nmf_iters=50 if smoke else 1000,
        scvi_epochs=2 if smoke else 100,
        patience=10,
    )


def pyrovae_models() -> dict:
    from pyrovae import NBVAE, PVAE, VAE, ZINBVAE

    return {
        "pyrovae PVAE": lambda: PVAE(latent_dim=LATENT_DIM),
        "pyrovae NBVAE": lambda: NBVAE(latent_dim=LATENT_DIM),
        "pyrovae ZINBVAE": lambda: ZINBVAE(latent_dim=LATENT_DIM),
        USER_PRIOR: lambda: VAE(latent_dim=LATENT_DIM, prior=_lognormal_prior()),
    }


def _scvi():
    try:
        import scvi  # noqa: F401
    except ImportError:
        return None
    return scvi


def fit_scvi(x, seed: int, cfg: dict):
    """A fitted scVI model on counts ``x`` (CSR); ``(model, adata)``."""
    import anndata
    import scvi

    scvi.settings.seed = seed
    adata = anndata.AnnData(sp.csr_matrix(x, dtype=np.float32))
    scvi.model.SCVI.setup_anndata(adata)
    model = scvi.model.SCVI(adata, n_latent=LATENT_DIM, gene_likelihood="nb")
    model.train(
        max_epochs=cfg["scvi_epochs"],
        batch_size=128,
        early_stopping=True,
        early_stopping_patience=cfg["patience"],
        train_size=0.9,
        accelerator="cpu",
    )
    return model, adata


def _scvi_epochs(model) -> int:
    """Epochs scVI trained for (fewer than ``scvi_epochs`` when its early stopping fired)."""
    return len(model.history["elbo_train"])


def scvi_rates(model, adata, n_samples: int) -> np.ndarray:
    """scVI's decoder mean at each cell's inferred library size (expected counts)."""
    return np.asarray(
        model.get_normalized_expression(
            adata, library_size="latent", n_samples=n_samples, return_mean=True, return_numpy=True
        ),
        dtype=np.float64,
    )


def _score(protocol, lam, x_dense, target, w):
    from pyrovae.metrics import imputation_score, poisson_heldout_mean

    lam = np.maximum(np.asarray(lam, dtype=np.float64), 1e-12)
    if protocol == "thinning":
        return poisson_heldout_mean(lam, target)
    return imputation_score(lam, x_dense, w) / int((~w).sum())


def run_protocol(name, x, protocol, seed, cfg, use_scvi, user_prior: bool = False):
    """All methods on one split (``user_prior``: only the user-written prior, the slowest fit,
    which is its own unit of work); a list of rows. The split depends on ``seed`` alone, so
    both units of a seed score the same entries."""
    from pyrovae.baselines import nmf
    from pyrovae.evaluation import mask_entries
    from pyrovae.experiments import fit_model, select_mf_rank
    from pyrovae.metrics import binomial_thin, thinning_rescale

    x_dense = x.toarray().astype(np.float64)
    if protocol == "thinning":
        x_fit, target = binomial_thin(x, 0.5, seed=seed)
        x_fit_dense, w, target = x_fit.toarray().astype(np.float64), None, target.toarray()
        rescale = lambda lam: thinning_rescale(lam, 0.5)  # noqa: E731
    else:
        w = mask_entries(x, 0.1, seed=seed)
        x_fit, x_fit_dense, target = x, x_dense, None
        rescale = lambda lam: lam  # noqa: E731
    base = {"dataset": name, "protocol": protocol, "seed": seed}
    rows = []

    def add(method, lam, t0, **extra):
        score = _score(protocol, rescale(lam), x_dense, target, w)
        rows.append(
            {**base, "method": method, "score": score, "seconds": time.perf_counter() - t0, **extra}
        )
        print(f"  {name} {protocol} seed {seed} {method}: {score:.4f}", flush=True)

    for method, make in pyrovae_models().items():
        if (method == USER_PRIOR) != user_prior:
            continue
        t0 = time.perf_counter()
        model, diverged = fit_model(make(), x_fit, w, seed=seed, **cfg["fit"])
        lam = model.denoise(x_fit, w, n_samples=cfg["n_samples"])
        add(method, lam, t0, epochs=len(model.trace_), diverged=diverged)
    if user_prior:
        return rows
    if use_scvi:
        t0 = time.perf_counter()
        shown = x_fit if w is None else sp.csr_matrix(x_fit_dense * w)  # scVI has no mask
        model, adata = fit_scvi(shown, seed, cfg)
        add("scVI", scvi_rates(model, adata, cfg["n_samples"]), t0, epochs=_scvi_epochs(model))
    t0 = time.perf_counter()
    rank, _ = select_mf_rank(
        x_fit_dense, w, cfg["ranks"], "nmf", seed=seed, max_iters=cfg["nmf_iters"]
    )
    left, right, _ = nmf(x_fit_dense, w=w, rank=rank, max_iters=cfg["nmf_iters"], seed=seed)
    add("Poisson NMF (rank chosen on validation)", left @ right.T, t0, rank=rank)
    t0 = time.perf_counter()
    obs = np.ones_like(x_fit_dense, dtype=bool) if w is None else w
    gene_mean = (x_fit_dense * obs).sum(0) / np.maximum(obs.sum(0), 1)
    add("per-gene mean", np.broadcast_to(gene_mean, x_dense.shape), t0)
    lib = (x_fit_dense * obs).sum(1) / obs.sum(1)  # observed counts per observed entry
    scaled = np.outer(lib / lib.mean(), gene_mean)
    add("per-gene mean × library size", scaled, t0)
    return rows


def leiden_clusters(rep: np.ndarray, seed: int, n_neighbors: int = 15) -> np.ndarray:
    """Leiden clusters (igraph, modularity, resolution 1, 2 iterations) of the symmetrised,
    unweighted k-nearest-neighbour graph (Euclidean, ``n_neighbors``) of ``rep``.

    Written out instead of ``sc.pp.neighbors`` + ``sc.tl.leiden``: scanpy 1.11.5's neighbour
    search fails on SciPy 1.17 sparse arrays (``csr_array.getnnz``) for more than ~4k cells."""
    import random

    import igraph as ig
    from sklearn.neighbors import kneighbors_graph

    knn = kneighbors_graph(rep, n_neighbors, mode="connectivity", include_self=False)
    knn = sp.triu(knn.maximum(knn.T), k=1).tocoo()
    graph = ig.Graph(n=rep.shape[0], edges=np.column_stack([knn.row, knn.col]).tolist())
    ig.set_random_number_generator(random.Random(seed))
    try:
        part = graph.community_leiden(
            objective_function="modularity", resolution=1.0, n_iterations=2
        )
    finally:
        ig.set_random_number_generator(random)
    return np.asarray(part.membership)


def run_clusters(name, x, labels, seed, cfg, use_scvi):
    """ARI of Leiden clusters and silhouette of the labels in each representation."""
    try:
        import scanpy as sc
        from sklearn.metrics import adjusted_rand_score, silhouette_score
    except ImportError:
        print("skipping clusters: scanpy / scikit-learn not installed")
        return []
    import anndata

    from pyrovae import NBVAE

    reps, epochs = {}, {}
    model = NBVAE(latent_dim=LATENT_DIM).fit(x, seed=seed, **cfg["fit"])
    reps["X_pyrovae (NBVAE)"] = model.latent(x)
    epochs["X_pyrovae (NBVAE)"] = len(model.trace_)
    if use_scvi:
        scvi_model, scvi_adata = fit_scvi(x, seed, cfg)
        reps["scVI latent"] = scvi_model.get_latent_representation(scvi_adata)
        epochs["scVI latent"] = _scvi_epochs(scvi_model)
    log = anndata.AnnData(x.copy())
    sc.pp.normalize_total(log)
    sc.pp.log1p(log)
    sc.pp.pca(log, n_comps=LATENT_DIM, random_state=seed)
    reps["PCA of log-normalised counts"] = log.obsm["X_pca"]
    rows = []
    for rep_name, rep in reps.items():
        clusters = leiden_clusters(np.asarray(rep, dtype=np.float64), seed)
        rows.append(
            {
                "dataset": name,
                "seed": seed,
                "representation": rep_name,
                "ARI (Leiden vs labels)": adjusted_rand_score(labels, clusters),
                "silhouette of labels": silhouette_score(rep, labels, random_state=seed),
                "Leiden clusters": int(pd.Series(clusters).nunique()),
                "epochs": epochs.get(rep_name),
            }
        )
        print(f"  {name} clusters seed {seed} {rep_name}: {rows[-1]}", flush=True)
    return rows


def seeds_ahead(frame: pd.DataFrame, method: str, rival: str) -> tuple[int, int]:
    """In how many of the seeds that scored both ``method`` beat ``rival``, and of how many."""
    by_seed = frame.pivot_table(index="seed", columns="method", values="score", aggfunc="mean")
    both = by_seed[[method, rival]].dropna()
    return int((both[method] > both[rival]).sum()), len(both)


def best_pyrovae(frame: pd.DataFrame) -> str:
    """The pyrovae model with the best mean score among the pyrovae rows with the most seeds (a
    row with fewer seeds is compared on its own seeds instead, :func:`on_own_seeds`)."""
    rows = frame[frame["method"].str.startswith("pyrovae")]
    stats = rows.groupby("method")["score"].agg(["mean", "count"])
    return stats.loc[stats["count"] == stats["count"].max(), "mean"].idxmax()


def seeds_ahead_of(frame: pd.DataFrame, rival: str) -> list[tuple[str, int, int]]:
    """For every pyrovae model (best mean first), :func:`seeds_ahead` against ``rival``."""
    means = frame.groupby("method")["score"].mean().sort_values(ascending=False)
    return [(m, *seeds_ahead(frame, m, rival)) for m in means.index if m.startswith("pyrovae")]


def close_lead(frame: pd.DataFrame) -> tuple[str, str, float, float, int, int] | None:
    """``(first, second, lead, sd, ahead, paired)`` when the best method's mean leads the
    runner-up's by less than the larger of their seed-to-seed sds (among the methods with the
    most seeds), else ``None``."""
    seeds = frame.groupby("method")["seed"].nunique()
    complete = frame[frame["method"].isin(seeds.index[seeds == seeds.max()])]
    stats = complete.groupby("method")["score"].agg(["mean", "std"])
    stats = stats.sort_values("mean", ascending=False)
    if len(stats) < 2:
        return None
    (first, second), lead = stats.index[:2], stats["mean"].iloc[0] - stats["mean"].iloc[1]
    spread = stats["std"].iloc[:2].max()
    if not lead < spread:
        return None
    return first, second, lead, spread, *seeds_ahead(frame, first, second)


def on_own_seeds(frame: pd.DataFrame, method: str) -> pd.Series:
    """Every method's mean score over the seeds that scored ``method`` (to compare a row with
    fewer seeds than the others on equal terms)."""
    seeds = frame.loc[frame["method"] == method, "seed"]
    return frame[frame["seed"].isin(seeds)].groupby("method")["score"].mean()


def report(scores: pd.DataFrame, clusters: pd.DataFrame | None) -> str:
    """Markdown: mean ± sd per method, and where pyrovae loses."""
    from pyrovae.experiments import format_mean_sd

    out = []
    for (name, protocol), frame in scores.groupby(["dataset", "protocol"], sort=False):
        stats = frame.groupby("method", sort=False)["score"].agg(["mean", "std", "count"])
        if "epochs" in frame:
            stats["epochs"] = frame.groupby("method", sort=False)["epochs"].median()
        stats = stats.sort_values("mean", ascending=False)
        what = (
            "mean log pmf per entry of the held-out half (molecular cross-validation)"
            if protocol == "thinning"
            else "mean log pmf per hidden entry (10% hidden)"
        )
        out += [f"**{name}, {protocol}**: {what}; mean ± sd over seeds", ""]
        out += ["| method | score | seeds | epochs (median) |", "|---|---|---|---|"]
        out += [
            f"| {m} | {format_mean_sd(r['mean'], r['std'], 4)} | {int(r['count'])} | "
            f"{'—' if pd.isna(r.get('epochs')) else f'{r.epochs:.0f}'} |"
            for m, r in stats.iterrows()
        ]
        best_py = best_pyrovae(frame)
        verdicts = []
        for rival in ("scVI", "Poisson NMF (rank chosen on validation)", "per-gene mean"):
            if rival in stats.index:
                diff = stats.loc[best_py, "mean"] - stats.loc[rival, "mean"]
                ahead, paired = seeds_ahead(frame, best_py, rival)
                verdicts.append(
                    f"{'beats' if diff > 0 else 'LOSES to'} {rival} ({diff:+.4f}; ahead in "
                    f"{ahead} of {paired} seeds)"
                )
        out += ["", f"Best pyrovae model: {best_py}; it " + ", ".join(verdicts) + "."]
        if "scVI" in stats.index:
            counts = seeds_ahead_of(frame, "scVI")
            out.append(
                "Seed by seed against scVI (same split): "
                + ", ".join(
                    f"{m.removeprefix('pyrovae ')} ahead in {a} of {n}" for m, a, n in counts
                )
                + "."
            )
        most = int(stats["count"].max())
        for m in stats.index[stats["count"] < most]:
            same = on_own_seeds(frame, m)
            out.append(
                f"{m} has {int(stats.loc[m, 'count'])} of {most} seeds; on the same seeds "
                f"{best_py} scores {format_mean_sd(same[best_py], np.nan, 4)} against its "
                f"{format_mean_sd(same[m], np.nan, 4)}."
            )
        out.append("")
    if clusters is not None and len(clusters):
        cols = ["ARI (Leiden vs labels)", "silhouette of labels", "Leiden clusters"]
        for name, frame in clusters.groupby("dataset", sort=False):
            g = frame.groupby("representation", sort=False)[cols]
            mean, sd, count = g.mean(), g.std(), g.size()
            out += [f"**{name}, clusters against `obs['label']`** (mean ± sd over seeds)", ""]
            out += ["| representation | " + " | ".join(cols) + " | seeds |", "|---" * 5 + "|"]
            for rep in mean.index:
                cells = [
                    format_mean_sd(mean.loc[rep, c], sd.loc[rep, c], 1 if c == cols[-1] else 3)
                    for c in cols
                ]
                out.append(f"| {rep} | " + " | ".join(cells) + f" | {int(count[rep])} |")
            out.append("")
    return "\n".join(out)


def _part(out: Path, *key) -> Path:
    return out / "real_data_parts" / ("_".join(str(k) for k in key) + ".csv")


def _run_part(path: Path, work) -> None:
    """Run ``work()`` (a list of rows) unless ``path`` exists; write its rows atomically."""
    if path.exists():
        print(f"  {path.stem}: done before, kept", flush=True)
        return
    rows = pd.DataFrame(work())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    rows.to_csv(tmp, index=False)
    tmp.replace(path)


def _merge(out: Path, prefix: str) -> pd.DataFrame:
    parts = sorted((out / "real_data_parts").glob(f"{prefix}*.csv"))
    frames = [pd.read_csv(p) for p in parts if p.stat().st_size > 1]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=os.environ.get("PYROVAE_DATA"))
    parser.add_argument("--datasets", nargs="+", default=["pbmc3k", "cbmc"])
    parser.add_argument("--protocols", nargs="*", default=["thinning", "hidden"])
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--no-scvi", action="store_true", help="skip scVI even if installed")
    parser.add_argument(
        "--user-prior-seeds",
        nargs="*",
        type=int,
        help="seeds that also fit the user-written prior (default: all; its 33-node quadrature "
        "makes it the slowest fit by far)",
    )
    parser.add_argument("--no-clusters", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--report", action="store_true", help="only merge the parts written")
    parser.add_argument("--smoke", action="store_true", help="300 cells × 200 genes, tiny fits")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    seeds = args.seeds or ([0] if args.smoke else [0, 1, 2])
    cfg = settings(args.smoke)
    cfg["user_prior_seeds"] = seeds if args.user_prior_seeds is None else args.user_prior_seeds
    out = args.out or (Path(tempfile.mkdtemp(prefix="pyrovae-real-")) if args.smoke else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    use_scvi = not args.no_scvi and _scvi() is not None
    if not args.no_scvi and not use_scvi and not args.report:
        print("scvi-tools is not installed: no scVI rows (pip install -e '.[bench]')")
    data_dir = None if args.data is None else Path(args.data)
    start = time.perf_counter()
    for name in [] if args.report else args.datasets:
        loaded = load(name, data_dir, args.smoke)
        if loaded is None:
            continue
        x, labels = loaded
        print(f"{name}: {x.shape[0]} cells × {x.shape[1]} genes", flush=True)
        for seed in seeds:
            for protocol in args.protocols:
                _run_part(
                    _part(out, "scores", name, protocol, seed),
                    lambda: run_protocol(name, x, protocol, seed, cfg, use_scvi),  # noqa: B023
                )
                if seed in cfg["user_prior_seeds"]:
                    _run_part(
                        _part(out, "scores", name, protocol, seed, "user-prior"),
                        lambda: run_protocol(name, x, protocol, seed, cfg, False, True),  # noqa: B023
                    )
            if labels is not None and not args.no_clusters:
                _run_part(
                    _part(out, "clusters", name, seed),
                    lambda: run_clusters(name, x, labels, seed, cfg, use_scvi),  # noqa: B023
                )
    scores, clusters = _merge(out, "scores"), _merge(out, "clusters")
    if len(scores):
        scores.to_csv(out / "real_data.csv", index=False)
    if len(clusters):
        clusters.to_csv(out / "real_data_clusters.csv", index=False)
    text = report(scores, clusters) if len(scores) else "no results yet\n"
    (out / "real_data.md").write_text(text)
    print(text)
    print(f"wrote {out}; {(time.perf_counter() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
