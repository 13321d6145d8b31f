"""One module per reproduced paper; each exposes ``reproduce(out, quick, jobs, overrides) -> section path``."""

from geomopt.experiments import path_sgd

EXPERIMENTS = {"path-sgd": path_sgd}

__all__ = ["EXPERIMENTS"]
