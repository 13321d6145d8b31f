"""Input checks shared by the optimizers, the implicit-regularization lab, the measures and the configs.

Every check names where it runs (``where``: the function or class, e.g. ``"PathSGD: param group 1"``) and
the argument (``key``), and raises

- :class:`WrongTypeError` (a ``TypeError`` that is also a ``ValueError``, so that code catching bad input as
  ``ValueError``, as the command line does, reports it too) for a value of the wrong type (a string, a bool
  or ``None`` where a number is expected, ``2.5`` where an integer is expected, a list where a tensor is
  expected);
- ``ValueError`` for a value of the right type outside its range: NaN, +-inf (unless allowed), the wrong
  sign, an empty tensor, the wrong number of dimensions, NaN/inf entries.

Each returns the checked value (a ``float``, an ``int``, the tensor), so a caller can normalize with it::

    lr = check_number("PathSGD", "lr", lr, low=0)              # finite, >= 0
    momentum = check_number("PathSGD", "momentum", m, low=0, high=1, high_open=True)   # in [0, 1)
    depth = check_int("balanced_factors", "depth", depth, low=1)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn


class WrongTypeError(TypeError, ValueError):
    """An argument of the wrong type: a ``TypeError``, and a ``ValueError`` for code that catches bad input so."""


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high:g}"
    return ""


def _inside(v: float, low: float | None, high: float | None, low_open: bool, high_open: bool) -> bool:
    above = low is None or (v > low if low_open else v >= low)
    below = high is None or (v < high if high_open else v <= high)
    return above and below


def _is_real(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, Tensor):  # a 0-d or one-element tensor (an lr scheduler's tensor lr)
        return value.numel() == 1 and not (value.dtype.is_complex or value.dtype == torch.bool)
    return isinstance(value, numbers.Real)


def check_number(where: str, key: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, allow_inf: bool = False) -> float:
    """``float(value)`` for a real number that is not NaN, finite (unless ``allow_inf``) and within the bounds
    (``low < v`` with ``low_open``, else ``low <= v``; likewise ``high``).

    Raises:
        WrongTypeError: ``value`` is not a real number (bools, strings, ``None`` are not).
        ValueError: NaN, +-inf (without ``allow_inf``) or out of range; the message gives the range.
    """
    what = ("a number" if allow_inf else "a finite number") + _interval(low, high, low_open, high_open)
    if not _is_real(value):
        raise WrongTypeError(f"{where}: {key} must be {what}, got {type(value).__name__} {value!r}")
    v = float(value)
    if math.isnan(v) or (math.isinf(v) and not allow_inf) or not _inside(v, low, high, low_open, high_open):
        raise ValueError(f"{where}: {key} must be {what}, got {value!r}")
    return v


def check_betas(where: str, key: str, value: Any) -> None:
    """``value`` is two decay rates ``(beta1, beta2)``, each in [0, 1) (Adam's ``betas``).

    Raises:
        WrongTypeError: not a pair.
        ValueError: a rate out of [0, 1) (named ``key[i]``).
    """
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise WrongTypeError(f"{where}: {key} must be two numbers (beta1, beta2), got {value!r}")
    for i, b in enumerate(value):
        check_number(where, f"{key}[{i}]", b, low=0, high=1, high_open=True)


def check_int(where: str, key: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """``int(value)`` for an integer (``numbers.Integral``, not a bool) within ``[low, high]``.

    Raises:
        WrongTypeError: not an integer (``2.5``, ``2.0``, ``"2"``, ``True``, ``None``).
        ValueError: outside ``[low, high]``.
    """
    what = "an integer" + _interval(low, high, False, False)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise WrongTypeError(f"{where}: {key} must be {what}, got {type(value).__name__} {value!r}")
    if not _inside(int(value), low, high, False, False):
        raise ValueError(f"{where}: {key} must be {what}, got {value!r}")
    return int(value)


def check_tensor(where: str, key: str, value: Any, *, ndim: int | tuple[int, ...] | None = None,
                 min_ndim: int | None = None, nonempty: bool = True, finite: bool = True) -> Tensor:
    """``value`` if it is a tensor with ``ndim`` dimensions (one of them, for a tuple) or at least ``min_ndim``,
    with at least one entry (``nonempty``) and no NaN/inf entry (``finite``, floating tensors).

    Raises:
        WrongTypeError: not a tensor.
        ValueError: wrong number of dimensions, no entries, or NaN/inf entries (the message counts them).
    """
    if not isinstance(value, Tensor):
        raise WrongTypeError(f"{where}: {key} must be a tensor, got {type(value).__name__}")
    shape = tuple(value.shape)
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if dims is not None and value.dim() not in dims:
        raise ValueError(f"{where}: {key} must have {' or '.join(map(str, dims))} dimension(s), got shape {shape}")
    if min_ndim is not None and value.dim() < min_ndim:
        raise ValueError(f"{where}: {key} must have at least {min_ndim} dimension(s), got shape {shape}")
    if nonempty and value.numel() == 0:
        raise ValueError(f"{where}: {key} is empty (shape {shape}); it needs at least one entry")
    if finite and (value.is_floating_point() or value.is_complex()):
        bad = int((~torch.isfinite(value.detach())).sum())
        if bad:
            raise ValueError(f"{where}: {key} has {bad} NaN/inf entries of {value.numel()} (shape {shape})")
    return value


def first_non_finite(named: Iterable[tuple[str, Tensor]]) -> str | None:
    """``"NAME (shape S) has K non-finite (NaN/inf) entries of N"`` for the first floating-point tensor of
    ``(NAME, tensor)`` pairs with a NaN or inf entry, or None when all are finite."""
    for name, t in named:
        if t.is_floating_point() or t.is_complex():
            bad = ~torch.isfinite(t.detach())
            if bool(bad.any()):
                return f"{name} (shape {tuple(t.shape)}) has {int(bad.sum())} non-finite (NaN/inf) entries of {t.numel()}"
    return None


def check_finite_parameters(model: nn.Module, what: str) -> None:
    """Raise ``ValueError`` naming the first parameter with a NaN or inf entry (and how many it has).

    Args:
        model: the network.
        what: the computation asked for, for the message (e.g. ``"path norm"``).
    """
    bad = first_non_finite((f"parameter '{name}'", p) for name, p in model.named_parameters())
    if bad is not None:
        raise ValueError(f"{what}: {bad}; a diverged model has no meaningful {what}")
