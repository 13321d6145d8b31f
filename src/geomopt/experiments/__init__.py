"""One module per reproduced paper; each exposes ``reproduce(out, quick, jobs, overrides) -> section path``."""

from geomopt.experiments import exploring_generalization, path_sgd, path_sgd_rnn, pruning
from geomopt.experiments import ekfac  # noqa: E402  (K-FAC/EKFAC, issue 4)

EXPERIMENTS = {"path-sgd": path_sgd, "ekfac": ekfac, "path-sgd-rnn": path_sgd_rnn, "pruning": pruning,
               "exploring-generalization": exploring_generalization}

from geomopt.experiments import deep_mf, implicit_mf  # noqa: E402  (implicit regularization lab, issue 6)

EXPERIMENTS.update({"implicit-mf": implicit_mf, "deep-mf": deep_mf})

from geomopt.experiments import bn_lstm  # noqa: E402  (recurrent batch normalization, issue 8)

EXPERIMENTS["bn-lstm"] = bn_lstm

from geomopt.experiments import overparametrization  # noqa: E402  (network size and generalization, issue 20)

EXPERIMENTS["overparametrization"] = overparametrization

from geomopt.experiments import edge_of_stability  # noqa: E402  (curvature toolbox, issue 18)

EXPERIMENTS["edge-of-stability"] = edge_of_stability

__all__ = ["EXPERIMENTS"]
