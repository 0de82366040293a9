"""Training checkpoints: everything :func:`pyrovae.fit.run_svi` needs to continue a fit exactly.

A checkpoint is one file, ``<checkpoint_dir>/checkpoint.pt``, written by rank 0 with
:func:`torch.save` after an epoch ends. It is replaced atomically: the payload goes to a temporary
file in the same directory, is flushed to disk, and :func:`os.replace` puts it in place, so a job
killed while writing keeps the previous good checkpoint. The payload is a ``dict``:

``format``
    ``"pyrovae-checkpoint"``; ``version``: :data:`VERSION`.
``epoch``
    the number of finished epochs (the resumed fit starts with epoch ``epoch``).
``meta``
    what must match for the resumed fit to be the same fit: cells, genes, batch size, number of
    processes, objective, particles, optimizer and the parameter names and shapes.
``params``
    model and guide parameters (the ``state_dict`` of the module holding ``model`` and ``guide``).
``optimizer``
    the optimizer's ``state_dict``.
``generator``
    the state of the generator that shuffles cells (shared by all ranks).
``rng``
    per rank (a list in rank order): the global torch RNG state (Pyro's particles) and the CUDA
    RNG state when a CUDA device is used (the loop draws from no other RNG).
``history``
    the :class:`~pyrovae.fit.FitHistory` fields so far.
``early_stopping``
    ``best_val``, ``since_best`` and ``best`` (the best epoch's parameters, or ``None``).

Resuming restores all of it; a fit killed at any point (even mid-epoch) and resumed from its last
checkpoint ends, on the same hardware and thread settings, with exactly the parameters of an
uninterrupted fit with the same seed: the epochs after the checkpoint replay the same cell order,
the same particles and the same optimizer steps.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

__all__ = ["FILENAME", "VERSION", "path_in", "save", "load", "check_meta"]

FILENAME = "checkpoint.pt"
VERSION = 1
_FORMAT = "pyrovae-checkpoint"


def path_in(checkpoint_dir) -> Path:
    """The checkpoint file of a checkpoint directory."""
    return Path(checkpoint_dir) / FILENAME


def save(payload: dict, checkpoint_dir) -> Path:
    """Write ``payload`` to :func:`path_in` ``(checkpoint_dir)`` atomically (temporary file in the
    same directory + :func:`os.replace`); create the directory if needed."""
    directory = Path(checkpoint_dir)
    directory.mkdir(parents=True, exist_ok=True)
    target = path_in(directory)
    fd, tmp = tempfile.mkstemp(prefix=f".{FILENAME}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": _FORMAT, "version": VERSION, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def load(checkpoint_dir, map_location="cpu") -> dict:
    """Read the checkpoint of ``checkpoint_dir``.

    :raises ValueError: the file is missing, unreadable (truncated, corrupt), not a pyrovae
        checkpoint, or of another format version; the message names the file.
    """
    target = path_in(checkpoint_dir)
    if not target.is_file():
        raise ValueError(
            f"cannot resume: no checkpoint file {target} (start without resume, or point "
            "checkpoint_dir at the directory of an earlier fit)"
        )
    try:
        # our own file: RNG states, numpy arrays and Python objects need full unpickling
        payload = torch.load(target, map_location=map_location, weights_only=False)
    except Exception as err:  # truncated, garbage, an unpicklable class: all unreadable
        raise ValueError(f"checkpoint file {target} is corrupt or unreadable: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{target} is not a pyrovae checkpoint file")
    if payload.get("version") != VERSION:
        raise ValueError(
            f"checkpoint file {target} has format version {payload.get('version')!r}; this "
            f"pyrovae reads version {VERSION}"
        )
    return payload


def check_meta(saved: dict, current: dict, target) -> None:
    """Raise a ValueError naming ``target`` when the saved fit settings differ from the current
    ones (a resumed fit must be the same fit)."""
    diff = [k for k in current if saved.get(k) != current[k]]
    if diff:
        what = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {current[k]!r}" for k in diff)
        raise ValueError(f"checkpoint file {target} belongs to a different fit ({what})")
