"""Saving and loading fitted estimators.

A model file is a ``torch.save`` archive (a pickle: load only files you trust) holding the
package version, the estimator's class and constructor arguments, the fitted prior (pickled, so
a user-written prior class must be importable where the file is loaded), the model and guide
``state_dict`` s and the fitted attributes (trace, history, settings, size-factor policy,
validation split). Files are written atomically: a temporary file in the destination folder is
renamed over the target, so an interrupted save never leaves a half-written model.
"""

from __future__ import annotations

import importlib
import os
import pickle
import tempfile
import zipfile
from dataclasses import asdict
from pathlib import Path

import torch

from . import __version__
from .build import build, resolve_device
from .size_factors import SizeFactorPolicy
from .validation import ValidationSplit

__all__ = ["save", "load", "FORMAT"]

#: Version of the file layout (files of pyrovae 0.1, format 1, are refused by the version check:
#: their encoder has another input layer).
FORMAT = 2


def _check_picklable(prior) -> None:
    try:
        pickle.dumps(prior)
    except (pickle.PicklingError, AttributeError, TypeError) as err:
        raise TypeError(
            f"cannot save: the prior {type(prior).__qualname__} cannot be pickled ({err}). "
            "Define prior classes at module level in an importable module and keep no lambdas, "
            "local functions or open handles on them."
        ) from err


def save(estimator, path) -> None:
    """Write a fitted estimator to ``path`` (atomically)."""
    prior = estimator.model_.prior
    _check_picklable(prior)  # fail before touching ``path``
    validation = estimator.validation_
    payload = {
        "format": FORMAT,
        "pyrovae_version": __version__,
        "class": type(estimator).__name__,
        "params": estimator.get_params(deep=False),
        "prior": prior,
        "model_state": estimator.model_.state_dict(),
        "guide_state": estimator.guide_.state_dict(),
        "fitted": {
            "n_features_in_": estimator.n_features_in_,
            "trace_": estimator.trace_,
            "history_": estimator.history_,
            "fit_settings_": estimator.fit_settings_,
            "layer_": estimator.layer_,
            "size_factors_": asdict(estimator.size_factors_),
            "validation_": None if validation is None else asdict(validation),
        },
    }
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (AttributeError, ImportError) as err:
        raise ValueError(
            f"cannot load {path}: it refers to a class that cannot be imported here ({err}); a "
            "prior class defined in a script's __main__ or in a notebook must be importable "
            "(define it in a module) to load the model in another process"
        ) from err
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        OSError,
        RuntimeError,
        zipfile.BadZipFile,
        ValueError,
    ) as err:
        raise ValueError(
            f"cannot load {path}: not a readable pyrovae model file (corrupt or truncated? {err})"
        ) from err


def _fitted_of(payload) -> dict:
    """The fitted attributes of a payload, as the estimator holds them."""
    fitted = dict(payload["fitted"])
    fitted["size_factors_"] = SizeFactorPolicy(**fitted["size_factors_"])
    v = fitted["validation_"]
    fitted["validation_"] = None if v is None else ValidationSplit(**v)
    return fitted


def _estimator_class(cls, name: str):
    """``cls`` or the subclass of ``cls`` called ``name``."""
    importlib.import_module("pyrovae.reference")  # the reference classes are subclasses too
    todo = [cls]
    while todo:
        klass = todo.pop()
        if klass.__name__ == name:
            return klass
        todo.extend(klass.__subclasses__())
    return None


def load(cls, path, device: str | None = None):
    """Read a model written by :func:`save` as an instance of ``cls`` (or of its subclass named in
    the file).

    :param device: where to put the model (default: the device it was fitted with).
    :raises ValueError: not a pyrovae model file, a corrupt one, an incompatible version, or one
        holding an estimator that is not a ``cls``.
    """
    payload = _read(path)
    if not isinstance(payload, dict) or "format" not in payload:
        raise ValueError(f"{path} is not a pyrovae model file of a known format")
    major = str(payload.get("pyrovae_version", "")).split(".")[:2]
    if major != __version__.split(".")[:2]:
        raise ValueError(
            f"{path} was written by pyrovae {payload.get('pyrovae_version')}, which is not "
            f"compatible with this pyrovae {__version__}"
        )
    if payload["format"] != FORMAT:
        raise ValueError(f"{path} has file format {payload['format']}, this pyrovae reads {FORMAT}")
    klass = _estimator_class(cls, payload["class"])
    if klass is None:
        raise ValueError(f"{path} holds a {payload['class']}, not a {cls.__name__}")
    params = dict(payload["params"])
    if device is not None:
        params["device"] = device
    est = klass(**params)
    fitted = _fitted_of(payload)
    model, guide = build(
        fitted["n_features_in_"],
        est.latent_dim,
        payload["prior"],
        est.hidden,
        resolve_device(est.device),
        est.dtype,
        normalise_input=fitted["size_factors_"].mode is not None,
    )
    model.load_state_dict(payload["model_state"])
    guide.load_state_dict(payload["guide_state"])
    for name, value in fitted.items():
        setattr(est, name, value)
    est.model_, est.guide_ = model, guide
    return est
