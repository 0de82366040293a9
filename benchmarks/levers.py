"""Speed levers of issue 10 for the likelihood and the SVI step, measured side by side.

On one CBMC batch (128 cells × 2,000 genes from ``--data``, per-gene NB, one hidden layer of
128, latent 10, one particle), alternated, median of ``--repeats`` rounds of ``--calls`` calls
(forward + backward):

1. **Sparse data term** (adopted): ``lgamma(x + θ) − lgamma(θ) − lgamma(x + 1)`` at the
   non-zero counts only (``pyrovae.priors._nonzero_counts``; exact: the terms are 0 where
   ``x = 0``), against the dense form (``SPARSE_FRACTION = 0``); the likelihood kernel is the
   decoder output → ``log_softplus`` → NB log pmf → sum.
2. **torch.compile** (not adopted) of the dense likelihood kernel, ``dynamic=True``, against
   what pyrovae does now (eager, sparse data term); also the one-off compile time.
3. **Pyro's JIT ELBO** (not adopted): ``JitTraceMeanField_ELBO`` against ``TraceMeanField_ELBO`` for the
   whole model/guide step (the JIT needs a mask tensor, so both get an all-True mask).

Then on whole fits of the reference note's protocol (``poisson_thinning()`` 500 × 100, full
batch, 10 particles, ``--epochs`` epochs, PVAE and NBVAE), each adopted per-step lever switched
off in turn against the code as it is (alternated, median of ``--repeats`` pairs):

4. **fused Adam** (``torch.optim.Adam(fused=True)``) against the default Adam;
5. **layers without Pyro ``param`` statements** inside the loop
   (``pyrovae._context.direct_parameters``) against the statements;
6. **written-out derivatives** of ``log_softplus`` and of the Poisson kernel against autograd of
   the composed forms.

Usage::

    python benchmarks/levers.py --threads 2            # about 4 minutes (the compile is ~40 s)
    python benchmarks/levers.py --fits-only --threads 2  # 4.-6. only, about 2 minutes
    python benchmarks/levers.py --quick                # smoke: tiny batch, few calls
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import warnings
from pathlib import Path

import torch
from _machine import machine  # benchmarks/ is sys.path[0] when this script runs
from speed import DEFAULT_DATA, _load

from pyrovae import priors
from pyrovae.nets import log_softplus


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
    print(f"  {name:<50} now {ma:7.2f} ms   lever {mb:7.2f} ms   lever/now {mb / ma:.2f}")


def nb_sum(sparse_fraction: float):
    """The likelihood kernel with the data-only terms sparse below ``sparse_fraction``."""

    def f(h, x, theta, log_s):
        priors.SPARSE_FRACTION = sparse_fraction
        return priors.nb_log_prob(x, log_softplus(h) + log_s, theta).sum()

    return f


def dense_kernel(h, x, theta, log_s):
    """The same kernel, dense, with no Python-side branching (for torch.compile)."""
    log_mean = log_softplus(h) + log_s
    sp_y, sp_neg_y = priors._softplus_pair(theta.log() - log_mean)
    data = torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1)
    return (data - x * sp_y - theta * sp_neg_y).sum()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CBMC .h5ad")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=50, help="4.-6.: epochs per fit")
    ap.add_argument("--fits-only", action="store_true", help="only 4.-6. (whole fits)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.calls, args.repeats = 2, 1
    if args.fits_only:
        print(f"torch threads {torch.get_num_threads()}; load average before {_load()}")
        fit_levers(args)
        print(f"load average after {_load()}")
        return
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

    default = priors.SPARSE_FRACTION
    now, dense = nb_sum(default), nb_sum(0.0)

    # 1. sparse data term (exactness first, in float64)
    def log_pmf(fraction):
        priors.SPARSE_FRACTION = fraction
        x64 = x.double()
        return priors.nb_log_prob(x64, torch.zeros_like(x64), theta.detach().double())

    assert torch.equal(log_pmf(default), log_pmf(0.0)), "sparse and dense data terms differ"
    compare("sparse data term (dense = lever)", step(now), step(dense), **_n(args))

    # 2. torch.compile of the dense likelihood kernel (nonzero would break the graph)
    try:
        start = time.perf_counter()
        compiled = torch.compile(dense_kernel, dynamic=True)
        compiled(h, x, theta, log_s).backward()
        print(f"  torch.compile: first call (compile) {time.perf_counter() - start:.1f} s")
        compare("torch.compile likelihood kernel", step(now), step(compiled), **_n(args))
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
    pyro.settings.set(module_local_params=True)
    fit_levers(args)
    print(f"load average after {_load()}")


@contextlib.contextmanager
def _patched(patches):
    """Temporarily replace module attributes: ``[(module, name, value), ...]``."""
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
    for mod, name, value in patches:
        setattr(mod, name, value)
    try:
        yield
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)


def fit_levers(args) -> None:
    """4.-6.: whole seed-protocol fits with one adopted lever switched off at a time."""
    import torch.nn.functional as F

    from pyrovae import NBVAE, PVAE, fit, nets
    from pyrovae.simulate import poisson_thinning

    def composed_log_softplus(h):
        return torch.where(h < -15.0, h, torch.log(F.softplus(h.clamp_min(-15.0))))

    def composed_poisson(value, log_rate):
        return (value * log_rate - log_rate.exp()) - priors._log_factorial(value)

    def default_adam(name, params, lr):
        return fit.OPTIMIZERS[name](params, lr=lr)

    switched_off = {
        "fused Adam (default Adam = lever)": [(fit, "_make_optimizer", default_adam)],
        "no param statements (with = lever)": [(fit, "direct_parameters", contextlib.nullcontext)],
        "written-out derivatives (autograd = lever)": [
            (nets, "log_softplus", composed_log_softplus),
            (priors, "poisson_log_prob", composed_poisson),
        ],
    }
    x = torch.as_tensor(poisson_thinning().x, dtype=torch.float32)
    epochs = 3 if args.quick else args.epochs
    print(f"whole fits: poisson_thinning() 500 × 100, full batch, 10 particles, {epochs} epochs")

    def fitted(cls, patches=()):
        def run():
            torch.manual_seed(0)
            with _patched(patches):
                cls(x.shape[1], 3).fit(x, lr=1e-2, n_samples=10, max_epochs=epochs)

        return run

    for cls in (PVAE, NBVAE):
        for name, patches in switched_off.items():
            compare(f"{cls.__name__}: {name}", fitted(cls), fitted(cls, patches), 1, args.repeats)


def _n(args) -> dict:
    return dict(calls=args.calls, repeats=args.repeats)


if __name__ == "__main__":
    main()
