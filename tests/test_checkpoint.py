"""Checkpoints: a fit killed with SIGKILL and resumed ends with the uninterrupted fit's parameters,
bit for bit; writes are atomic; a missing, corrupt or foreign checkpoint is a clear error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _svi_script import build, counts, run_fit

from pyrovae import checkpoint
from pyrovae.data import CountData
from pyrovae.fit import run_svi

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("_svi_script.py")
EPOCHS = 10


def _load(path):
    return torch.load(path, weights_only=False)


def test_a_fit_killed_mid_epoch_and_resumed_equals_the_uninterrupted_fit(tmp_path):
    full, killed, resumed, ck = (tmp_path / d for d in ("full", "killed", "resumed", "ck"))
    for d in (full, killed, resumed):
        d.mkdir()
    run_fit(full, EPOCHS, None, None, False, 0.0)  # uninterrupted, here
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{ROOT}{os.pathsep}{SCRIPT.parent}")
    # 4 steps per epoch, 50 ms each: killed about half-way through an epoch after the first
    # checkpoint, long before the end
    args = [sys.executable, str(SCRIPT), "fit", str(killed), "--epochs", str(EPOCHS)]
    args += ["--checkpoint", str(ck), "--every", "1", "--sleep", "0.05"]
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not checkpoint.path_in(ck).exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.01)
        time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "final.pt").exists()
    state = checkpoint.load(ck)
    assert 1 <= state["epoch"] < EPOCHS and len(state["history"]["loss"]) == state["epoch"]

    run_fit(resumed, EPOCHS, ck, 1, True, 0.0)  # resumed, here
    a, b = _load(full / "final.pt"), _load(resumed / "final.pt")
    assert a["loss"] == b["loss"] and len(a["loss"]) == EPOCHS
    for p, q in zip(a["final"], b["final"], strict=True):
        assert torch.equal(p, q)


def _fit(ck, resume=False, batch_size=16, max_epochs=2, **kwargs):
    data = CountData(counts(n_cells=30, seed=2).astype(np.float32))
    model, guide = build(data.n_genes, torch.float32)
    return run_svi(
        model,
        guide,
        data,
        lr=1e-2,
        max_epochs=max_epochs,
        batch_size=batch_size,
        seed=0,
        checkpoint_dir=ck,
        resume=resume,
        **kwargs,
    )


def test_missing_corrupt_or_foreign_checkpoints_are_clear_errors(tmp_path):
    ck = tmp_path / "ck"
    target = checkpoint.path_in(ck)
    with pytest.raises(ValueError, match=f"no checkpoint file {target}"):
        _fit(ck, resume=True)
    _fit(ck, max_epochs=1)
    good = target.read_bytes()
    with pytest.raises(ValueError, match=r"different fit \(batch_size: checkpoint 16, now 8"):
        _fit(ck, resume=True, batch_size=8)
    target.write_bytes(good[: len(good) // 2])  # truncated, e.g. by a full disk
    with pytest.raises(ValueError, match=f"checkpoint file {target} is corrupt or unreadable"):
        _fit(ck, resume=True)
    target.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=f"checkpoint file {target} is corrupt or unreadable"):
        _fit(ck, resume=True)
    torch.save({"weights": torch.zeros(3)}, target)
    with pytest.raises(ValueError, match="is not a pyrovae checkpoint"):
        _fit(ck, resume=True)
    with pytest.raises(ValueError, match="need a checkpoint_dir"):
        _fit(None, resume=True)


def test_a_write_that_fails_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    ck = tmp_path / "ck"
    _fit(ck, max_epochs=1)
    before = checkpoint.path_in(ck).read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a payload")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save({"epoch": 5}, ck)
    assert checkpoint.path_in(ck).read_bytes() == before
    assert os.listdir(ck) == [checkpoint.FILENAME]  # no temporary file left behind


def test_resuming_a_finished_fit_changes_nothing(tmp_path):
    ck = tmp_path / "ck"
    h = _fit(ck, max_epochs=3, checkpoint_every=2)
    assert checkpoint.load(ck)["epoch"] == 3  # the last epoch is always saved
    again = _fit(ck, resume=True, max_epochs=3, checkpoint_every=2)
    assert again.loss == h.loss
