"""Callbacks of :func:`geomopt.train.fit`: every concern of training besides the loop itself.

:class:`Callback` documents the hooks; :class:`TrainState` is what they see. The engine's own:
:class:`MetricsLog` (``metrics.jsonl``), :class:`TensorBoardLog`, :class:`Checkpoint` (and
:func:`restore`), :class:`DivergenceGuard`, :class:`LRSchedule`, :class:`ClipGradNorm`,
:class:`DataParallelSync`, :class:`TargetLoss`, :class:`ProgressBar`, :class:`StepFunction` (a
function of (step, model), e.g. :class:`SharpnessTracker`) and :class:`InterruptAfter` (a simulated Ctrl-C).
"""

from geomopt.train.callbacks.base import CHECKPOINT, Callback, TrainState
from geomopt.train.callbacks.checkpoint import Checkpoint, restore
from geomopt.train.callbacks.clip import ClipGradNorm
from geomopt.train.callbacks.data_parallel import DataParallelSync
from geomopt.train.callbacks.divergence import DivergedError, DivergenceGuard, NonFiniteLossError
from geomopt.train.callbacks.interrupt import InterruptAfter
from geomopt.train.callbacks.metrics import METRICS, MetricsLog, read_metrics
from geomopt.train.callbacks.progress import ProgressBar
from geomopt.train.callbacks.schedule import LRSchedule
from geomopt.train.callbacks.sharpness import SharpnessTracker
from geomopt.train.callbacks.step_function import StepFunction
from geomopt.train.callbacks.target import TargetLoss
from geomopt.train.callbacks.tensorboard import TensorBoardLog

__all__ = ["Callback", "TrainState", "CHECKPOINT", "METRICS", "Checkpoint", "restore", "ClipGradNorm",
           "DataParallelSync", "DivergenceGuard", "NonFiniteLossError", "DivergedError", "InterruptAfter",
           "MetricsLog", "read_metrics", "ProgressBar", "LRSchedule", "SharpnessTracker", "StepFunction",
           "TargetLoss", "TensorBoardLog"]
