"""Smoke test of the main job, ``python -m pyrovae.demo --quick`` (run in-process)."""

from __future__ import annotations

import numpy as np

from pyrovae import demo


def test_quick_demo_prints_the_table_and_progress_on_stderr(capsys):
    table = demo.main(["--quick"])
    out, err = capsys.readouterr()
    methods = table.index.get_level_values("method")
    for name in ("NBVAE-3 denoise(x)", "ZINBVAE-3 denoise(x)", "NBVAE-10 denoise(x_train)"):
        assert name in methods
    assert np.isfinite(table["score"]).all() and (table["score"] < 0).all()
    epochs = table["epochs"][table["epochs"] != ""].astype(int)
    assert (epochs >= 1).all() and (epochs <= demo.QUICK["max_epochs"]).all()
    # the table goes to stdout, one progress bar per fit to stderr
    assert "NBVAE-3 denoise(x)" in out and "n_samples=" in out and "fit:" not in out
    assert err.count("fit:") >= 1 and "NMF rank 27" in err and "NMF rank 10" in err
    assert err.count("simulation: ") == 2
