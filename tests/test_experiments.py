"""pyrovae.experiments: settings in smoke mode, scoring functions vs direct scipy computations."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import scipy.stats as st

from pyrovae import NBVAE, PVAE
from pyrovae import experiments as ex
from pyrovae.fit import FitDivergedError
from pyrovae.simulate import imputation, poisson_thinning

FAST = dict(lr=1e-2, n_samples=1, max_epochs=5)


@pytest.fixture(scope="module")
def thin():
    sim = poisson_thinning(n=40, p=12)
    return sim, NBVAE(latent_dim=2).fit(sim.x, **FAST)


@pytest.fixture(scope="module")
def imp():
    sim = imputation(n=40, p=12)
    return sim, NBVAE(latent_dim=2).fit(sim.x, w=sim.w, **FAST)


def test_settings_full_and_smoke(monkeypatch):
    monkeypatch.delenv("PYROVAE_SMOKE", raising=False)
    assert ex.settings(ex.REFERENCE) == ex.REFERENCE
    assert ex.settings(ex.REFERENCE) is not ex.REFERENCE
    assert ex.settings(ex.RECOMMENDED, n_samples=1)["n_samples"] == 1
    assert ex.nmf_ranks() == list(range(1, 31))
    monkeypatch.setenv("PYROVAE_SMOKE", "1")
    ref = ex.settings(ex.REFERENCE)
    assert ref == dict(lr=1e-2, n_samples=2, max_epochs=10)  # no patience/kl_warmup added
    rec = ex.settings(ex.RECOMMENDED, n_samples=1)
    assert rec["n_samples"] == 1 and rec["patience"] == 5 and rec["kl_warmup"] == 2
    assert rec["validation_by"] == "entries" and rec["max_epochs"] == 10
    assert ex.nmf_ranks() == [1, 2, 3]


def test_fit_model_keeps_a_diverged_fit(thin, monkeypatch):
    sim, _ = thin
    model, diverged = ex.fit_model(PVAE(latent_dim=2), sim.x, **FAST)
    assert diverged is None and len(model.trace_) == FAST["max_epochs"]

    def diverge(self, x, w=None, **kwargs):
        self.trace_ = np.zeros(3)
        raise FitDivergedError("training diverged", 3)

    monkeypatch.setattr(PVAE, "fit", diverge)
    model, diverged = ex.fit_model(PVAE(latent_dim=2), sim.x, **FAST)
    assert diverged == 3 and len(model.trace_) == 3


def test_results_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PYROVAE_SMOKE", "1")
    monkeypatch.delenv("PYROVAE_RESULTS", raising=False)
    assert ex.results_dir(tmp_path / "never") is None
    assert not (tmp_path / "never").exists()
    monkeypatch.setenv("PYROVAE_RESULTS", str(tmp_path / "env"))
    assert ex.results_dir(tmp_path / "never") == tmp_path / "env"
    assert (tmp_path / "env").is_dir()
    monkeypatch.delenv("PYROVAE_RESULTS")
    monkeypatch.delenv("PYROVAE_SMOKE")
    assert ex.results_dir(tmp_path / "full") == tmp_path / "full"


def test_thinning_scores_match_scipy_and_leak_differs(thin):
    sim, model = thin
    scores = ex.thinning_scores(model, sim, n_samples=20)
    right = st.poisson.logpmf(sim.x_val, model.denoise(sim.x, n_samples=20)).mean()
    leaking = st.poisson.logpmf(sim.x_val, model.denoise(sim.x_val, n_samples=20)).mean()
    assert scores[ex.THIN_HELDOUT] == pytest.approx(right, rel=1e-12)
    assert scores[ex.THIN_LEAKING] == pytest.approx(leaking, rel=1e-12)
    # denoise(x_val) copies x_val through E[u | x_val]: the leaking score is (much) higher
    assert scores[ex.THIN_LEAKING] > scores[ex.THIN_HELDOUT] + 0.05
    assert ex.label(model) == "NBVAE-2"


def test_thinning_limits_match_scipy(thin):
    sim, _ = thin
    limits = ex.thinning_limits(sim)
    true_lam, bayes = limits.values()
    assert true_lam == pytest.approx(st.poisson.logpmf(sim.x_val, sim.lam).mean(), rel=1e-12)
    theta = 0.1
    post = sim.mu * (theta + sim.x) / (theta + sim.mu)
    assert bayes == pytest.approx(st.poisson.logpmf(sim.x_val, post).mean(), rel=1e-12)
    assert true_lam > bayes


def test_nmf_thinning_score(thin):
    sim, _ = thin
    score = ex.nmf_thinning_score(sim, rank=2, max_iters=50)
    assert np.isfinite(score) and score < 0


def test_imputation_scores_match_scipy(imp):
    sim, model = imp
    x, w = sim.x, sim.w
    scores = ex.imputation_scores(model, sim, n_samples=20)
    pred = model.predict(w * x)
    # the encoder zero-fills missing entries, so predict(w * x) is predict(x, w)
    np.testing.assert_array_equal(pred, model.predict(x, w))
    pred100 = model.predict(w * x, n_samples=100)
    den = model.denoise(x, w, n_samples=20)
    held = ~w
    assert scores[ex.HELDOUT_PREDICT] == pytest.approx(
        st.poisson.logpmf(x[held], pred[held]).sum(), rel=1e-12
    )
    assert scores[ex.HELDOUT_PREDICT100] == pytest.approx(
        st.poisson.logpmf(x[held], pred100[held]).sum(), rel=1e-12
    )
    assert scores[ex.HELDOUT_DENOISE] == pytest.approx(
        st.poisson.logpmf(x[held], den[held]).sum(), rel=1e-12
    )
    assert scores[ex.OBSERVED_PREDICT] == pytest.approx(
        st.poisson.logpmf(x[w], pred[w]).sum(), rel=1e-12
    )
    assert scores[ex.OBSERVED_PREDICT100] == pytest.approx(
        st.poisson.logpmf(x[w], pred100[w]).sum(), rel=1e-12
    )
    own = model.predictive_log_prob(x, w=w)[held].sum()
    assert scores[ex.HELDOUT_PREDICTIVE] == pytest.approx(own, rel=1e-6)
    # the held-out value of x never reaches the scores of the observed entries ...
    x2 = x.copy()
    x2[held] += 7
    sim2 = dataclasses.replace(sim, x=x2)
    scores2 = ex.imputation_scores(model, sim2, n_samples=20)
    assert scores2[ex.OBSERVED_PREDICT] == scores[ex.OBSERVED_PREDICT]
    # ... but it is what the held-out scores score
    assert scores2[ex.HELDOUT_PREDICT] != scores[ex.HELDOUT_PREDICT]


def test_imputation_scores_poisson_model(imp):
    sim, _ = imp
    model = PVAE(latent_dim=2).fit(sim.x, w=sim.w, **FAST)
    scores = ex.imputation_scores(model, sim, n_samples=20)
    # for a Poisson model, denoise of a held-out entry is E_q mu(z) (E[u] = 1) = predict(n_samples)
    assert scores[ex.HELDOUT_DENOISE] == pytest.approx(scores[ex.HELDOUT_PREDICT100], rel=0.05)
    assert all(np.isfinite(v) for v in scores.values())


def test_imputation_limits_match_scipy(imp):
    sim, _ = imp
    x, w = sim.x, sim.w
    held = ~w
    limits = ex.imputation_limits(sim)
    mu = limits["true μ (Poisson)"]
    assert mu["held out"] == pytest.approx(st.poisson.logpmf(x[held], sim.mu[held]).sum())
    assert mu["observed"] == pytest.approx(st.poisson.logpmf(x[w], sim.mu[w]).sum())
    theta = sim.inv_disp
    nb = st.nbinom(n=theta, p=theta / (theta + sim.mu[held])).logpmf(x[held]).sum()
    assert limits["true μ, NB predictive (true θ)"]["held out"] == pytest.approx(nb, rel=1e-10)
    lam = limits["true λ (Poisson, oracle)"]
    assert lam["held out"] == pytest.approx(st.poisson.logpmf(x[held], sim.lam[held]).sum())
    gene_mean = np.array([x[w[:, j], j].mean() for j in range(x.shape[1])])
    naive = st.poisson.logpmf(x, gene_mean[None, :])[held].sum()
    assert limits["per-gene mean of observed entries"]["held out"] == pytest.approx(naive)


def test_masked_mf_sweep(imp):
    sim, _ = imp
    frame = ex.masked_mf_sweep(sim, ranks=[1, 2], max_iters=30)
    assert list(frame.index) == [1, 2]
    assert frame.shape == (2, 6)
    assert np.isfinite(frame.to_numpy()).all()
    # the validation column scores the validation split of the observed entries only
    w_fit, w_valid = ex.split_observed(sim.w)
    from pyrovae.baselines import nmf

    left, right, _ = nmf(sim.x, w=w_fit, rank=2, max_iters=30)
    expected = st.poisson.logpmf(sim.x[w_valid], (left @ right.T)[w_valid]).sum()
    assert frame.loc[2, "NMF validation"] == pytest.approx(expected, rel=1e-10)
    # fitting more factors improves the fit of the observed entries
    assert frame.loc[2, "NMF observed (note's score)"] > frame.loc[1, "NMF observed (note's score)"]


def test_split_observed_never_touches_unobserved_entries(imp):
    sim, _ = imp
    w_fit, w_valid = ex.split_observed(sim.w, 0.2, seed=3)
    assert not (w_fit & w_valid).any()
    np.testing.assert_array_equal(w_fit | w_valid, sim.w)
    assert 0.1 < w_valid.sum() / sim.w.sum() < 0.3
    again = ex.split_observed(sim.w, 0.2, seed=3)
    np.testing.assert_array_equal(again[1], w_valid)
    with pytest.raises(ValueError, match="fraction"):
        ex.split_observed(sim.w, 1.0)


def test_select_mf_rank_ignores_the_held_out_entries(imp):
    sim, _ = imp
    rank, scores = ex.select_mf_rank(sim.x, sim.w, ranks=[1, 2, 3], max_iters=30)
    assert rank == scores.idxmax() and list(scores.index) == [1, 2, 3]
    # changing the held-out (scored) entries changes nothing in the choice
    x2 = sim.x.copy()
    x2[~sim.w] += 50
    rank2, scores2 = ex.select_mf_rank(x2, sim.w, ranks=[1, 2, 3], max_iters=30)
    assert rank2 == rank
    pd.testing.assert_series_equal(scores2, scores)


def test_select_setting_reads_neither_x_val_nor_scored_entries(imp, monkeypatch):
    monkeypatch.setenv("PYROVAE_SMOKE", "1")
    sim, _ = imp
    name, scores = ex.select_setting("NBVAE-2", sim.x, sim.w, "entries", n_samples=5)
    assert name in ("REFERENCE", "RECOMMENDED") and scores[name] == max(scores.values())
    x2 = sim.x.copy()
    x2[~sim.w] += 50  # the entries scored by the experiment
    assert ex.select_setting("NBVAE-2", x2, sim.w, "entries", n_samples=5) == (name, scores)
    thin = poisson_thinning(n=40, p=12)
    name, scores = ex.select_setting("PVAE-2", thin.x, None, "thinning", n_samples=5)
    assert set(scores) == {"REFERENCE", "RECOMMENDED"}
    assert all(np.isfinite(v) for v in scores.values())
    with pytest.raises(ValueError, match="protocol"):
        ex.select_setting("PVAE-2", thin.x, protocol="x_val")


def test_summarize_and_format():
    frame = pd.DataFrame(
        {
            "experiment": "thinning",
            "objective": "elbo",
            "model": "NBVAE-3",
            "settings": ["REFERENCE"] * 3 + [ex.CHOSEN] * 3,
            "seed": [0, 1, 2] * 2,
            "score": [-1.0, -2.0, -3.0, -1.0, -1.5, -2.0],
            "chosen settings": [None] * 3 + ["REFERENCE", "RECOMMENDED", "REFERENCE"],
        }
    )
    summary = ex.summarize(frame, ["score"])
    row = summary.loc[("thinning", "elbo", "NBVAE-3", "REFERENCE")]
    assert row["score mean"] == pytest.approx(-2.0) and row["score sd"] == pytest.approx(1.0)
    assert row["n seeds"] == 3
    chosen = summary.loc[("thinning", "elbo", "NBVAE-3", ex.CHOSEN), "chosen settings"]
    assert chosen == "REFERENCE 2/3, RECOMMENDED 1/3"
    assert ex.format_mean_sd(-1.0204, 0.0031) == "−1.020 ± 0.003"
    assert ex.format_mean_sd(-24332.2, 125.4, 0) == "−24,332 ± 125"
    assert ex.format_mean_sd(-1.0, float("nan")) == "−1.000"


def test_results_table_has_a_chosen_column_only_where_there_are_choices():
    """IWAE rows without validation choices get no (empty) chosen column; the ELBO's is kept."""
    rows = [
        {
            "experiment": "thinning",
            "objective": o,
            "model": "NBVAE-3",
            "settings": s,
            "seed": k,
            ex.THIN_HELDOUT: -1.0 - k / 100,
            "chosen settings": "REFERENCE" if s == ex.CHOSEN else None,
        }
        for o, settings in (
            ("elbo", ("REFERENCE", "RECOMMENDED", ex.CHOSEN)),
            ("iwae", ("REFERENCE", "RECOMMENDED")),
        )
        for s in settings
        for k in range(3)
    ]
    text = ex.markdown_tables(pd.DataFrame(rows), None)
    header = next(line for line in text.splitlines() if line.startswith("| model"))
    assert header == (
        "| model | ELBO, REFERENCE | ELBO, RECOMMENDED | ELBO, chosen | IWAE, REFERENCE | "
        "IWAE, RECOMMENDED |"
    )
    row = next(line for line in text.splitlines() if line.startswith("| NBVAE-3"))
    assert row.count("|") == header.count("|") and "(REFERENCE 3/3)" in row and "||" not in row


def test_seed_experiments_smoke(tmp_path, monkeypatch):
    """benchmarks/seed_experiments.py --smoke: long CSVs with a seed column, summaries and the
    Markdown tables, whose numbers are the CSVs' means."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "seed_experiments.py"
    spec = importlib.util.spec_from_file_location("seed_experiments", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    argv = ["--smoke", "--seeds", "0", "1", "--models", "NBVAE-3"]
    argv += ["--objectives", "elbo", "--out", str(tmp_path)]
    assert mod.main(argv) == 0
    for kind in ("thinning", "imputation"):
        frame = pd.read_csv(tmp_path / f"{kind}_seeds.csv")
        vae = frame[frame["objective"] == "elbo"]
        assert sorted(vae["seed"].unique()) == [0, 1]
        assert set(vae["settings"]) == {"REFERENCE", "RECOMMENDED", ex.CHOSEN}
        assert (tmp_path / f"summary_{kind}.csv").exists()
    thin = pd.read_csv(tmp_path / "thinning_seeds.csv")
    ref = thin[(thin["model"] == "NBVAE-3") & (thin["settings"] == "REFERENCE")]
    mean = ref[ex.THIN_HELDOUT].mean()
    text = (tmp_path / "tables.md").read_text()
    assert ex.format_mean_sd(mean, ref[ex.THIN_HELDOUT].std()) in text
    assert "chosen on validation" in text
    # --select-only refits the validation fits alone and merges them: same choices and scores
    # as the full run, one chosen row per (objective, model, seed), other rows untouched
    assert mod.main([*argv, "--select-only", "--experiments", "thinning"]) == 0
    merged = pd.read_csv(tmp_path / "thinning_seeds.csv")
    assert len(merged) == len(thin)
    key = ["objective", "model", "settings", "seed"]
    pd.testing.assert_frame_equal(
        merged.sort_values(key, ignore_index=True), thin.sort_values(key, ignore_index=True)
    )
    # each selection was saved as it finished; a rerun keeps them and refits nothing
    assert len(list((tmp_path / "selection_parts").glob("thinning-select_*.json"))) == 2
    monkeypatch.setattr(mod, "_task", lambda *t: pytest.fail(f"refitted {t}"))
    assert mod.main([*argv, "--select-only", "--experiments", "thinning"]) == 0
    again = pd.read_csv(tmp_path / "thinning_seeds.csv")
    pd.testing.assert_frame_equal(again, merged)
    # a run of a subset adds its rows and keeps the others (it does not overwrite the CSV)
    monkeypatch.undo()
    subset = ["--smoke", "--seeds", "1", "--models", "NBVAE-3", "--out", str(tmp_path)]
    subset += ["--objectives", "iwae", "--experiments", "thinning", "--no-select", "--no-baselines"]
    assert mod.main(subset) == 0
    added = pd.read_csv(tmp_path / "thinning_seeds.csv")
    pd.testing.assert_frame_equal(
        added[added["objective"] != "iwae"].reset_index(drop=True), again, check_dtype=False
    )
    iwae = added[added["objective"] == "iwae"]
    assert set(iwae["seed"]) == {1} and set(iwae["settings"]) == {"REFERENCE", "RECOMMENDED"}
    # --tables rewrites tables.md from the CSVs (it must not go stale beside them)
    (tmp_path / "tables.md").write_text("stale")
    assert mod.main(["--tables", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "tables.md").read_text() == mod.tables(tmp_path)
    assert "IWAE, REFERENCE" in mod.tables(tmp_path)
    # README block replacement
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{mod.BEGIN}\nold\n{mod.END}\nb\n")
    mod.update_readme("new\n", readme)
    assert readme.read_text() == f"a\n{mod.BEGIN}\nnew\n{mod.END}\nb\n"


def test_readme_shows_latent_dimension_3_and_docs_every_row(tmp_path, monkeypatch):
    """The README's block keeps to latent dimension 3 (size) and links to docs/results.md, whose
    block has every row; both are replaced between their markers."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "seed_experiments.py"
    spec = importlib.util.spec_from_file_location("seed_experiments", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = [
        {
            "experiment": "thinning",
            "objective": "elbo",
            "model": model,
            "settings": settings,
            "seed": seed,
            ex.THIN_HELDOUT: -1.0 - seed / 100 - (model == "NBVAE-10") / 10,
        }
        for model in ("NBVAE-3", "NBVAE-10")
        for settings in ("REFERENCE", "RECOMMENDED")
        for seed in range(2)
    ]
    out = tmp_path / "results"
    out.mkdir()
    pd.DataFrame(rows[: len(rows) // 2]).to_csv(out / "thinning_seeds.csv", index=False)
    assert mod.readme_tables(out) == mod.tables(out)  # only k = 3: no link
    pd.DataFrame(rows).to_csv(out / "thinning_seeds.csv", index=False)
    readme_text, every_row = mod.readme_tables(out), mod.tables(out)
    assert "| NBVAE-3 |" in readme_text and "| NBVAE-10 |" not in readme_text
    assert "| NBVAE-3 |" in every_row and "| NBVAE-10 |" in every_row
    assert "(docs/results.md#tables)" in readme_text
    readme, docs = tmp_path / "README.md", tmp_path / "results.md"
    for target in (readme, docs):
        target.write_text(f"a\n{mod.BEGIN}\nold\n{mod.END}\nb\n")
    monkeypatch.setattr(mod, "README", readme)
    monkeypatch.setattr(mod, "DOCS", docs)
    monkeypatch.setattr(mod.update_readme, "__defaults__", (readme,))
    mod.update_documents(out)
    assert readme.read_text() == f"a\n{mod.BEGIN}\n{readme_text}{mod.END}\nb\n"
    assert docs.read_text() == f"a\n{mod.BEGIN}\n{every_row}{mod.END}\nb\n"
