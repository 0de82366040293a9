r"""Data-parallel SVI: the gradient scaling that makes DDP's average the one-process gradient, the
shards, and a real two-process gloo fit (``python -m torch.distributed.run``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _svi_script import FixedNoise, FixedNoiseGuide, build, counts, run_ddp

from pyrovae import distributed, objectives
from pyrovae.data import CountData
from pyrovae.fit import _loss_and_grads, _SVIModule, step_batches

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("_svi_script.py")


def _grads(module, data, cells, scale, elbo):
    module.zero_grad(set_to_none=True)
    FixedNoise.cells = cells
    x, w, s = data.batch(np.sort(cells), torch.float64)
    _loss_and_grads(module, elbo, 1.0, x, w, s, scale)
    return [p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_average_of_half_batch_gradients_at_scale_n_over_b_is_the_full_batch_gradient(objective):
    r"""With the same particles per cell, :math:`\frac12 (\nabla \frac NB L(A) + \nabla \frac NB
    L(B)) = \nabla \frac{N}{2B} L(A \cup B)`, the identity DDP's averaging relies on."""
    x = counts()
    n = len(x)
    data = CountData(x, size_factor=x.sum(1) / np.median(x.sum(1)))
    FixedNoise.n_cells, FixedNoise.step = n, 0
    model, guide = build(data.n_genes, torch.float64, FixedNoiseGuide)
    module = _SVIModule(model, guide)
    elbo = objectives.make_elbo(objective, FixedNoise.n_samples)
    cells = np.sort(np.random.default_rng(0).permutation(n)[:16])
    full = _grads(module, data, cells, n / 16, elbo)
    a = _grads(module, data, cells[:8], n / 8, elbo)
    b = _grads(module, data, cells[8:], n / 8, elbo)
    for g, ga, gb in zip(full, a, b, strict=True):
        torch.testing.assert_close((ga + gb) / 2, g, rtol=1e-11, atol=1e-11)
    # the IWAE log-mean-exp is per cell: the loss of the union is the sum of the parts' losses
    FixedNoise.cells = cells
    union = module(elbo, 1.0, *data.batch(cells, torch.float64))
    FixedNoise.cells = cells[:8]
    part_a = module(elbo, 1.0, *data.batch(cells[:8], torch.float64))
    FixedNoise.cells = cells[8:]
    part_b = module(elbo, 1.0, *data.batch(cells[8:], torch.float64))
    torch.testing.assert_close(part_a + part_b, union, rtol=1e-12, atol=0)


@pytest.mark.parametrize("n, batch_size, world", [(42, 10, 2), (41, 10, 3), (7, 3, 2), (9, 9, 4)])
def test_shards_are_disjoint_complete_and_equal_in_number(n, batch_size, world):
    order = np.random.default_rng(n).permutation(n)
    per_rank = [step_batches(order, batch_size, r, world) for r in range(world)]
    assert len({len(p) for p in per_rank}) == 1  # every rank takes the same number of steps
    seen = np.concatenate([idx for p in per_rank for idx, _ in p])
    np.testing.assert_array_equal(np.sort(seen), np.arange(n))  # disjoint and complete
    one = step_batches(order, batch_size)
    for step in range(len(per_rank[0])):
        parts = [p[step][0] for p in per_rank]
        assert all(len(c) > 0 for c in parts)
        union = np.sort(np.concatenate(parts))
        assert all(p[step][1] == len(union) for p in per_rank)
        if len(one) == len(per_rank[0]):  # no merged tail: the same batches as one process
            np.testing.assert_array_equal(union, one[step][0])


def test_helpers_are_no_ops_without_a_process_group():
    assert not distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.all_reduce_sum(2.5) == 2.5 and distributed.any_rank(False) is False
    assert distributed.shard(10) == slice(0, 10)
    assert [distributed.shard(10, r, 3) for r in range(3)] == [
        slice(0, 3),
        slice(3, 6),
        slice(6, 10),
    ]
    rows = np.arange(6).reshape(3, 2)
    assert distributed.gather_rows(rows) is rows
    with pytest.raises(ValueError, match="rank 3"):
        distributed.shard(10, 3, 3)


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{ROOT}{os.pathsep}{SCRIPT.parent}")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _run(args, timeout=120):
    proc = subprocess.run(
        args, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-12000:]


def test_two_gloo_processes_train_one_model_equal_to_the_one_process_fit(tmp_path):
    """torchrun-started ranks: identical parameters (rank 0's start), disjoint complete shards,
    and the parameters of a one-process fit over the same union batches (float64)."""
    ddp, one = tmp_path / "ddp", tmp_path / "one"
    ddp.mkdir()
    one.mkdir()
    args = ["ddp", "--objective", "iwae", "--epochs", "2", "--batch-size", "10"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    _run([*launcher, "--nproc-per-node=2", str(SCRIPT), args[0], str(ddp), *args[1:]])
    FixedNoise.step = 0
    run_ddp(one, "iwae", epochs=2, batch_size=10)  # here, without a process group
    r0, r1 = (torch.load(ddp / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    ref = torch.load(one / "rank0.pt", weights_only=False)
    assert r0["world_size"] == r1["world_size"] == 2 and ref["world_size"] == 1
    # the ranks started apart; DDP started both from rank 0's parameters, which the
    # one-process fit (seeded like rank 0) shares
    assert not all(torch.equal(p, q) for p, q in zip(r0["initial"], r1["initial"], strict=True))
    for p, q in zip(r0["initial"], ref["initial"], strict=True):
        assert torch.equal(p, q)
    for p, q, r in zip(r0["final"], r1["final"], ref["final"], strict=True):
        assert torch.equal(p, q)  # identical on both ranks
        torch.testing.assert_close(p, r, rtol=1e-9, atol=1e-12)
    assert not any(torch.equal(p, q) for p, q in zip(r0["final"], r0["initial"], strict=True))
    # shards: per step disjoint, their union the one-process batch; per epoch complete
    assert len(r0["seen"]) == len(r1["seen"]) == len(ref["seen"])
    for a, b, u in zip(r0["seen"], r1["seen"], ref["seen"], strict=True):
        assert not set(a) & set(b) and sorted(a + b) == u
    steps = len(ref["seen"]) // 2
    for epoch in range(2):
        cells = [
            c for r in (r0, r1) for s in r["seen"][epoch * steps : (epoch + 1) * steps] for c in s
        ]
        assert sorted(cells) == list(range(42))
    # epoch losses and validation losses are summed over ranks
    np.testing.assert_allclose(r0["loss"], ref["loss"], rtol=1e-10)
    np.testing.assert_allclose(r0["val_loss"], ref["val_loss"], rtol=1e-10)
    assert r0["val_loss"] == r1["val_loss"] and r0["loss"] == r1["loss"]

    # the evaluation helpers across two real ranks
    h0, h1 = r0["helpers"], r1["helpers"]
    full = np.arange(22).reshape(11, 2)
    np.testing.assert_array_equal(np.concatenate([h0["rows"], h1["rows"]]), full)
    for h in (h0, h1):
        np.testing.assert_array_equal(h["gathered"], full)
        assert h["total"] == 2.0 and h["any_last"] and not h["any_none"]
        assert h["broadcast"] == {"rank": 0}
    np.testing.assert_array_equal(h0["gathered_on_0"], full)
    assert h1["gathered_on_0"] is None


def test_estimator_fit_and_sharded_evaluation_under_two_gloo_processes(tmp_path):
    """VAE.fit inside a process group: both ranks end with the same parameters, and latent /
    denoise, each rank computing its share, equal a one-process evaluation of the saved model."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    _run([*launcher, "--nproc-per-node=2", str(SCRIPT), "api", str(tmp_path)])
    r0, r1 = (torch.load(tmp_path / f"api{r}.pt", weights_only=False) for r in (0, 1))
    for p, q in zip(r0["params"], r1["params"], strict=True):
        assert torch.equal(p, q)
    np.testing.assert_array_equal(r0["trace"], r1["trace"])
    assert r0["val"] == r1["val"] and len(r0["val"]) == 3
    import pyrovae

    alone = pyrovae.VAE.load(tmp_path / "model.pt")
    x = counts(n_cells=45)
    for r in (r0, r1):
        np.testing.assert_allclose(r["latent"], alone.latent(x), rtol=1e-6, atol=1e-7)
        # (other chunk shapes: float32 rounding may differ in the last bit)
        np.testing.assert_allclose(r["denoise"], alone.denoise(x, n_samples=3), rtol=1e-6)


def test_the_cli_manages_the_process_group_under_torchrun(monkeypatch, capsys):
    import torch.distributed as torch_dist

    import pyrovae.cli as cli

    for k in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    inside = []
    monkeypatch.setattr(cli, "_fit", lambda args: inside.append(torch_dist.is_initialized()) or 0)
    assert cli.main(["fit", "data.h5ad"]) == 0 and inside == [False]
    # launched by torchrun: a group exists while the command runs, and is gone afterwards
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(
        distributed.dist, "init_process_group", lambda backend: inside.append(backend)
    )
    monkeypatch.setattr(distributed, "is_distributed", lambda: False)
    assert cli.main(["fit", "data.h5ad", "--device", "cpu"]) == 0
    assert inside == [False, "gloo", False]


def test_destroy_waits_for_every_rank_unless_told_not_to(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed.dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: calls.append("destroy"))
    distributed.destroy()
    assert calls == ["barrier", "destroy"]
    distributed.destroy(wait=False)
    assert calls == ["barrier", "destroy", "destroy"]


@pytest.mark.parametrize("created", [False, True])
def test_process_group_destroys_only_its_own_group_and_waits_only_after_success(
    monkeypatch, created
):
    waits = []
    monkeypatch.setattr(distributed, "init_from_env", lambda backend: created)
    monkeypatch.setattr(distributed, "destroy", lambda wait=True: waits.append(wait))
    with distributed.process_group() as made:
        assert made is created
    with pytest.raises(KeyError), distributed.process_group():
        raise KeyError("a failure on this rank")
    assert waits == ([True, False] if created else [])


@pytest.mark.parametrize("fails", [False, True])
def test_the_cli_waits_for_the_other_ranks_only_when_the_command_succeeded(monkeypatch, fails):
    import pyrovae.cli as cli

    def fit(args):
        if fails:
            raise cli.UsageError("bad input on this rank")
        return 0

    waits = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(cli, "_fit", fit)
    monkeypatch.setattr(distributed, "init_from_env", lambda backend: True)
    monkeypatch.setattr(distributed, "destroy", lambda wait=True: waits.append(wait))
    assert cli.main(["fit", "data.h5ad", "--device", "cpu", "--quiet"]) == (2 if fails else 0)
    assert waits == [not fails]
