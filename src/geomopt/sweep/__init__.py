"""Many trials: one sweep engine (a local process pool or a Ray cluster), multi-seed statistics,
hyperparameter selection on validation data, claims as data.

- :mod:`geomopt.sweep.engine`: a sweep is a list of :class:`Trial` (a :class:`~geomopt.train.TrainConfig`
  or any picklable job, and an output folder). :func:`run_sweep` skips finished trials, runs the others
  on a backend (:mod:`~geomopt.sweep.local`: worker processes on this machine, the default;
  :mod:`~geomopt.sweep.ray_backend`: Ray tasks on a cluster), retries attempts that raise or whose
  worker dies, records a trial that still fails in its ``failed.json`` and goes on; each trial runs in
  a temporary folder of its worker (:mod:`~geomopt.sweep.trial`) and its files come back to the
  driver, which writes them under the output folder. :func:`run_all` is the call the experiments use:
  ``[(config, out)] -> [summary]`` in order.
- :mod:`geomopt.sweep.stats`: mean and 95% Student-t interval over seeds (``seed_stats``, ``band``).
- :mod:`geomopt.sweep.select`: grid selection on validation scores with the grid-edge extension rule
  (``Grid``, ``select_grids``, ``Selection``).
- :mod:`geomopt.sweep.claims`: a paper's claims with their tests over multi-seed results
  (``Claim``, ``Outcome``, four verdicts, ``less``, ``greater``, ``equivalent``, ``all_of``, ``gated``,
  ``write_claims``).
"""

from geomopt.sweep.claims import (FAILS, HOLDS, INCONCLUSIVE, UNTESTABLE, VERDICTS, Claim, Outcome, RunGate, all_of,
                                  count_verdicts, equivalent, gated, greater, hierarchical_interval, less, read_claims,
                                  untestable, write_claims)
from geomopt.sweep.engine import (BACKENDS, SweepError, SweepInterrupted, TrialResult, default_jobs, make_backend,
                                  run_all, run_sweep, sweep_options)
from geomopt.sweep.select import Grid, Selection, select_grids
from geomopt.sweep.stats import SeedStats, band, seed_stats, t_quantile
from geomopt.sweep.trial import FAILED, Output, Trial, TrainJob, execute

__all__ = ["FAILS", "HOLDS", "INCONCLUSIVE", "UNTESTABLE", "VERDICTS", "Claim", "Outcome", "RunGate", "all_of",
           "count_verdicts", "equivalent", "gated", "greater", "hierarchical_interval", "less", "read_claims",
           "untestable", "write_claims",
           "Grid", "Selection", "select_grids", "SeedStats", "band", "seed_stats", "t_quantile",
           "BACKENDS", "FAILED", "Output", "SweepError", "SweepInterrupted", "Trial", "TrainJob", "TrialResult",
           "default_jobs", "execute", "make_backend", "run_all", "run_sweep", "sweep_options"]
