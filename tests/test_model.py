"""The Pyro model/guide pair: Pyro tooling works on it and missing entries drop out exactly."""

import numpy as np
import pyro
import pyro.poutine as poutine
import pytest
import torch
from priors_under_test import PRIOR_FACTORIES

from pyrovae import objectives, pyro_context
from pyrovae.guide import VAEGuide
from pyrovae.model import VAEModel

N, P, K = 7, 5, 2


def _pair(cls, dtype=torch.float64):
    with pyro_context():
        model = VAEModel(P, K, PRIOR_FACTORIES[cls](P), hidden=(8, 8)).to(dtype)
        guide = VAEGuide(P, K, hidden=(8, 8)).to(dtype)
    return model, guide


def _data(dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    x = torch.poisson(torch.full((N, P), 3.0, dtype=dtype), generator=g)
    w = torch.rand(N, P, generator=g) < 0.7
    w[:, 0] = True  # no cell entirely missing
    return x, w


@pytest.mark.parametrize("cls", list(PRIOR_FACTORIES), ids=lambda c: c.__name__)
def test_trace_shapes_and_masked_log_prob(cls):
    model, guide = _pair(cls)
    x, w = _data()
    s = torch.linspace(0.5, 2.0, N, dtype=torch.float64)
    with pyro_context():
        guide_tr = poutine.trace(guide).get_trace(x, w, s)
        tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(x, w, s)
        tr.compute_log_prob()
    assert tr.nodes["z"]["value"].shape == (N, K)
    assert tr.nodes["x"]["log_prob"].shape == (N,)
    # the x site's log density is the prior marginal summed over observed entries only
    z = tr.nodes["z"]["value"]
    with torch.no_grad():
        rate = model.rate(z, s)
        per_entry = model.prior.marginal(rate).log_prob(x)
    expected = torch.where(w, per_entry, torch.zeros_like(per_entry)).sum(-1)
    torch.testing.assert_close(tr.nodes["x"]["log_prob"].detach(), expected)
    # rate = s * mu(z)
    torch.testing.assert_close(rate, s.unsqueeze(-1) * model.rate(z))


@pytest.mark.parametrize("objective", ["elbo", "elbo_mc", "iwae"])
@pytest.mark.parametrize("cls", list(PRIOR_FACTORIES), ids=lambda c: c.__name__)
def test_missing_entries_change_neither_loss_nor_gradients(cls, objective):
    model, guide = _pair(cls)
    x, w = _data()
    params = list(model.parameters()) + list(guide.parameters())
    elbo = objectives.make_elbo(objective, n_samples=3)

    def loss_and_grads(x_in):
        for p in params:
            p.grad = None
        pyro.set_rng_seed(11)
        value = objectives.loss_and_grads(elbo, model, guide, params, x_in, w)
        return value, [p.grad.clone() for p in params if p.grad is not None]

    base_loss, base_grads = loss_and_grads(x)
    for filler in (0.0, 1e6, -5.0, float("nan")):
        x_other = torch.where(w, x, torch.full_like(x, filler))
        loss, grads = loss_and_grads(x_other)
        assert loss == base_loss, filler
        assert len(grads) == len(base_grads)
        for a, b in zip(grads, base_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # and observed entries do matter
    changed = x.clone()
    changed[w] += 1
    assert loss_and_grads(changed)[0] != base_loss


def test_encoder_never_sees_missing_entries():
    _, guide = _pair(list(PRIOR_FACTORIES)[0])
    x, w = _data()
    with torch.no_grad():
        a = guide.encoder(x, w)
        b = guide.encoder(torch.where(w, x, torch.full_like(x, 1e4)), w)
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=0, atol=0)


def test_predictive_and_render_model():
    model, guide = _pair(list(PRIOR_FACTORIES)[1], dtype=torch.float32)
    x, w = _data(torch.float32)
    with pyro_context():
        # prior predictive: simulate new cells
        out = pyro.infer.Predictive(model, num_samples=4)(None, n_cells=N)
        assert out["x"].shape == (4, N, P) and out["z"].shape == (4, N, K)
        # posterior predictive with the guide conditioned on data
        post = pyro.infer.Predictive(model, guide=guide, num_samples=3)(x, w)
        assert post["z"].shape == (3, N, K)
        graph = pyro.render_model(model, model_args=(x, w), render_params=True)
    assert "z" in graph.source and "cells" in graph.source


def test_iwae_bound_is_at_least_the_elbo_on_a_fixed_model():
    model, guide = _pair(list(PRIOR_FACTORIES)[1])
    x, w = _data()
    losses = {}
    for objective in ("elbo_mc", "iwae"):
        vals = []
        for seed in range(20):
            pyro.set_rng_seed(seed)
            vals.append(objectives.loss(objectives.make_elbo(objective, 50), model, guide, x, w))
        losses[objective] = np.mean(vals)
    assert losses["iwae"] < losses["elbo_mc"]  # losses are negative bounds


def test_network_parameters_are_pyro_params_outside_pyrovaes_own_loop():
    """Outside pyrovae's loop every network parameter is a ``param`` site of the traces (what
    ``render_model(render_params=True)`` and other Pyro tools see); inside it
    (``direct_parameters``) the sites are skipped and the loss and its gradients are the same."""
    from pyrovae._context import direct_parameters

    model, guide = _pair(list(PRIOR_FACTORIES)[1])
    x, w = _data()
    with pyro_context():
        guide_tr = poutine.trace(guide).get_trace(x, w)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(x, w)
        with direct_parameters():
            fast_tr = poutine.trace(guide).get_trace(x, w)
    sites = [s["value"] for s in guide_tr.nodes.values() if s["type"] == "param"]
    assert {id(v) for v in sites} == {id(p) for p in guide.encoder.parameters()}
    sites = [s["value"] for s in model_tr.nodes.values() if s["type"] == "param"]
    assert {id(p) for p in model.decoder.parameters()} <= {id(v) for v in sites}
    assert not [n for n, s in fast_tr.nodes.items() if s["type"] == "param"]

    from pyrovae.fit import differentiable_loss

    elbo = objectives.make_elbo("elbo", n_samples=2)
    all_params = list(model.parameters()) + list(guide.parameters())
    results = []
    for direct in (False, True):
        pyro.set_rng_seed(0)
        with pyro_context(), direct_parameters() if direct else pyro_context():
            loss = differentiable_loss(elbo, model, guide, x, w)
        results.append((loss.detach(), torch.autograd.grad(loss, all_params)))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_input_major_layer_is_the_same_linear_map_with_the_same_gradients():
    """The decoder's first layer keeps its (out, in) weight and state_dict; only the memory
    layout differs, so outputs and gradients equal those of an ordinary Linear (float64)."""
    from torch import nn

    from pyrovae.nets import Decoder, input_major

    torch.manual_seed(0)
    plain = nn.Linear(3, 16).double()
    fast = input_major(nn.Linear(3, 16).double())
    fast.load_state_dict(plain.state_dict())
    assert fast.weight.shape == (16, 3) and fast.weight.stride() == (1, 16)
    z = torch.randn(4, 5, 3, dtype=torch.float64, requires_grad=True)
    grads = []
    for layer in (plain, fast):
        out = layer(z)
        (g_z,) = torch.autograd.grad(out.square().sum(), z, retain_graph=True)
        out.square().sum().backward()
        grads.append((out.detach(), g_z, layer.weight.grad, layer.bias.grad))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert fast.weight.grad.stride() == fast.weight.stride()
    assert Decoder(3, 10, (8,)).body[0].weight.stride() == (1, 8)
    assert Decoder(3, 10, ()).out.weight.stride() == (1, 10)
