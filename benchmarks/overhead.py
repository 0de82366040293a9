"""Overhead of pyrovae's SVI loop against a plain-PyTorch loop of the same model.

The plain loop below is written from scratch with ``torch.nn`` only and computes the same thing
as pyrovae's ``NBVAE`` (or ``PVAE``) training step:

* encoder: ``log1p(x)`` -> 2 x (Linear 128 + ReLU) -> mean head and ``softplus(.) + 1e-4``
  scale head; decoder mirrored, ``log mu = log(softplus(.))`` (same underflow guard as
  :func:`pyrovae.nets.log_softplus`), plus the log size factor, and the rate
  ``exp(log mu)`` floored at the smallest normal float (as :meth:`pyrovae.model.VAEModel.rate`);
* likelihood: the negative binomial log pmf of :class:`pyrovae.priors.NegativeBinomial` with a
  shared inverse dispersion learned on the log scale (pyrovae's ``constraints.positive``), or
  the Poisson log pmf of ``torch.distributions.Poisson``;
* objective: the ELBO with analytic KL (Pyro's ``TraceMeanField_ELBO``) and S vectorized
  particles, scaled by ``N / B`` for a minibatch; Adam with the same learning rate and batch size.

Before timing, the script checks that both compute the same loss value from the same
parameters and the same random draws (it stops if they differ). The two then train side by side
in one process, epoch by epoch: after each epoch of pyrovae's loop (:func:`pyrovae.fit.run_svi`,
the loop behind ``VAE.fit``, with its divergence checks) the plain loop runs one epoch, so both
see the same machine load. Each run starts from fresh parameters and drops its first epoch
(warm-up). The script prints the median wall time per epoch of each and the median of the
per-epoch ratios pyrovae / plain, for wall time and for CPU time (``time.process_time``; less
sensitive to other jobs on the machine).

Memory note: both allocate and free tensors of (particles x cells x genes) floats every step;
glibc returns some of that memory to the OS and page-faults it back, at a cost that varies from
run to run by several ms per epoch (``ru_minflt``). That noise affects both loops.

Cases: (a) the reference's 500 x 100 Poisson-thinning simulation, full batch, 10 particles;
(b) the bundled PBMC 3k subset (2700 x 1000, sparse CSR) with library size factors, minibatches
of 256 cells.

    .venv/bin/python benchmarks/overhead.py                  # both cases, about 2 min
    .venv/bin/python benchmarks/overhead.py --case a --threads 2
    .venv/bin/python benchmarks/overhead.py --quick          # smoke run, < 60 s
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyro
import torch
import torch.nn.functional as F
from _machine import machine  # benchmarks/_machine.py (scripts run from this folder)
from torch import nn

from pyrovae import pyro_context
from pyrovae.data import CountData, as_counts, library_size
from pyrovae.datasets import pbmc3k
from pyrovae.fit import run_svi
from pyrovae.guide import VAEGuide
from pyrovae.model import VAEModel
from pyrovae.priors import Gamma, PointMass
from pyrovae.simulate import poisson_thinning

RESULTS = Path(__file__).resolve().parent / "results"


# -- the plain-PyTorch contender ------------------------------------------------------------------
class PlainVAE(nn.Module):
    """Encoder/decoder/likelihood of pyrovae's VAE, in plain torch."""

    def __init__(self, p: int, k: int, prior: str, hidden=(128, 128)):
        super().__init__()
        sizes = [p, *hidden]
        self.enc = nn.Sequential(*_mlp(sizes))
        self.mean = nn.Linear(hidden[-1], k)
        self.scale = nn.Linear(hidden[-1], k)
        self.dec = nn.Sequential(*_mlp([k, *reversed(hidden)]))
        self.out = nn.Linear(hidden[0], p)
        self.prior = prior
        if prior == "gamma":
            self.log_theta = nn.Parameter(torch.zeros(()))  # theta = 1, as pyrovae's Gamma()

    def loss(self, x, size_factor, n_samples: int, scale: float = 1.0) -> torch.Tensor:
        h = self.enc(torch.log1p(x))
        loc, sd = self.mean(h), F.softplus(self.scale(h)) + 1e-4
        z = loc + sd * torch.randn((n_samples, *loc.shape), dtype=loc.dtype)
        g = self.out(self.dec(z))
        tiny = torch.finfo(g.dtype).tiny
        log_mu = torch.where(g < -15.0, g, torch.log(F.softplus(g).clamp_min(tiny)))
        if size_factor is not None:
            log_mu = log_mu + size_factor.log().unsqueeze(-1)
        mu = log_mu.exp().clamp_min(tiny)  # as pyrovae.model.VAEModel.rate
        if self.prior == "gamma":
            theta = self.log_theta.exp()
            y = theta.log() - mu.log()
            zero = torch.zeros_like(y)
            x_term = torch.where(x > 0, x * torch.logaddexp(zero, y), zero)
            lp = (
                torch.lgamma(x + theta)
                - torch.lgamma(theta)
                - torch.lgamma(x + 1)
                - x_term
                - theta * torch.logaddexp(zero, -y)
            )
        else:
            lp = torch.xlogy(x, mu) - mu - torch.lgamma(x + 1)
        var = sd.pow(2)
        kl = 0.5 * (var + loc.pow(2) - 1 - var.log())
        return -(lp.sum() / n_samples - kl.sum()) * scale


def _mlp(sizes):
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return layers


class PlainTrainer:
    """A plain training loop: Adam on :class:`PlainVAE`, shuffled minibatches (or full batch)."""

    def __init__(self, x, s, prior, k, n_samples, batch_size, lr, seed):
        torch.manual_seed(seed)
        self.x, self.s, self.n_samples, self.batch_size = x, s, n_samples, batch_size
        self.net = PlainVAE(x.shape[1], k, prior)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)

    def epoch(self) -> float:
        n = self.x.shape[0]
        if self.batch_size >= n:
            batches = [None]
        else:
            order = torch.randperm(n)
            batches = [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
        total = 0.0
        for idx in batches:
            xb = self.x if idx is None else self.x[idx]
            sb = self.s if (self.s is None or idx is None) else self.s[idx]
            m = xb.shape[0]
            self.opt.zero_grad(set_to_none=True)
            loss = self.net.loss(xb, sb, self.n_samples, scale=n / m)
            loss.backward()
            self.opt.step()
            total += loss.item() * m / n
        return total


# -- pyrovae --------------------------------------------------------------------------------------
def build_pyrovae(p, k, prior):
    with pyro_context():
        u_prior = Gamma() if prior == "gamma" else PointMass()
        return VAEModel(p, k, u_prior), VAEGuide(p, k)


def interleaved(
    data: CountData, plain: PlainTrainer, prior, k, n_samples, batch_size, lr, epochs, seed
):
    """Train a fresh pyrovae model/guide with :func:`pyrovae.fit.run_svi` (the loop behind
    ``VAE.fit``) and, after each of its epochs, one epoch of ``plain``. Returns the wall and
    CPU times of each epoch of both, and the last losses."""
    pyro.set_rng_seed(seed)
    model, guide = build_pyrovae(data.n_genes, k, prior)
    times = {"pyrovae": [], "plain": []}
    cpu = {"pyrovae": [], "plain": []}
    last = {}
    mark = [time.perf_counter(), time.process_time()]

    def callback(epoch, loss):
        t, c = time.perf_counter(), time.process_time()
        times["pyrovae"].append(t - mark[0])
        cpu["pyrovae"].append(c - mark[1])
        last["pyrovae"] = loss
        last["plain"] = plain.epoch()
        t2, c2 = time.perf_counter(), time.process_time()
        times["plain"].append(t2 - t)
        cpu["plain"].append(c2 - c)
        mark[:] = time.perf_counter(), time.process_time()

    run_svi(
        model,
        guide,
        data,
        objective="elbo",
        n_samples=n_samples,
        lr=lr,
        max_epochs=epochs,
        batch_size=batch_size,
        generator=torch.Generator().manual_seed(seed),
        callback=callback,
    )
    return times, cpu, last


def check_same_loss(data: CountData, prior, k, n_samples):
    """Loss of pyrovae's Pyro ELBO and of the plain loop at the same parameters and draws."""
    from pyrovae import objectives

    pyro.set_rng_seed(0)
    model, guide = build_pyrovae(data.n_genes, k, prior)
    net = PlainVAE(data.n_genes, k, prior)
    with torch.no_grad():
        enc, dec = guide.encoder, model.decoder
        pairs = [
            (net.enc[0], enc.body[0]),
            (net.enc[2], enc.body[2]),
            (net.mean, enc.mean),
            (net.scale, enc.scale),
            (net.dec[0], dec.body[0]),
            (net.dec[2], dec.body[2]),
            (net.out, dec.out),
        ]
        for a, b in pairs:
            a.weight.copy_(b.weight)
            a.bias.copy_(b.bias)
        if prior == "gamma":
            net.log_theta.copy_(model.prior.inv_dispersion.log())
    x, _, s = data.batch(np.arange(min(data.n_cells, 256)))
    elbo = objectives.make_elbo("elbo", n_samples)
    torch.manual_seed(1)
    with pyro.validation_enabled(False):
        a = objectives.loss(elbo, model, guide, x, None, s)
    torch.manual_seed(1)
    with torch.no_grad():
        b = float(net.loss(x, s, n_samples))
    return a, b


# -- driver ---------------------------------------------------------------------------------------
def load_case(name, dense=False):
    if name == "a":
        sim = poisson_thinning(0)
        x = as_counts(sim.x)
        return dict(
            title="(a) thinning 500x100, full batch",
            data=CountData(x),
            x_plain=torch.as_tensor(x, dtype=torch.float32),
            s_plain=None,
            batch_size=x.shape[0],
            k=3,
        )
    ds = pbmc3k()
    x = as_counts(ds.counts)  # CSR stays CSR, as in VAE.fit
    total = library_size(x)
    s = total / np.median(total)
    return dict(
        title=f"(b) PBMC 3k 2700x1000 {'dense' if dense else 'CSR'}, size factors, batch 256",
        data=CountData(x.toarray() if dense else x, None, s),
        x_plain=torch.as_tensor(x.toarray(), dtype=torch.float32),  # plain: dense once
        s_plain=torch.as_tensor(s, dtype=torch.float32),
        batch_size=256,
        k=10,
    )


def run_case(name, args):
    case = load_case(name, dense=args.pbmc_dense)
    data, k, bs = case["data"], case["k"], case["batch_size"]
    epochs = args.epochs if args.epochs else (20 if name == "a" else 6)
    if args.quick:
        epochs = 4 if name == "a" else 2
    print(f"\n== {case['title']}: prior {args.prior}, K={k}, S={args.n_samples}, lr={args.lr}")
    a, b = check_same_loss(data, args.prior, k, args.n_samples)
    print(f"same-loss check (256 cells, same params and draws): pyrovae {a:.6g}  plain {b:.6g}")
    if not math.isclose(a, b, rel_tol=1e-5):
        sys.exit("the plain loop does not compute pyrovae's loss; fix the benchmark")
    repeats = 1 if args.quick else args.repeats
    wall = {"pyrovae": [], "plain": []}
    cpu = {"pyrovae": [], "plain": []}
    ratios, cpu_ratios = [], []
    for r in range(repeats):
        plain = PlainTrainer(
            case["x_plain"], case["s_plain"], args.prior, k, args.n_samples, bs, args.lr, seed=r
        )
        t, c, last = interleaved(data, plain, args.prior, k, args.n_samples, bs, args.lr, epochs, r)
        keep = slice(1, None) if epochs > 1 else slice(None)  # first epoch: warm-up
        for name in wall:
            wall[name] += t[name][keep]
            cpu[name] += c[name][keep]
        pair = [a / b for a, b in zip(t["pyrovae"][keep], t["plain"][keep], strict=True)]
        ratios += pair
        cpu_ratios += [a / b for a, b in zip(c["pyrovae"][keep], c["plain"][keep], strict=True)]
        print(
            f"  run {r}: pyrovae {1e3 * statistics.median(t['pyrovae'][keep]):.1f} ms  plain "
            f"{1e3 * statistics.median(t['plain'][keep]):.1f} ms  ratio "
            f"{statistics.median(pair):.3f}  (last losses {last['pyrovae']:.5g}, "
            f"{last['plain']:.5g})"
        )
    med = {name: statistics.median(v) for name, v in wall.items()}
    ratio, cpu_ratio = statistics.median(ratios), statistics.median(cpu_ratios)
    print(
        f"median over {len(ratios)} interleaved epochs: pyrovae {1e3 * med['pyrovae']:.1f} ms, "
        f"plain {1e3 * med['plain']:.1f} ms per epoch; ratio pyrovae/plain {ratio:.3f} wall, "
        f"{cpu_ratio:.3f} CPU time (target <= 1.1)"
    )
    return case["title"], med, ratio, cpu_ratio


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", choices=["a", "b", "both"], default="both")
    ap.add_argument("--prior", choices=["gamma", "poisson"], default="gamma")
    ap.add_argument("--n-samples", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--epochs", type=int, default=None, help="epochs per timed run")
    ap.add_argument("--repeats", type=int, default=6, help="timed runs (fresh models each)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument(
        "--pbmc-dense", action="store_true", help="(b): give pyrovae a dense array, not CSR"
    )
    ap.add_argument("--quick", action="store_true", help="smoke run (< 60 s)")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    m = machine()
    print(
        f"machine: {m['nproc']} CPUs ({m['cpu']}), torch {m['torch']}, pyro {m['pyro']}, "
        f"python {m['python']}, torch threads {m['threads']}, load average {m['load']}"
    )
    rows = []
    for name in ["a", "b"] if args.case == "both" else [args.case]:
        title, med, ratio, cpu_ratio = run_case(name, args)
        rows.append(
            f"| overhead {title} | {args.prior}, S={args.n_samples} | "
            f"{1e3 * med['pyrovae']:.1f} ms | {1e3 * med['plain']:.1f} ms | {ratio:.2f} ({cpu_ratio:.2f}) | "
            f"{m['nproc']} x {m['cpu']}, torch {m['torch']}, {m['threads']} thread(s) |"
        )
    header = (
        "| benchmark | setting | pyrovae / epoch | plain / epoch | ratio wall (CPU) | machine |\n"
        "|---|---|---|---|---|---|"
    )
    table = "\n".join([header, *rows])
    print("\nMarkdown rows:\n" + table)
    if not (args.no_save or args.quick):
        RESULTS.mkdir(exist_ok=True)
        with open(RESULTS / "overhead.txt", "a") as fh:  # one section per run
            fh.write(
                f"\n## {time.strftime('%Y-%m-%d %H:%M')}: {' '.join(sys.argv[1:]) or '(defaults)'}"
                f"\nload average at start {m['load']}\n\n{table}\n"
            )


if __name__ == "__main__":
    main()
