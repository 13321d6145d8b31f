"""Many trials: multi-seed statistics, hyperparameter selection on validation data, claims as data.

- :mod:`geomopt.sweep.stats`: mean and 95% Student-t interval over seeds (``seed_stats``, ``band``).
- :mod:`geomopt.sweep.select`: grid selection on validation scores with the grid-edge extension rule
  (``Grid``, ``select_grids``, ``Selection``).
- :mod:`geomopt.sweep.claims`: a paper's claims with their tests over multi-seed results
  (``Claim``, ``Outcome``, ``less``, ``greater``, ``all_of``, ``write_claims``).
"""

from geomopt.sweep.claims import FAILS, HOLDS, PARTLY, Claim, Outcome, all_of, greater, less, read_claims, write_claims
from geomopt.sweep.select import Grid, Selection, select_grids
from geomopt.sweep.stats import SeedStats, band, seed_stats, t_quantile

__all__ = ["FAILS", "HOLDS", "PARTLY", "Claim", "Outcome", "all_of", "greater", "less", "read_claims", "write_claims",
           "Grid", "Selection", "select_grids", "SeedStats", "band", "seed_stats", "t_quantile"]
