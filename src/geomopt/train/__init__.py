"""The one training engine: loop, atomic checkpoints, metrics log, progress, exact resume."""

from geomopt.train.checkpoint import load_checkpoint, save_checkpoint, write_json
from geomopt.train.config import TrainConfig
from geomopt.train.engine import DivergedError, NonFiniteLossError, accuracy, evaluate, fit, read_metrics
from geomopt.train.run import SCHEDULES, resolve_device, train

__all__ = ["TrainConfig", "fit", "evaluate", "accuracy", "read_metrics", "NonFiniteLossError", "DivergedError", "train",
           "SCHEDULES", "resolve_device", "save_checkpoint", "load_checkpoint", "write_json"]
