"""Speed levers of issue 10 that were measured and *not* adopted, measured again side by side.

On one CBMC batch (128 cells × 2,000 genes from ``--data``, per-gene NB, one hidden layer of
128, latent 10, one particle), each lever against what pyrovae does now, alternated, median of
``--repeats`` rounds of ``--calls`` calls (forward + backward):

1. **torch.compile** of the likelihood kernel (decoder output → ``log_softplus`` → NB log pmf →
   sum), ``dynamic=True``, against eager; also the one-off compile time.
2. **Sparse data term**: ``lgamma(x + θ) − lgamma(θ) − lgamma(x + 1)`` only at the non-zero
   counts (``nonzero`` + gather + scatter, exact: it is 0 where ``x = 0``), against dense.
3. **Pyro's JIT ELBO**: ``JitTraceMeanField_ELBO`` against ``TraceMeanField_ELBO`` for the
   whole model/guide step (the JIT needs a mask tensor, so both get an all-True mask).

Usage::

    python benchmarks/levers.py --threads 2            # about 2 minutes (the compile is ~40 s)
    python benchmarks/levers.py --quick                # smoke: tiny batch, few calls
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import torch
from _machine import machine  # benchmarks/ is sys.path[0] when this script runs
from speed import DEFAULT_DATA, _load

from pyrovae.nets import log_softplus
from pyrovae.priors import _lgamma_ratio, _softplus_pair


def _timed(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


def compare(name: str, ours, lever, calls: int, repeats: int) -> None:
    """Alternate ``ours`` and ``lever`` (each called ``calls`` times per round); print ms/call."""
    for fn in (ours, lever):  # warm-up
        fn()
        fn()
    a, b = [], []
    for _ in range(repeats):
        a.append(_timed(ours, calls))
        b.append(_timed(lever, calls))
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"  {name:<40} now {ma:7.2f} ms   lever {mb:7.2f} ms   lever/now {mb / ma:.2f}")


def sparse_lgamma_ratio(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """:func:`pyrovae.priors._lgamma_ratio` evaluated at the non-zero counts only."""
    idx = x.nonzero(as_tuple=True)
    v = x[idx]
    t = theta[idx[-1]] if theta.dim() == 1 else theta
    values = torch.lgamma(v + t) - torch.lgamma(t) - torch.lgamma(v + 1)
    return x.new_zeros(x.shape).index_put(idx, values)


def nb_sum(ratio):
    def f(h, x, theta, log_s):
        log_mean = log_softplus(h) + log_s
        sp_y, sp_neg_y = _softplus_pair(theta.log() - log_mean)
        return (ratio(x, theta) - x * sp_y - theta * sp_neg_y).sum()

    return f


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CBMC .h5ad")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.calls, args.repeats = 2, 1
    import anndata
    import pyro
    import scipy.sparse as sp

    from pyrovae.guide import VAEGuide
    from pyrovae.model import VAEModel
    from pyrovae.priors import Gamma

    m = machine()
    print(
        f"machine: {m['nproc']} CPUs ({m['cpu']}), torch {m['torch']}, pyro {m['pyro']}; torch "
        f"threads {torch.get_num_threads()}; load average before {_load()}"
    )
    cells = 16 if args.quick else 128
    x = torch.as_tensor(
        sp.csr_matrix(anndata.read_h5ad(args.data).X)[:cells].toarray(), dtype=torch.float32
    )
    p = x.shape[1]
    print(f"batch {cells} × {p}, {float((x > 0).float().mean()):.0%} non-zero")
    torch.manual_seed(0)
    h = torch.randn(cells, p, requires_grad=True)
    theta = torch.rand(p).add(0.5).requires_grad_()
    log_s = torch.zeros(cells, 1)

    def step(fn):
        return lambda: fn(h, x, theta, log_s).backward()

    # 2. sparse data term (exactness first, in float64)
    x64, t64 = x.double(), theta.detach().double()
    assert torch.equal(_lgamma_ratio(x64, t64), sparse_lgamma_ratio(x64, t64))
    eager = nb_sum(_lgamma_ratio)
    compare("sparse data term", step(eager), step(nb_sum(sparse_lgamma_ratio)), **_n(args))

    # 1. torch.compile of the likelihood kernel
    try:
        start = time.perf_counter()
        compiled = torch.compile(eager, dynamic=True)
        compiled(h, x, theta, log_s).backward()
        print(f"  torch.compile: first call (compile) {time.perf_counter() - start:.1f} s")
        compare("torch.compile likelihood kernel", step(eager), step(compiled), **_n(args))
    except Exception as err:  # no C++ compiler, unsupported platform: report and go on
        print(f"  torch.compile unavailable here: {type(err).__name__}: {str(err)[:200]}")

    # 3. Pyro's JIT ELBO on the whole step (global param store, no module-local params)
    pyro.settings.set(module_local_params=False)
    model = VAEModel(p, 10, Gamma(n_genes=p), hidden=(128,))
    guide = VAEGuide(p, 10, hidden=(128,))
    w = torch.ones_like(x, dtype=torch.bool)
    s = x.sum(-1) / x.sum(-1).median()
    plain = pyro.infer.TraceMeanField_ELBO()
    jit = pyro.infer.JitTraceMeanField_ELBO(ignore_jit_warnings=True)
    with pyro.validation_enabled(False), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compare(
            "JitTraceMeanField_ELBO step",
            lambda: plain.differentiable_loss(model, guide, x, w, s).backward(),
            lambda: jit.differentiable_loss(model, guide, x, w, s).backward(),
            **_n(args),
        )
    print(f"load average after {_load()}")


def _n(args) -> dict:
    return dict(calls=args.calls, repeats=args.repeats)


if __name__ == "__main__":
    main()
