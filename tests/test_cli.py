"""The ``pyrovae`` command line (:mod:`pyrovae.cli`) on a tiny h5ad written to tmp_path."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from pyrovae import VAE
from pyrovae.cli import main
from pyrovae.datasets import pbmc3k

anndata = pytest.importorskip("anndata")

FAST = ["--epochs", "2", "--batch-size", "64", "--latent-dim", "3", "--hidden", "16"]


@pytest.fixture(scope="module")
def source():
    return pbmc3k().to_anndata()[:120, :150].copy()


@pytest.fixture
def data(source, tmp_path):
    path = tmp_path / "data.h5ad"
    source.write_h5ad(path)
    return path


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_fit_writes_results_and_prints_a_summary(data, tmp_path, capsys):
    out_path = tmp_path / "result.h5ad"
    before = data.read_bytes()
    code, out, err = run(["fit", data, "--prior", "gamma", "--out", out_path, *FAST], capsys)
    assert code == 0, err
    assert data.read_bytes() == before  # the input is never modified
    result = anndata.read_h5ad(out_path)
    assert result.obsm["X_pyrovae"].shape == (120, 3)
    assert result.layers["pyrovae_denoised"].shape == (120, 150)
    assert sp.issparse(result.X)
    uns = result.uns["pyrovae"]
    assert uns["params"]["prior"] == "gamma" and uns["fit_settings"]["max_epochs"] == 2
    assert uns["size_factor_mode"] == "library" and uns["counts_layer"] == "counts"
    for text in ("120 cells × 150 genes", "prior gamma", "epochs run        2 of 2", "wall time"):
        assert text in out
    assert "final loss" in out and str(out_path) in out
    assert "epoch" in err  # the progress bar
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind


def test_heldout_options_save_and_early_stopping(data, tmp_path, capsys):
    out_path, model_path = tmp_path / "r.h5ad", tmp_path / "m.pt"
    argv = ["fit", data, "--out", out_path, "--save", model_path, *FAST, "--quiet"]
    argv += ["--mask-fraction", "0.1", "--thin", "0.5", "--nmf-rank", "2", "--objective", "iwae"]
    argv += ["--n-samples", "2", "--validation-fraction", "0.2", "--patience", "1"]
    argv += ["--size-factor", "none", "--seed", "3", "--lr", "0.01", "--denoise-samples", "5"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert err == ""  # --quiet
    for text in ("imputation", "thinning", "vae_denoise", "vae_predict", "nmf", "best val. loss"):
        assert text in out
    result = anndata.read_h5ad(out_path)
    heldout = result.uns["pyrovae"]["heldout"]
    assert heldout["imputation"]["mask_fraction"] == 0.1
    assert set(heldout["thinning"]["scores"]) == {"vae_denoise", "vae_predict", "nmf"}
    assert np.isfinite(heldout["thinning"]["scores"]["vae_denoise"]["mean"])
    settings = result.uns["pyrovae"]["fit_settings"]
    assert settings["objective"] == "iwae" and settings["n_samples"] == 2
    assert result.uns["pyrovae"]["size_factor_mode"] is None
    model = VAE.load(model_path)
    np.testing.assert_allclose(
        model.latent(result.layers["counts"]), result.obsm["X_pyrovae"], rtol=1e-6
    )


def test_layer_option_and_skipping_the_denoised_layer(source, tmp_path, capsys):
    a = source.copy()
    a.layers["raw"] = a.layers.pop("counts")
    a.X = sp.csr_matrix(np.log1p(a.X.toarray()))  # X is not counts: --layer raw is needed
    path, out_path = tmp_path / "layered.h5ad", tmp_path / "out.h5ad"
    a.write_h5ad(path)
    code, _, err = run(["fit", path, "--out", out_path, *FAST, "--quiet"], capsys)
    assert code == 2 and "non-integer" in err
    argv = ["fit", path, "--layer", "raw", "--out", out_path, "--no-denoised", "--quiet", *FAST]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    result = anndata.read_h5ad(out_path)
    assert "pyrovae_denoised" not in result.layers
    assert result.uns["pyrovae"]["counts_layer"] == "raw"
    assert "[raw]" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--layer", "nope"], "no layer 'nope'"),
        (["--epochs", "0"], "--epochs: expected a positive integer"),
        (["--prior", "weird"], "invalid choice: 'weird'"),
        (["--mask-fraction", "1.5"], "--mask-fraction: expected a number in (0, 1)"),
        (["--validation-fraction", "1"], "expected a number in [0, 1)"),
        (["--patience", "3"], "--patience needs --validation-fraction"),
        (["--nmf-rank", "2"], "--nmf-rank needs --mask-fraction or --thin"),
        (["--hidden", "16,x"], "comma-separated positive layer widths"),
        (["--lr", "-1"], "--lr: expected a positive number"),
        (["--device", "tpu:0"], "tpu"),
        (["--backed", "--thin", "0.5"], "need the counts in memory"),
        (["--backed", "--layer", "nope"], "no layer 'nope'"),
        (["--resume"], "--resume needs --checkpoint DIR"),
        (["--checkpoint-every", "2"], "--checkpoint-every needs --checkpoint DIR"),
        (["--block-size", "0"], "--block-size: expected a positive integer"),
    ],
)
def test_user_errors_are_one_line_messages_with_exit_code_2(data, tmp_path, capsys, extra, message):
    code, out, err = run(["fit", data, "--out", tmp_path / "r.h5ad", *extra], capsys)
    assert code == 2
    assert message in err
    assert err.startswith("pyrovae: error: ") and err.count("\n") == 1
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / "r.h5ad").exists()


def test_input_and_output_path_errors(data, tmp_path, capsys):
    cases = [
        (["fit", tmp_path / "missing.h5ad", "--out", tmp_path / "r.h5ad"], "does not exist"),
        (["fit", data], "nothing would be saved"),
        (["fit", data, "--out", tmp_path / "no" / "r.h5ad"], "folder"),
        (["fit", data, "--out", data], "must differ from the input"),
        (["fit", data, "--out", tmp_path], "is a directory"),
        ([], "required: COMMAND"),
    ]
    not_h5ad = tmp_path / "bad.h5ad"
    not_h5ad.write_text("not hdf5")
    cases.append((["fit", not_h5ad, "--out", tmp_path / "r.h5ad"], "cannot read"))
    if not torch.cuda.is_available():
        cases.append((["fit", data, "--out", tmp_path / "r.h5ad", "--device", "cuda"], "CUDA"))
    for argv, message in cases:
        code, _, err = run(argv, capsys)
        assert code == 2, argv
        assert message in err and err.count("\n") == 1, (argv, err)


def test_a_failed_write_leaves_the_previous_output_intact(data, tmp_path, capsys, monkeypatch):
    out_path = tmp_path / "r.h5ad"
    out_path.write_bytes(b"previous result")

    def failing_write(self, filename, **kwargs):
        with open(filename, "wb") as fh:
            fh.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(anndata.AnnData, "write_h5ad", failing_write)
    with pytest.raises(OSError, match="disk full"):
        main(["fit", str(data), "--out", str(out_path), *FAST, "--quiet", "--no-denoised"])
    assert out_path.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.h5ad", "r.h5ad"]


def test_console_entry_point_runs_as_a_module(tmp_path):
    help_ = subprocess.run(
        [sys.executable, "-m", "pyrovae.cli", "fit", "--help"], capture_output=True, text=True
    )
    assert help_.returncode == 0 and "--mask-fraction" in help_.stdout
    err = subprocess.run(
        [sys.executable, "-m", "pyrovae.cli", "fit", str(tmp_path / "x.h5ad"), "--save", "m.pt"],
        capture_output=True,
        text=True,
    )
    assert err.returncode == 2 and err.stderr.startswith("pyrovae: error:")
    assert "Traceback" not in err.stderr


def test_backed_input_is_validated_blockwise_before_fitting(source, tmp_path, capsys):
    a = source.copy()
    a.layers["counts"] = sp.csr_matrix(a.layers["counts"] * 0.5)
    path = tmp_path / "half.h5ad"
    a.write_h5ad(path)
    code, _, err = run(["fit", path, "--backed", "--out", tmp_path / "r.h5ad", *FAST], capsys)
    assert code == 2 and "non-integer counts (row" in err and "[counts]" in err


def test_backed_fit_streams_the_same_results_as_an_in_memory_fit(data, tmp_path, capsys):
    memory_out, backed_out = tmp_path / "memory.h5ad", tmp_path / "backed.h5ad"
    argv = [*FAST, "--quiet", "--denoise-samples", "5", "--seed", "2"]
    code, _, err = run(["fit", data, "--out", memory_out, *argv], capsys)
    assert code == 0, err
    # blocks of 50 rows, 8 blocks per shuffle >= 120 cells: the epoch order is torch.randperm,
    # so the batches (and the fit) are those of the in-memory run
    code, out, err = run(
        ["fit", data, "--backed", "--block-size", "50", "--out", backed_out, *argv], capsys
    )
    assert code == 0, err
    assert "read from disk" in out
    memory, backed = anndata.read_h5ad(memory_out), anndata.read_h5ad(backed_out)
    np.testing.assert_allclose(backed.obsm["X_pyrovae"], memory.obsm["X_pyrovae"], rtol=1e-5)
    np.testing.assert_allclose(
        backed.layers["pyrovae_denoised"], memory.layers["pyrovae_denoised"], rtol=1e-4
    )
    assert backed.uns["pyrovae"]["counts_layer"] == "counts"
    code, _, err = run(
        ["fit", data, "--backed", "--no-denoised", "--out", backed_out, *FAST], capsys
    )
    assert code == 0, err
    assert "not writing the denoised layer (--no-denoised)" in err
    assert "pyrovae_denoised" not in anndata.read_h5ad(backed_out).layers


def test_checkpoint_options_reach_fit_or_fail_clearly(data, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    argv = ["fit", data, "--out", tmp_path / "r.h5ad", *FAST, "--quiet", "--checkpoint", ckpt]
    code, _, err = run([*argv, "--checkpoint-every", "1"], capsys)
    assert code == 0, err
    assert ckpt.is_dir() and any(ckpt.iterdir())
    code, _, err = run([*argv, "--resume"], capsys)
    assert code == 0, err


def test_only_rank_zero_prints_and_writes(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")  # as torchrun sets it (no process group: WORLD_SIZE unset)
    out_path, model_path = tmp_path / "r.h5ad", tmp_path / "m.pt"
    code, out, err = run(["fit", data, "--out", out_path, "--save", model_path, *FAST], capsys)
    assert code == 0, err
    assert out == "" and err == ""
    assert not out_path.exists() and not model_path.exists()


def test_python_dash_m_pyrovae_runs_the_cli():
    help_ = subprocess.run(
        [sys.executable, "-m", "pyrovae", "fit", "--help"], capture_output=True, text=True
    )
    assert help_.returncode == 0
    for flag in ("--backed", "--checkpoint", "--checkpoint-every", "--resume", "--block-size"):
        assert flag in help_.stdout
