"""One module per reproduced paper, each declared with the experiment skeleton
(:mod:`geomopt.experiments.skeleton`): its config dataclass ``CONFIG`` (a
:class:`~geomopt.experiments.skeleton.Protocol`), ``claims(exp)`` over its stored records, ``EXPERIMENT``
(the :class:`~geomopt.experiments.skeleton.Experiment` binding its runs, claims and report) and
``reproduce = EXPERIMENT.reproduce`` (``reproduce(out, *, tier, jobs, overrides, seeds, overwrite) ->
section path``).

``EXPERIMENTS`` maps each reproduction's name to its module, imported on first use (listing the names
imports nothing, so the command line starts fast and one experiment's import cannot break another's).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from types import ModuleType

_MODULES = {"path-sgd": "path_sgd", "ekfac": "ekfac", "path-sgd-rnn": "path_sgd_rnn", "pruning": "pruning",
            "exploring-generalization": "exploring_generalization", "implicit-mf": "implicit_mf",
            "deep-mf": "deep_mf", "bn-lstm": "bn_lstm", "overparametrization": "overparametrization",
            "edge-of-stability": "edge_of_stability",
            "implicit-geometry": "implicit_geometry"}


class _Experiments(Mapping[str, ModuleType]):
    """Reproduction name -> its module, imported when first looked up."""

    def __getitem__(self, name: str) -> ModuleType:
        if name not in _MODULES:
            raise KeyError(name)
        return importlib.import_module(f"geomopt.experiments.{_MODULES[name]}")

    def __iter__(self) -> Iterator[str]:
        return iter(_MODULES)

    def __len__(self) -> int:
        return len(_MODULES)


EXPERIMENTS: Mapping[str, ModuleType] = _Experiments()

__all__ = ["EXPERIMENTS"]
