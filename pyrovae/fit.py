r"""The stochastic variational inference loop, on one process or data-parallel on many.

One function, :func:`run_svi`: epochs over (optionally shuffled) minibatches of cells, one
optimizer step per batch on the objective of :mod:`pyrovae.objectives`, a per-epoch loss trace,
an optional KL warm-up, an optional validation loss (held-out cells or entries) with early
stopping, optional checkpoints to resume from, and a guard that stops with
:class:`FitDivergedError` — after restoring the last parameters that gave a finite loss — when the
loss or a gradient turns NaN or infinite.

**Data parallelism.** When a :mod:`torch.distributed` process group is initialized (``torchrun``;
see :mod:`pyrovae.distributed`), :math:`W` processes train one model: the module holding
``model`` and ``guide`` is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`, whose
backward hooks average the gradients over the ranks. A step's *global* batch :math:`G` of
``batch_size`` cells (the same cells, in the same order, as a one-process fit draws) is split
into :math:`W` contiguous parts :math:`G_r`, one per rank, and rank :math:`r` backpropagates its
batch loss times :math:`N W / |G|` (:math:`N` the number of training cells; this is
:math:`N / |G_r|` when the parts are equal). DDP's average is then

.. math::

    \frac1W \sum_r \frac{N W}{|G|} \nabla L(G_r) = \frac{N}{|G|} \nabla L(G),

the one-process gradient of the union batch. The scale multiplies the finished batch loss, so
the IWAE log-mean-exp stays per cell. Every decision (divergence, early stopping, best epoch) is
taken on values all-reduced over the ranks, validation losses are summed over ranks, and only rank
0 shows progress and writes checkpoints. Without a process group the same code runs with
:math:`W = 1`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.distributions.util import is_identically_zero
from pyro.infer import RenyiELBO
from pyro.infer.util import get_dependent_plate_dims, torch_sum
from torch import nn
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import distributed as dist
from . import objectives
from ._context import direct_parameters, pyro_context

__all__ = [
    "FitDivergedError",
    "FitHistory",
    "run_svi",
    "step_batches",
    "differentiable_loss",
    "OPTIMIZERS",
]

OPTIMIZERS = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}


class FitDivergedError(FloatingPointError):
    """The training loss (or a gradient, or a parameter after a step) became NaN or infinite.

    The model keeps the parameters at which the last finite loss was computed (those of the last
    ``trace_`` entry in full-batch fits).

    :ivar epoch: the (0-based) epoch in which it happened.
    :ivar batch: the (0-based) step within that epoch, or ``None``.
    :ivar cells: the first few cell indices (rows of the training data) of this rank's batch.
    :ivar parameter: name of the first parameter (in ``model.``/``guide.`` order) whose gradient
        or value was not finite, or ``None`` when only the loss was.
    :ivar loss: the batch's loss (scaled to all training cells).
    """

    def __init__(
        self,
        message: str,
        epoch: int,
        batch: int | None = None,
        cells: list[int] | None = None,
        parameter: str | None = None,
        loss: float | None = None,
    ):
        super().__init__(message)
        self.epoch = epoch
        self.batch = batch
        self.cells = cells
        self.parameter = parameter
        self.loss = loss


@dataclass
class FitHistory:
    """What happened during a fit.

    :ivar loss: per-epoch training loss (negative bound summed over all training cells).
    :ivar val_loss: validation loss of each validated epoch (whatever ``validation_loss``
        computes: the negative bound of held-out cells, or the negative predictive log pmf of
        held-out entries; summed over ranks).
    :ivar val_epochs: the (0-based) epochs after which ``val_loss`` was computed (every epoch
        with ``validate_every=1``).
    :ivar best_epoch: epoch whose parameters were kept (last epoch without early stopping).
    :ivar stopped_early: whether patience ran out before ``max_epochs``.
    """

    loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_epochs: list[int] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False

    def state_dict(self) -> dict:
        """The history as plain lists and numbers (for a checkpoint)."""
        return dict(
            loss=list(self.loss),
            val_loss=list(self.val_loss),
            val_epochs=list(self.val_epochs),
            best_epoch=self.best_epoch,
            stopped_early=self.stopped_early,
        )

    def load_state_dict(self, state: dict) -> None:
        """Replace the history in place by ``state`` (from :meth:`state_dict`)."""
        self.loss[:] = state["loss"]
        self.val_loss[:] = state["val_loss"]
        self.val_epochs[:] = state["val_epochs"]
        self.best_epoch, self.stopped_early = state["best_epoch"], state["stopped_early"]


@contextlib.contextmanager
def _unvalidated():
    """Pyro/torch distribution validation off inside the loop: the data were validated once by
    :mod:`pyrovae.data` (so non-integer counts the caller allowed pass), and a parameter that
    leaves its support (e.g. an inverse dispersion underflowing to 0) gives a non-finite loss
    that the divergence guard reports with its epoch, not a ValueError from inside Pyro. The
    networks' layers are read without Pyro's ``param`` statements
    (:func:`~pyrovae._context.direct_parameters`): the optimizer holds the parameters itself."""
    with pyro.validation_enabled(False), direct_parameters():
        yield


def _make_optimizer(name: str, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """The torch optimizer ``name`` over ``params``; Adam in its fused form (one call per step
    instead of a dozen operations per parameter: ~1 ms of a step, issue 10) where torch has one
    for the parameters' device."""
    cls = OPTIMIZERS[name]
    if issubclass(cls, torch.optim.Adam) and {p.device.type for p in params} <= {"cpu", "cuda"}:
        return cls(params, lr=lr, fused=True)
    return cls(params, lr=lr)


# ------------------------------------------------------------------------------------------------
# the differentiable objective
# ------------------------------------------------------------------------------------------------


def _renyi_differentiable_loss(elbo: RenyiELBO, model, guide, *args, **kwargs) -> torch.Tensor:
    """Pyro's :meth:`RenyiELBO.loss_and_grads` without the ``backward()``: a scalar whose value is
    the negative bound and whose gradient is Pyro's surrogate gradient (same expressions, so the
    same gradient). The log-mean-exp over particles is per cell (the cells plate is
    independent) and no scale enters it."""
    is_vectorized = elbo.vectorize_particles and elbo.num_particles > 1
    elbo_particles, surrogate_particles = [], []
    for model_trace, guide_trace in elbo._get_traces(model, guide, args, kwargs):
        sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
        e, s = 0.0, 0.0
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                lp = torch_sum(site["log_prob"], sum_dims)
                e, s = e + lp.detach(), s + lp
        for site in guide_trace.nodes.values():
            if site["type"] == "sample":
                _, score_function_term, entropy_term = site["score_parts"]
                lp = torch_sum(site["log_prob"], sum_dims)
                e = e - lp.detach()
                if not is_identically_zero(entropy_term):
                    s = s - lp
                if not is_identically_zero(score_function_term):
                    raise NotImplementedError("non-reparameterized sites in the IWAE guide")
        elbo_particles.append(e)
        surrogate_particles.append(s)
    if is_vectorized:
        e, s = elbo_particles[0], surrogate_particles[0]
    else:
        e, s = torch.stack(elbo_particles), torch.stack(surrogate_particles)
    log_w = (1.0 - elbo.alpha) * e
    log_mean_w = torch.logsumexp(log_w, dim=0, keepdim=True) - math.log(elbo.num_particles)
    value = -log_mean_w.sum() / (1.0 - elbo.alpha)
    surrogate = -((log_w - log_mean_w).exp() * s).sum() / elbo.num_particles
    return value + (surrogate - surrogate.detach())


def differentiable_loss(elbo, model, guide, *args, **kwargs) -> torch.Tensor:
    """The negative bound of one batch as a differentiable scalar (Pyro's surrogate gradient):
    ``elbo.differentiable_loss`` for Trace_ELBO/TraceMeanField_ELBO, the same computation as
    ``RenyiELBO.loss_and_grads`` for the IWAE bound. Run inside :func:`pyro_context`."""
    if isinstance(elbo, RenyiELBO):
        return _renyi_differentiable_loss(elbo, model, guide, *args, **kwargs)
    return elbo.differentiable_loss(model, guide, *args, **kwargs)


class _SVIModule(nn.Module):
    """``model`` and ``guide`` in one module, so that DDP sees all parameters and its forward is
    the objective: ``forward`` returns the (unscaled) negative bound of a batch."""

    def __init__(self, model, guide):
        super().__init__()
        self.model = model
        self.guide = guide

    def forward(self, elbo, beta, x, w, s):
        with pyro_context(), warnings.catch_warnings():
            # a NaN loss is reported by run_svi with where it happened; Pyro's warning is noise
            warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
            if beta == 1.0:
                return differentiable_loss(elbo, self.model, self.guide, x, w, s)
            with objectives.kl_scale(beta):
                return differentiable_loss(elbo, self.model, self.guide, x, w, s)


def _loss_and_grads(net, elbo, beta, x, w, s, scale: float) -> torch.Tensor:
    """Forward through ``net`` (DDP or not), backward of ``scale`` × the batch loss; returns the
    unscaled batch loss (detached, no host sync)."""
    raw = net(elbo, beta, x, w, s)
    (raw * scale).backward()
    return raw.detach()


def _build_all_parameters(model, guide, source, dtype, device):
    """Run the guide and the model once on two cells so every lazily created parameter (Pyro's
    ``PyroParam`` s, lazy modules) exists before the optimizer and DDP see the parameters. The
    global RNG is forked, so this consumes no random numbers."""
    idx = np.arange(min(2, source.n_cells))
    x, w, s = source.batch(idx, dtype, device)
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad(), pyro_context(), _unvalidated():
        tr = poutine.trace(guide).get_trace(x, w, s)
        poutine.trace(poutine.replay(model, trace=tr)).get_trace(x, w, s)


# ------------------------------------------------------------------------------------------------
# batches and shards
# ------------------------------------------------------------------------------------------------


def step_batches(
    order: np.ndarray, batch_size: int, rank: int = 0, world_size: int = 1
) -> list[tuple[np.ndarray, int]]:
    """This rank's cells for every step of an epoch, with the global batch size.

    The epoch's ``order`` (a permutation of the cells) is cut into global batches of
    ``batch_size`` cells (the last one smaller); with :math:`W > 1` a last batch of fewer than
    :math:`W` cells is merged into the one before, so no rank is ever empty. Each global batch
    is split into :math:`W` contiguous parts (sizes differ by at most one), part :math:`r` to rank
    :math:`r`. So every rank takes the same number of steps, the parts are disjoint, and every
    cell is seen exactly once per epoch (nothing is padded or dropped).

    :returns: a list of ``(sorted cell indices of this rank, size of the global batch)``.
    """
    n = len(order)
    starts = list(range(0, n, batch_size))
    if world_size > 1 and len(starts) > 1 and n - starts[-1] < world_size:
        starts.pop()
    bounds = [*starts[1:], n]
    out = []
    for a, b in zip(starts, bounds, strict=True):
        part = dist.shard(b - a, rank, world_size)
        out.append((np.sort(order[a + part.start : a + part.stop]), b - a))
    return out


def _epoch_order(source, n, generator):
    if hasattr(source, "epoch_order"):
        return np.asarray(source.epoch_order(generator))
    return torch.randperm(n, generator=generator).numpy()


# ------------------------------------------------------------------------------------------------
# finiteness guard
# ------------------------------------------------------------------------------------------------


def _norms(tensors) -> torch.Tensor:
    """Per-tensor 2-norms as one vector (one fused kernel per dtype/device group)."""
    return torch.stack(torch._foreach_norm(tensors))


def _first_non_finite(named):
    bad = [name for name, t in named if t is not None and not torch.isfinite(t).all()]
    return bad


def _rng_state(device) -> dict:
    # the loop draws only from torch's RNG (Pyro's particles); numpy's and Python's are unused
    state = {"torch": torch.get_rng_state()}
    if torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(torch.device(device))
    return state


def _set_rng_state(state: dict, device) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], torch.device(device))


# ------------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------------


def _check_arguments(
    *,
    optimizer,
    lr,
    max_epochs,
    patience,
    validation_loss,
    validate_every,
    kl_warmup,
    clip_norm,
    checkpoint_every,
    checkpoint_dir,
    resume,
) -> None:
    """The checks of :func:`run_svi`'s settings that need no data (ValueError naming each)."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {sorted(OPTIMIZERS)}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if not (isinstance(max_epochs, int) and max_epochs >= 1):
        raise ValueError(f"max_epochs must be a positive int, got {max_epochs!r}")
    if patience is not None and validation_loss is None:
        raise ValueError("patience needs a validation set")
    if not (isinstance(validate_every, int) and validate_every >= 1):
        raise ValueError(f"validate_every must be a positive int, got {validate_every!r}")
    if not (isinstance(kl_warmup, int) and 0 <= kl_warmup):
        raise ValueError(f"kl_warmup must be a non-negative int, got {kl_warmup!r}")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be None or positive, got {clip_norm!r}")
    if checkpoint_every is not None and not (
        isinstance(checkpoint_every, int) and checkpoint_every >= 1
    ):
        raise ValueError(f"checkpoint_every must be a positive int, got {checkpoint_every!r}")
    if (resume or checkpoint_every is not None) and checkpoint_dir is None:
        raise ValueError("resume and checkpoint_every need a checkpoint_dir")


def _global_batch_size(batch_size: int | None, n: int, world: int) -> int:
    """``batch_size`` checked against ``n`` cells and ``world`` ranks; ``n`` for a full batch."""
    if n < world:
        raise ValueError(f"{n} training cells cannot be shared by {world} processes")
    if batch_size is None or batch_size >= n:
        return n
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be None or a positive int, got {batch_size!r}")
    if batch_size < world:
        raise ValueError(f"batch_size {batch_size} is smaller than the {world} processes")
    return batch_size


def _shuffler(generator: torch.Generator | None, seed: int | None) -> torch.Generator:
    """The generator that orders the cells, in the same state on every rank."""
    if generator is None:
        if seed is None:  # unseeded: one draw from the global RNG
            seed = int(torch.randint(2**62, ()))
        generator = torch.Generator().manual_seed(int(seed))
    if dist.world_size() > 1:  # every rank shuffles identically
        generator.set_state(dist.broadcast_object(generator.get_state()))
    return generator


@dataclass
class _EarlyStopping:
    """The best validation loss so far, the parameters that gave it, and the epochs since."""

    patience: int | None
    best: list[torch.Tensor] | None = None
    best_val: float = math.inf
    since_best: int = 0

    def update(self, val: float, epoch: int, since_last: int, params, history: FitHistory) -> bool:
        """Record ``val``, the validation loss after ``epoch`` (``since_last`` epochs after the
        previous one); return whether patience ran out. Decided on values all-reduced over ranks."""
        if dist.any_rank(val < self.best_val):
            self.best, self.best_val, self.since_best = _snapshot(params), val, 0
            history.best_epoch = epoch
        else:
            self.since_best += since_last
        stop = dist.any_rank(self.patience is not None and self.since_best >= self.patience)
        history.stopped_early = stop
        return stop

    def state_dict(self) -> dict:
        return dict(best_val=self.best_val, since_best=self.since_best, best=self.best)

    def load_state_dict(self, state: dict, device) -> None:
        self.best_val, self.since_best = state["best_val"], state["since_best"]
        self.best = None if state["best"] is None else [t.to(device) for t in state["best"]]


class _DivergenceGuard:
    """The finiteness checks of the loop (see :func:`run_svi`, *Divergence guard*).

    It keeps the parameters at which the last finite loss was computed in preallocated buffers
    and the position of the last optimizer step, and raises :class:`FitDivergedError` (after
    restoring those parameters) with where it happened.
    """

    def __init__(self, names, params, history: FitHistory, n: int, lr: float, clip_norm, start):
        self.names, self.params, self.history = names, params, history
        self.n, self.lr, self.clip_norm = n, lr, clip_norm
        self.last_finite = [p.detach().clone() for p in params]  # reused on every step
        self.last_step = (start, 0, None)  # (epoch, batch, cells) of the last optimizer step

    def check_step(self, epoch, b, n_batches, idx, raw, scale) -> torch.Tensor:
        """Check this step's loss and gradients and the parameters the previous step left (one
        fused norm, one host sync, one all-reduce); keep the parameters; return the gradients'
        per-tensor norms."""
        params = self.params
        grads = [p.grad for p in params if p.grad is not None]
        both = _norms([p.detach() for p in params] + grads)
        norms = both[len(params) :] if grads else raw.new_zeros(1)
        params_bad, step_bad = _any_rank_each(
            ~torch.isfinite(both[: len(params)]).all(),
            ~(torch.isfinite(raw) & torch.isfinite(norms).all()),
        )
        if params_bad:  # left by the last step, possibly the previous epoch's: drop its loss
            del self.history.loss[self.last_step[0] :]
            self._raise_bad_parameter()
        if step_bad:
            _restore(params, self.last_finite)
            self._raise_diverged(epoch, b, n_batches, idx, raw, scale)
        torch._foreach_copy_(self.last_finite, [p.detach() for p in params])
        return norms

    def stepped(self, epoch: int, b: int, idx) -> None:
        """Note the optimizer step just taken (batch ``b`` of ``epoch``, cells ``idx``)."""
        self.last_step = (epoch, b, idx)

    def check_parameters(self) -> None:
        """Check the parameters the last step left, before they are scored, kept or saved."""
        finite = bool(torch.isfinite(_norms([p.detach() for p in self.params])).all())
        if dist.any_rank(not finite):
            self._raise_bad_parameter()

    def _raise_bad_parameter(self):
        epoch, b, idx = self.last_step
        bad = _first_non_finite(zip(self.names, self.params, strict=True))
        _restore(self.params, self.last_finite)
        cells = _cells(idx, self.n)
        raise FitDivergedError(
            f"training diverged: a parameter ({', '.join(bad[:3]) or '?'}) was not finite after "
            f"the step in epoch {epoch} (batch {b}, cells {cells}); the parameters before that "
            f"step were restored. Try a smaller lr (now {self.lr}), gradient clipping "
            "(clip_norm=1e2) or dtype=torch.float64.",
            epoch,
            batch=b,
            cells=cells,
            parameter=bad[0] if bad else None,
        )

    def _raise_diverged(self, epoch, b, n_batches, idx, raw, scale):
        value = float(raw) * scale
        named_grads = ((k, p.grad) for k, p in zip(self.names, self.params, strict=True))
        bad_grads = _first_non_finite(named_grads)
        cells = _cells(idx, self.n)
        n_cells = self.n if idx is None else len(idx)
        more = ", ..." if n_cells > len(cells) else ""
        where = f"in epoch {epoch} (batch {b} of {n_batches}, {n_cells} cells: {cells}{more}"
        if dist.world_size() > 1:
            where += f", on rank {dist.rank()}"
        where += ")"
        if not math.isfinite(value):
            what = f"loss {value}"
            if bad_grads:
                what += f" (gradient of {bad_grads[0]} not finite too)"
        elif bad_grads:
            extra = f" and {len(bad_grads) - 1} more" if len(bad_grads) > 1 else ""
            what = f"a gradient (of {bad_grads[0]}{extra}; loss {value:.6g})"
        else:
            what = f"the loss or a gradient on another rank (here: loss {value:.6g})"
        clip = (
            f"a smaller clip_norm (now {self.clip_norm})"
            if self.clip_norm is not None
            else "gradient clipping (clip_norm=1e2)"
        )
        raise FitDivergedError(
            f"training diverged: {what} was not finite {where}; the parameters at which the last "
            f"finite loss was computed were restored. Try a smaller lr (now {self.lr}), {clip}, "
            "dtype=torch.float64, a larger batch or more particles.",
            epoch,
            batch=b,
            cells=cells,
            parameter=bad_grads[0] if bad_grads else None,
            loss=value,
        )


def _save_checkpoint(
    checkpoint_dir, epoch_done, meta, module, opt, generator, history, stopping, device
):
    """Write the state after ``epoch_done`` epochs (rank 0; every rank sends its RNG state)."""
    rngs = dist.all_gather_object(_rng_state(device))
    if not dist.is_main():
        return
    ckpt.save(
        dict(
            epoch=epoch_done,
            meta=meta,
            params=module.state_dict(),
            optimizer=opt.state_dict(),
            generator=generator.get_state(),
            rng=rngs,
            history=history.state_dict(),
            early_stopping=stopping.state_dict(),
        ),
        checkpoint_dir,
    )


def _resume(checkpoint_dir, meta, module, opt, generator, history, stopping, device) -> int:
    """Load the checkpoint in ``checkpoint_dir`` into the fit's state; return the next epoch."""
    # on the CPU: RNG states must stay there; load_state_dict moves the rest to the device
    state = ckpt.load(checkpoint_dir, map_location="cpu")
    ckpt.check_meta(state["meta"], meta, ckpt.path_in(checkpoint_dir))
    module.load_state_dict(state["params"])
    opt.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    _set_rng_state(state["rng"][dist.rank()], device)
    history.load_state_dict(state["history"])
    stopping.load_state_dict(state["early_stopping"], device)
    return state["epoch"]


def run_svi(
    model,
    guide,
    source,
    *,
    objective: str = "elbo",
    n_samples: int = 1,
    lr: float = 1e-2,
    max_epochs: int = 100,
    batch_size: int | None = None,
    optimizer: str = "adam",
    validation_loss: Callable[[], float] | None = None,
    patience: int | None = None,
    validate_every: int = 1,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    dtype=torch.float32,
    device="cpu",
    verbose: bool = False,
    kl_warmup: int = 0,
    clip_norm: float | None = None,
    history: FitHistory | None = None,
    callback: Callable[[int, float], None] | None = None,
    checkpoint_dir=None,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> FitHistory:
    r"""Fit ``model``/``guide`` to the cells of ``source`` by SVI; return the :class:`FitHistory`.

    :param source: the training cells: any object with ``n_cells``, ``n_genes`` and
        ``batch(idx, dtype, device) -> (x, w, size_factor)`` (``idx`` a sorted array of cell
        indices, or ``None`` for all), e.g. :class:`pyrovae.data.CountData`; optionally
        ``epoch_order(generator)``, a permutation of the cells for one epoch (default
        ``torch.randperm(n_cells, generator=generator)``).
    :param objective: ``"elbo"``, ``"elbo_mc"`` or ``"iwae"`` (see :mod:`pyrovae.objectives`).
    :param n_samples: particles per cell.
    :param batch_size: cells per optimizer step, over all ranks together (each of :math:`W`
        ranks computes about ``batch_size / W`` of them, see :func:`step_batches`); ``None`` =
        all cells (full batch, no shuffling).
    :param validation_loss: computes this rank's loss on held-out data (cells or entries the steps
        never see) after every epoch; summed over ranks and recorded in ``history.val_loss``. With
        several ranks it must score only this rank's share (e.g. :func:`pyrovae.distributed.shard`
        of the held-out cells).
    :param patience: stop after this many epochs without a better validation loss and restore the
        best parameters (needs ``validation_loss``).
    :param validate_every: compute the validation loss after every ``validate_every``-th epoch
        (and the last one); patience still counts epochs, and only validated epochs are
        candidates for the best parameters.
    :param generator: shuffles the cells (``source.epoch_order`` gets it); all ranks use rank 0's
        state. ``seed``: makes one when ``generator`` is ``None`` (neither: seeded by one draw
        from the global torch RNG).
    :param kl_warmup: epochs of KL warm-up: in epoch ``e < kl_warmup`` the objective is the ELBO
        with the KL term scaled by ``(e + 1) / kl_warmup`` (:class:`objectives.kl_scale`; also
        for ``objective="iwae"``, which starts after the warm-up, so no scale ever enters the
        IWAE log-mean-exp). Warm-up epochs record that annealed loss and are not candidates
        for early stopping.
    :param clip_norm: clip the gradient so that its 2-norm *per training cell* (the norm of the
        gradient of the full-data loss estimate divided by :math:`N`, so the threshold does not
        depend on the data size) is at most ``clip_norm``; ``None`` (default): no clipping, the
        plain SVI step.
    :param history: a :class:`FitHistory` to append to (so a caller keeps it on an exception).
    :param callback: called as ``callback(epoch, loss)`` after each epoch (on every rank).
    :param checkpoint_dir: directory of the checkpoint file (:mod:`pyrovae.checkpoint`); written
        by rank 0 every ``checkpoint_every`` epochs (default 1) and after the last epoch.
    :param resume: continue from the checkpoint in ``checkpoint_dir`` (parameters, optimizer,
        RNG states, epoch, history, early-stopping state); the result equals the uninterrupted
        fit's.
    :raises FitDivergedError: the loss, a gradient or a parameter became NaN/inf; the parameters
        at which the last finite loss was computed are restored.
    :raises ValueError: bad settings, or (``resume``) a missing, corrupt or foreign checkpoint.

    **Divergence guard.** Before each optimizer step one check covers this step's loss, its
    gradients (per-tensor norms by one fused ``_foreach_norm``) and the parameters the previous
    step left (checked again at the end of an epoch whose parameters are scored, kept, saved or
    returned): one host sync and, with several ranks, one all-reduce per step. The parameters
    at which the last finite loss was computed are kept in preallocated buffers (one fused
    ``_foreach_copy_`` per step, no allocation, no per-parameter clone) and restored on
    divergence; the error names the loss, the first parameter whose gradient (or value) is not
    finite, the epoch, the batch and its first cells.
    """
    _check_arguments(
        optimizer=optimizer,
        lr=lr,
        max_epochs=max_epochs,
        patience=patience,
        validation_loss=validation_loss,
        validate_every=validate_every,
        kl_warmup=kl_warmup,
        clip_norm=clip_norm,
        checkpoint_every=checkpoint_every,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
    )
    n = source.n_cells
    rank, world = dist.rank(), dist.world_size()
    batch_size = _global_batch_size(batch_size, n, world)
    generator = _shuffler(generator, seed)
    checkpoint_every = checkpoint_every or 1

    elbo = objectives.make_elbo(objective, n_samples)
    warm_elbo = objectives.make_elbo("elbo", n_samples) if kl_warmup else None
    _build_all_parameters(model, guide, source, dtype, device)
    module = _SVIModule(model, guide)
    net = module
    if dist.is_distributed():  # broadcasts rank 0's parameters; its hooks average gradients
        dev = torch.device(device)
        net = nn.parallel.DistributedDataParallel(
            module,
            device_ids=[_cuda_index(dev)] if dev.type == "cuda" else None,
        )
    names = [name for name, _ in module.named_parameters()]
    params = list(module.parameters())
    opt = _make_optimizer(optimizer, params, lr)
    history = FitHistory() if history is None else history
    stopping = _EarlyStopping(patience)
    meta = dict(
        n_cells=n,
        n_genes=source.n_genes,
        batch_size=batch_size,
        world_size=world,
        objective=objective,
        n_samples=n_samples,
        optimizer=optimizer,
        kl_warmup=kl_warmup,
        lr=lr,
        clip_norm=clip_norm,
        parameters=[(k, tuple(p.shape)) for k, p in zip(names, params, strict=True)],
    )
    start = 0
    if resume:
        start = _resume(checkpoint_dir, meta, module, opt, generator, history, stopping, device)

    full = None
    if batch_size == n:  # full batch: every rank keeps its shard, no shuffling
        part = dist.shard(n, rank, world)
        idx = None if world == 1 else np.arange(part.start, part.stop)
        full = [(idx, n)]
        full_tensors = source.batch(idx, dtype, device)
    guard = _DivergenceGuard(names, params, history, n, lr, clip_norm, start)
    bar = tqdm(
        range(start, max_epochs),
        disable=not (verbose and dist.is_main()),
        desc="fit",
        unit="epoch",
        initial=start,
        total=max_epochs,
    )
    for epoch in bar if not history.stopped_early else ():
        batches = full or step_batches(_epoch_order(source, n, generator), batch_size, rank, world)
        warming = epoch < kl_warmup
        beta = (epoch + 1) / kl_warmup if warming else 1.0
        total = torch.zeros((), dtype=torch.float64, device=device)
        for b, (idx, m) in enumerate(batches):
            x, w, s = full_tensors if full else source.batch(idx, dtype, device)
            scale = n * world / m
            opt.zero_grad(set_to_none=True)
            with _unvalidated():
                raw = _loss_and_grads(net, warm_elbo if warming else elbo, beta, x, w, s, scale)
            norms = guard.check_step(epoch, b, len(batches), idx, raw, scale)
            if clip_norm is not None:
                total_norm = torch.linalg.vector_norm(norms)
                torch.nn.utils.clip_grads_with_norm_(params, clip_norm * n, total_norm)
            opt.step()
            guard.stepped(epoch, b, idx)
            total += raw
        validating = validation_loss is not None and (
            (epoch + 1) % validate_every == 0 or epoch + 1 == max_epochs
        )
        checkpointing = checkpoint_dir is not None and (
            (epoch + 1) % checkpoint_every == 0 or epoch + 1 == max_epochs
        )
        # the last step's parameters, before they are scored, kept, saved or returned (in any
        # other epoch the next step's check covers them, with the same report)
        if validating or checkpointing or callback is not None or epoch + 1 == max_epochs:
            guard.check_parameters()
        loss = dist.all_reduce_sum(float(total))
        history.loss.append(loss)
        if callback is not None:
            callback(epoch, loss)
        stop = False
        if validating:
            with _unvalidated():
                v = dist.all_reduce_sum(validation_loss())
            since_last = epoch - (history.val_epochs[-1] if history.val_epochs else epoch - 1)
            history.val_loss.append(v)
            history.val_epochs.append(epoch)
            if not warming:  # warm-up epochs are not candidates
                stop = stopping.update(v, epoch, since_last, params, history)
        if verbose and dist.is_main():
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        if checkpointing or (checkpoint_dir is not None and stop):
            state = (meta, module, opt, generator, history, stopping, device)
            _save_checkpoint(checkpoint_dir, epoch + 1, *state)
        if stop:
            break
    bar.close()
    if patience is not None and stopping.best is not None:
        _restore(params, stopping.best)
    else:
        history.best_epoch = len(history.loss) - 1
    return history


def _cuda_index(dev: torch.device) -> int:
    return torch.cuda.current_device() if dev.index is None else dev.index


def _snapshot(params):
    return [p.detach().clone() for p in params]


def _restore(params, values):
    with torch.no_grad():
        torch._foreach_copy_([p.data for p in params], list(values))


def _cells(idx, n, k: int = 8):
    cells = np.arange(n) if idx is None else idx
    return [int(i) for i in cells[:k]]


def _any_rank_each(*flags: torch.Tensor) -> list[bool]:
    """Each boolean flag OR-ed over ranks, with one host transfer (and one all-reduce)."""
    t = torch.stack(flags).to(torch.int32)
    if dist.world_size() > 1:
        t = t.to(dist._comm_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]
