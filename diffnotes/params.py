"""Checks for notebook (papermill) parameters and devices: bad input is a ``ValueError`` naming the parameter."""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

__all__ = ["check", "real", "integer", "tensor", "resolve_device", "generator"]


def check(name, value, kind, *, lo=None, hi=None, choices=None, each=False):
    """Return ``value`` if it is a ``kind`` (``int``, ``float``, ``str``, ``bool``) within ``[lo, hi]`` / in
    ``choices``, else raise ``ValueError`` naming the parameter.  With ``each``, ``value`` is a non-empty list
    and every entry is checked."""
    if each:
        if not isinstance(value, (list, tuple)) or len(value) == 0:
            raise ValueError(f"parameter {name!r} must be a non-empty list, got {value!r}")
        return [check(f"{name}[{i}]", v, kind, lo=lo, hi=hi, choices=choices) for i, v in enumerate(value)]
    ok_type = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok_type = float(value), True
    if not ok_type:
        raise ValueError(f"parameter {name!r} must be of type {kind.__name__}, got {value!r}")
    if kind is float and math.isnan(value):
        raise ValueError(f"parameter {name!r} must be a number, got {value!r}")
    if choices is not None and value not in choices:
        raise ValueError(f"parameter {name!r} must be one of {list(choices)}, got {value!r}")
    if lo is not None and value < lo:
        raise ValueError(f"parameter {name!r} must be >= {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ValueError(f"parameter {name!r} must be <= {hi}, got {value!r}")
    return value


def real(name, value, *, lo=None, hi=None, lo_open=False, hi_open=False):
    """``value`` as a Python float if it is a finite real number (an ``int``, a ``float``, a NumPy scalar or a 0-d
    real tensor; never a ``bool``) in the interval from ``lo`` to ``hi`` (closed ends unless ``lo_open`` /
    ``hi_open``), else a ``ValueError`` naming the argument ``name``: the one check of the package's numeric
    arguments (schedule constants, ``eta``, confidence levels)."""
    if torch.is_tensor(value) and value.ndim == 0 and value.dtype.is_floating_point:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {value!r}")
    if hi is not None and (v >= hi if hi_open else v > hi):
        raise ValueError(f"{name} must be {'<' if hi_open else '<='} {hi}, got {value!r}")
    return v


def integer(name, value, *, lo=None, hi=None):
    """``value`` as a Python int if it is an integer (an ``int``, a NumPy integer or a 0-d integer tensor; never a
    ``bool``) within ``[lo, hi]``, else a ``ValueError`` naming ``name``."""
    if torch.is_tensor(value) and value.ndim == 0 and not value.dtype.is_floating_point and value.dtype != torch.bool \
            and not value.dtype.is_complex:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return v


def tensor(name, value, *, dtype=torch.float64, device=None, ndim=None, finite=True):
    """``value`` (a tensor, an array or nested lists of real numbers) as a real tensor of ``dtype`` on ``device``,
    else a ``ValueError`` naming ``name``: not a real array (strings, ``None``), a boolean or complex tensor, the
    wrong number of dimensions, or (with ``finite``) a NaN or infinite entry."""
    if torch.is_tensor(value) and (value.dtype == torch.bool or value.dtype.is_complex):
        raise ValueError(f"{name} must hold real numbers, got a {value.dtype} tensor")
    if isinstance(value, (str, bytes)) or value is None:
        raise ValueError(f"{name} must be an array of real numbers, got {value!r}")
    try:
        t = torch.as_tensor(value, dtype=dtype, device=device)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name} must be an array of real numbers, got {type(value).__name__}") from e
    if isinstance(value, np.ndarray) and value.dtype.kind not in "iuf":
        raise ValueError(f"{name} must hold real numbers, got a {value.dtype} array")
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(t.shape)}")
    if finite and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite (no NaN or inf entries)")
    return t


def resolve_device(device):
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"`` (CUDA when present) or a ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: unknown device {device!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device: unsupported device {device!r} (use 'cpu', 'cuda' or 'auto')")
    return dev


def generator(seed, device="cpu"):
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    check("seed", seed, int, lo=0, hi=2 ** 64 - 1)
    return torch.Generator(device=resolve_device(device)).manual_seed(seed)
