"""Your own model by reference: ``--model package.module:factory``.

A *factory reference* ``MODULE:FACTORY`` names a function ``factory(input_shape, num_classes, **options)``
that returns a ``torch.nn.Module`` (``input_shape``: one example's shape, e.g. ``(1, 8, 8)``;
``options``: the config's ``model_options``). The config stores the reference, a string, so that
resumed runs, sweep and Ray workers, measures and pruning rebuild the same model. The module must be
importable wherever the model is built: installed, on ``PYTHONPATH``, or (local processes only) a
``.py`` file in the current folder.

Importing a module runs its code. geomopt therefore imports a reference only when it is *trusted* in
this process: named by the user on the command line (``--model``), allowed as a whole by
``--trust-config``, or passed to :func:`trusted_models` / found in a config handed to
:func:`geomopt.train.train` from Python. A reference read from a run folder, a zoo file or a config
file is refused otherwise (:func:`check_trusted`), so that files from someone else never run code by
themselves; checkpoints are read with torch's restricted unpickler (``weights_only=True``).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

_REFERENCE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_trusted: set[str] = set()
_trust_all = False


class UntrustedModelError(ValueError):
    """A config read from a file names a model factory that nobody allowed geomopt to import."""


def is_factory_reference(name: str) -> bool:
    """Whether ``name`` has the form ``package.module:function`` (a dotted attribute path after the colon)."""
    return isinstance(name, str) and _REFERENCE.fullmatch(name) is not None


def is_trusted(reference: str) -> bool:
    return _trust_all or reference in _trusted


@contextlib.contextmanager
def trusted_models(*references: str, everything: bool = False) -> Iterator[None]:
    """Within the block, :func:`build_model` may import these references (all of them with ``everything``:
    what ``--trust-config`` does). The trust ends with the block."""
    global _trust_all
    before, before_all = set(_trusted), _trust_all
    _trusted.update(r for r in references if is_factory_reference(r))
    _trust_all = before_all or everything
    try:
        yield
    finally:
        _trusted.intersection_update(before)
        _trust_all = before_all


def check_trusted(reference: str, source: str) -> None:
    """Raise :class:`UntrustedModelError` when ``reference`` (read from ``source``) is a factory reference
    that is not trusted; built-in model names pass."""
    if is_factory_reference(reference) and not is_trusted(reference):
        raise UntrustedModelError(
            f"{source} names the model factory {reference!r}; importing it would run its code, which geomopt never "
            f"does for a file by itself: if you trust it, pass --model {reference} or --trust-config "
            f"(from Python: with geomopt.nn.trusted_models({reference!r}): ...)")


def load_factory(reference: str) -> Callable[..., nn.Module]:
    """The function a trusted reference names; a one-line ValueError when it cannot be imported or called."""
    check_trusted(reference, "the config")
    module_name, _, attribute = reference.partition(":")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:  # a .py file beside the command, as `python -m` would find it (after every installed module)
        sys.path.append(cwd)
    try:
        target = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001  (any error while running the module is the user's to see)
        raise ValueError(f"--model {reference}: cannot import {module_name!r} ({type(exc).__name__}: {exc}); it must "
                         "be installed, on PYTHONPATH, or a .py file in the current folder") from None
    finally:
        if added:
            sys.path.remove(cwd)
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"--model {reference}: module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"--model {reference}: {attribute!r} is a {type(target).__name__}, not a function")
    return target


def build_from_factory(reference: str, input_shape: Sequence[int], num_classes: int, options: dict,
                       seed: int) -> nn.Module:
    """``factory(tuple(input_shape), num_classes, **options)`` with torch's global RNG seeded by ``seed``
    (the initialization is a pure function of the seed, as for the built-in models; the caller's RNG
    state is left as it was)."""
    factory = load_factory(reference)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = factory(tuple(input_shape), num_classes, **options)
        except Exception as exc:  # noqa: BLE001  (the factory is user code: say which call failed)
            raise ValueError(f"--model {reference}: calling it with input_shape={tuple(input_shape)}, "
                             f"num_classes={num_classes}, model_options={options} raised "
                             f"{type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"--model {reference}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    return model
