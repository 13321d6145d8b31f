"""The one training engine: a short loop (:func:`fit`) and callbacks (:mod:`geomopt.train.callbacks`) for
metrics, atomic checkpoints and exact resume, divergence, progress, TensorBoard, data-parallel training."""

from geomopt.train.callbacks import Callback, SharpnessTracker, StepFunction, TensorBoardLog, TrainState
from geomopt.train.checkpoint import load_checkpoint, save_checkpoint, write_json
from geomopt.train.config import TrainConfig
from geomopt.train.engine import DivergedError, NonFiniteLossError, accuracy, evaluate, fit, read_metrics
from geomopt.train.run import SCHEDULES, resolve_device, train

__all__ = ["TrainConfig", "fit", "evaluate", "accuracy", "read_metrics", "NonFiniteLossError", "DivergedError", "train",
           "SCHEDULES", "resolve_device", "save_checkpoint", "load_checkpoint", "write_json", "Callback", "TrainState",
           "StepFunction", "SharpnessTracker", "TensorBoardLog"]
