"""Fits that the tests of data parallelism and checkpoints run in subprocesses (and helpers they
import): ``python tests/_svi_script.py MODE OUT [options]``.

- ``ddp``: float64 fit of a small model whose particles are a fixed function of (step, cell), so
  a fit split over ranks and the one-process fit over the same union batches are comparable;
  run it under ``torch.distributed.run`` (any number of processes) or alone (W = 1). Writes
  ``OUT/rank{r}.pt``: initial and final parameters, the cells each step saw, the history.
- ``fit``: a float32 fit with ordinary random particles, optionally checkpointed / resumed and
  slowed down (so that a test can kill it mid-fit). Writes ``OUT/final.pt``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as pdist
import torch

from pyrovae import distributed
from pyrovae._context import pyro_context
from pyrovae.data import CountData
from pyrovae.fit import run_svi
from pyrovae.guide import VAEGuide
from pyrovae.model import VAEModel
from pyrovae.priors import make_prior


def counts(n_cells=42, n_genes=12, seed=1):
    rng = np.random.default_rng(seed)
    mu = rng.lognormal(size=(n_cells, 2)) @ rng.lognormal(size=(2, n_genes))
    return rng.poisson(mu * rng.gamma(2.0, 0.5, size=mu.shape)).astype(np.float64)


def build(n_genes, dtype, guide_cls=VAEGuide, seed=0, prior="nb"):
    """Model and guide as :meth:`pyrovae.VAE._build` makes them."""
    pyro.set_rng_seed(seed)
    with pyro_context():
        model = VAEModel(n_genes, 2, make_prior(prior, n_genes), (8,)).to(dtype=dtype)
        guide = guide_cls(n_genes, 2, (8,)).to(dtype=dtype)
    return model, guide


class FixedNoise:
    """Standard-normal particles that depend only on (step, cell): ``eps[s, cell, k]``."""

    n_samples, latent_dim, n_cells = 3, 2, 0
    step, cells = 0, None

    @classmethod
    def eps(cls, dtype):
        g = torch.Generator().manual_seed(1000 + cls.step)
        table = torch.randn(cls.n_samples, cls.n_cells, cls.latent_dim, generator=g, dtype=dtype)
        return table[:, torch.as_tensor(cls.cells)]


class _FixedNoiseNormal(pdist.Normal):
    def rsample(self, sample_shape=()):
        shape = self._extended_shape(torch.Size(sample_shape))
        eps = FixedNoise.eps(self.loc.dtype)
        eps = eps if len(shape) == 3 else eps[0]
        return self.loc + self.scale * eps.expand(shape)


class FixedNoiseGuide(VAEGuide):
    """:class:`VAEGuide` whose particles come from :class:`FixedNoise`."""

    def forward(self, x, w=None, size_factor=None, n_cells=None):
        loc, scale = self.encoder(x, w)
        with pyro.plate("cells", x.shape[-2], dim=-1):
            return pyro.sample("z", _FixedNoiseNormal(loc, scale).to_event(1))


class RecordingSource:
    """Wraps a :class:`CountData`: records the cells of every ``batch`` call and points
    :class:`FixedNoise` at them (one call per step); optionally sleeps per batch."""

    def __init__(self, data, sleep=0.0):
        self.data, self.sleep, self.seen = data, sleep, []
        self.n_cells, self.n_genes = data.n_cells, data.n_genes

    def batch(self, idx=None, dtype=torch.float32, device="cpu"):
        cells = np.arange(self.n_cells) if idx is None else np.asarray(idx)
        self.seen.append(cells.tolist())
        FixedNoise.step += 1
        FixedNoise.cells = cells
        if self.sleep:
            time.sleep(self.sleep)
        return self.data.batch(idx, dtype, device)


def _params(model, guide):
    return [p.detach().clone() for p in (*model.parameters(), *guide.parameters())]


def _helpers():
    """The evaluation helpers of :mod:`pyrovae.distributed`, as each rank sees them."""
    rank = distributed.rank()
    n = 11
    rows = np.arange(2 * n).reshape(n, 2)[distributed.shard(n)]
    return dict(
        rows=rows,
        gathered=distributed.gather_rows(rows),
        gathered_on_0=distributed.gather_rows(rows, dst=0),
        total=distributed.all_reduce_sum(rank + 0.5),
        any_last=distributed.any_rank(rank == distributed.world_size() - 1),
        any_none=distributed.any_rank(False),
        broadcast=distributed.broadcast_object({"rank": rank}),
    )


def run_ddp(out: Path, objective: str, epochs: int, batch_size: int):
    rank = distributed.rank()
    x = counts()
    data = CountData(x, size_factor=x.sum(1) / np.median(x.sum(1)))
    FixedNoise.n_cells = data.n_cells
    # each rank initializes differently: DDP must start every rank from rank 0's parameters
    model, guide = build(data.n_genes, torch.float64, FixedNoiseGuide, seed=rank)
    initial = _params(model, guide)
    source = RecordingSource(data)
    held = CountData(counts(n_cells=10, seed=7))

    def validation_loss():  # this rank's share of deterministic held-out scores
        part = distributed.shard(held.n_cells)
        xv, _, _ = held.batch(np.arange(part.start, part.stop), torch.float64)
        with torch.no_grad(), pyro_context():
            loc, _ = guide.encoder(xv)
            return -float(model.prior.marginal(model.rate(loc)).log_prob(xv).sum())

    history = run_svi(
        model,
        guide,
        source,
        objective=objective,
        n_samples=FixedNoise.n_samples,
        lr=1e-2,
        max_epochs=epochs,
        batch_size=batch_size,
        validation_loss=validation_loss,
        seed=3,
        dtype=torch.float64,
    )
    torch.save(
        dict(
            initial=initial,
            final=_params(model, guide),
            seen=source.seen[1:],  # the first call builds the parameters
            loss=history.loss,
            val_loss=history.val_loss,
            world_size=distributed.world_size(),
            helpers=_helpers(),
        ),
        out / f"rank{rank}.pt",
    )


def run_fit(out: Path, epochs: int, checkpoint, every, resume: bool, sleep: float):
    x = counts(n_cells=60, seed=2)
    data = CountData(x.astype(np.float32))
    model, guide = build(data.n_genes, torch.float32, seed=0)
    source = RecordingSource(data, sleep=sleep)
    history = run_svi(
        model,
        guide,
        source,
        objective="iwae",
        n_samples=2,
        lr=1e-2,
        max_epochs=epochs,
        batch_size=16,
        seed=0,
        checkpoint_dir=checkpoint,
        checkpoint_every=every,
        resume=resume,
    )
    torch.save(dict(final=_params(model, guide), loss=history.loss), out / "final.pt")


def run_api(out: Path):
    """``VAE.fit`` and the evaluation methods inside a process group (each rank its share)."""
    from pyrovae import NBVAE

    x = counts(n_cells=45)
    est = NBVAE(latent_dim=2, hidden=(8,)).fit(
        x, max_epochs=3, batch_size=16, validation_fraction=0.2, size_factor="library", seed=2
    )
    outputs = dict(latent=est.latent(x), denoise=est.denoise(x, n_samples=3))
    params = [p.detach().clone() for p in (*est.model_.parameters(), *est.guide_.parameters())]
    torch.save(
        dict(params=params, trace=est.trace_, val=est.history_.val_loss, **outputs),
        out / f"api{distributed.rank()}.pt",
    )
    if distributed.is_main():
        est.save(out / "model.pt")


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["ddp", "fit", "api"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--objective", default="iwae")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--every", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--sleep", type=float, default=0.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.mode in ("ddp", "api"):
        with distributed.process_group():
            if args.mode == "api":
                run_api(args.out)
            else:
                run_ddp(args.out, args.objective, args.epochs, args.batch_size)
    else:
        run_fit(args.out, args.epochs, args.checkpoint, args.every, args.resume, args.sleep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
