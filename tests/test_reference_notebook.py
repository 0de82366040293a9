# ruff: noqa: NPY002 - the note's code, verbatim, uses numpy's legacy global RNG
"""The reference note's code, verbatim but for ``import pyrovae as scmodes`` (and fewer epochs)."""

import numpy as np
import pandas as pd
import scipy.stats as st
import torch

import pyrovae as scmodes

EPOCHS = 3  # the note used 3000


def test_the_notes_thinning_calls_run_unchanged():
    np.random.seed(0)
    n = 50
    p = 20
    k = 3
    l = np.random.lognormal(sigma=0.5, size=(n, k))  # noqa: E741
    f = np.random.lognormal(sigma=0.5, size=(p, k))
    mu = l @ f.T
    u = np.random.gamma(shape=0.1, scale=10, size=(n, p))
    lam = mu * u
    x = np.random.poisson(lam=lam)
    xt = torch.tensor(x, dtype=torch.float)
    x_val = np.random.poisson(lam=lam)
    xvt = torch.tensor(x_val, dtype=torch.float)
    m0 = scmodes.lra.vae.PVAE(input_dim=p, latent_dim=3).fit(
        xt, lr=1e-2, n_samples=10, max_epochs=EPOCHS, trace=True
    )
    m1 = scmodes.lra.vae.NBVAE(input_dim=p, latent_dim=3, disp_by_gene=False).fit(
        xt, lr=1e-2, n_samples=10, max_epochs=EPOCHS, trace=True
    )
    m2 = scmodes.lra.vae.ZINBVAE(
        input_dim=p, latent_dim=3, disp_by_gene=False, logodds_by_gene=False
    ).fit(xt, lr=1e-2, n_samples=10, max_epochs=EPOCHS, trace=True)
    scores = pd.Series(
        {
            f"{type(m).__name__}-{m.encoder.mean.out_features}": st.poisson(mu=m.denoise(xvt))
            .logpmf(x_val)
            .mean()
            for m in (m0, m1, m2)
        }
    )
    assert list(scores.index) == ["PVAE-3", "NBVAE-3", "ZINBVAE-3"]
    assert np.all(np.isfinite(scores))
    assert all(len(m.trace) == EPOCHS for m in (m0, m1, m2))
    l, f, _ = scmodes.lra.nmf(x, rank=4)  # noqa: E741
    assert np.isfinite(st.poisson(mu=l.dot(f.T)).logpmf(x_val).mean())


def test_the_notes_imputation_calls_run_unchanged():
    np.random.seed(0)
    x = np.random.poisson(3.0, size=(40, 15))
    xt = torch.tensor(x, dtype=torch.float)
    w = np.random.uniform(size=x.shape) < 0.9
    wt = torch.tensor(w.astype(np.float32), dtype=torch.float)
    l, f, _ = scmodes.lra.nmf(x, w=w, rank=2)  # noqa: E741
    assert np.isfinite(np.where(w, st.poisson(mu=l @ f.T).logpmf(x), 0).sum())
    l, f, _ = scmodes.lra.nbmf(x, w=w, rank=2, inv_disp=0.1, fix_inv_disp=False)  # noqa: E741
    m0 = scmodes.lra.vae.PVAE(input_dim=15, latent_dim=3).fit(
        xt, w=wt, lr=1e-2, n_samples=10, max_epochs=EPOCHS, verbose=False
    )
    for imputed in (m0.predict(wt * xt), m0.predict(wt * xt, n_samples=100)):
        assert np.isfinite(np.where(w, st.poisson(mu=imputed).logpmf(x), 0).sum())
