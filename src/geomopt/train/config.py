"""Typed run configuration: plain data, overridable by name, unknown keys rejected."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    """Everything that defines one training run of ``geomopt train``."""

    model: str = "mlp"
    widths: tuple[int, ...] = (256, 256)
    bias: bool = True
    dropout: float = 0.0
    init: str = "kaiming"
    data: str = "digits"
    data_dir: str | None = None
    train_size: int | None = None
    val_fraction: float = 0.0  # held out of the training set for choosing hyperparameters (val_loss, val_acc)
    label_noise: float = 0.0
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float | None = None
    weight_decay: float = 0.0
    schedule: str = "constant"
    epochs: int = 20
    batch_size: int = 100
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 0
    max_grad_norm: float | None = None
    target_train_loss: float | None = None  # stop at the end of the first epoch with train loss <= this
    # sequence datasets only (adding, copy, chars): the sequence length T (None: the dataset's default)
    seq_len: int | None = None
    # kfac / ekfac only (geomopt.optim.KFAC, EKFAC)
    damping: float = 1e-3
    factor_decay: float = 0.95
    update_freq: int = 10
    inv_freq: int = 100
    fisher: str = "empirical"
    kl_clip: float | None = None
    diag_freq: int = 1  # ekfac only: re-estimate the eigenbasis diagonal every this many steps

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a dict; a key that is not a field raises ValueError naming it."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; valid keys: {sorted(names)}")
        d = dict(d)
        if "widths" in d:
            d["widths"] = tuple(int(w) for w in d["widths"])
        return cls(**d)

    def replace(self, **overrides: Any) -> TrainConfig:
        """A copy with some fields changed; unknown names raise ValueError."""
        return TrainConfig.from_dict({**self.to_dict(), **overrides})

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
