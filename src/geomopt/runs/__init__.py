"""What the command line does with a trained run directory (the ``config.json`` + ``checkpoint.pt`` that
:func:`geomopt.train.train` writes): its generalization measures (:func:`measure_run`, ``measures.json``), its
curvature spectra (:func:`curvature_run`, ``curvature.json``) and pruning it (:func:`prune_run`, ``prune.json``).

This floor sits above ``train`` (it rebuilds the model from the run's config and checkpoint) and below
``sweep``, whose trials measure their runs on the worker.
"""

from geomopt.runs.curvature import CURVATURE_FILE, curvature_run
from geomopt.runs.measure import MEASURES_FILE, load_run, measure_run, stored_measures
from geomopt.runs.prune import prune_run

__all__ = ["CURVATURE_FILE", "MEASURES_FILE", "curvature_run", "load_run", "measure_run", "prune_run",
           "stored_measures"]
