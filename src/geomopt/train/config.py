"""Typed run configuration and the one schema that checks every config source.

``check_fields(cls, values, source)`` validates a mapping against a dataclass's type hints
(``bool``, ``int``, ``float``, ``str``, ``X | None``, ``tuple[X, ...]``, ``list[X]``,
``dict[K, V]``, ``Literal[...]``, ``Any``) strictly: a boolean is ``true``/``false`` (never the string
``"false"``), an integer is never ``1.5`` or ``"2"``, a list is a list (``[64, 64]``, not
``"64,64"``). Errors name the field and the source (file, ``--set``, command line). Command-line
text goes through ``parse_text`` (``--widths 64,64``, ``--bias false``, ``--set epochs=3``),
which reads it into a value and then applies the same check. TrainConfig, the experiment
configs and the zoo file all go through here.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from geomopt.checks import check_int, check_number
from geomopt.optim.kfac import DEFAULT_DAMPING, DEFAULT_KL_CLIP
from geomopt.optim.registry import KRONECKER_OPTIONS


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return "any value"
    if origin is typing.Literal:
        return " or ".join(json.dumps(a) for a in args)
    if hint is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (tuple, list):
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return f"a table (JSON object) of {_describe(args[1]).removeprefix('a ').removeprefix('an ')} values"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


class CommandLineText(str):
    """A value typed on the command line (``--set key=TEXT``): read by :func:`parse_text` for its field."""


def check_value(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against the type ``hint`` (and normalized: lists of a tuple field become
    tuples, integers of a float field floats); ValueError naming ``where`` otherwise."""
    if isinstance(value, CommandLineText):
        return parse_text(str(value), hint, where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)

    def fail() -> typing.NoReturn:
        raise ValueError(f"{where}: expected {_describe(hint)}, got {value!r}")

    if hint is Any:
        return value
    if origin is typing.Literal:
        return value if value in args and type(value) in map(type, args) else fail()
    if hint is type(None):
        return None if value is None else fail()
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return check_value(value, arg, where)
            except ValueError:
                continue
        fail()
    if origin in (tuple, list):
        element = args[0]
        if not isinstance(value, (list, tuple)):
            if origin is tuple and not isinstance(value, (list, tuple, dict)):  # one value: a 1-tuple
                try:
                    return (check_value(value, element, where),)
                except ValueError:
                    fail()
            fail()
        items = [check_value(v, element, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            fail()
        return {check_value(k, args[0], f"{where} key"): check_value(v, args[1], f"{where}[{k!r}]")
                for k, v in value.items()}
    if hint is bool:
        return value if isinstance(value, bool) else fail()
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else fail()
    if hint is float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else fail()
    if hint is str:
        return value if isinstance(value, str) else fail()
    return value


def field_hints(cls: type) -> dict[str, Any]:
    """The type hint of every field of the dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def check_fields(cls: type, values: dict[str, Any], source: str, kind: str = "config") -> dict[str, Any]:
    """``values`` checked against the fields of the dataclass ``cls``: unknown keys and values of the
    wrong type raise ValueError naming the key and ``source`` (a file, ``--set``, ...)."""
    if not isinstance(values, dict):
        raise ValueError(f"{source}: expected a table of {cls.__name__} fields (a JSON object), got {values!r}")
    hints = field_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(f"{source}: unknown {kind} key(s) {unknown}; valid keys: {sorted(hints)}")
    return {k: check_value(v, hints[k], f"{source}: field {k!r}") for k, v in values.items()}


def parse_text(text: str, hint: Any, where: str) -> Any:
    """Command-line text for a field of type ``hint``: JSON (``3``, ``[64, 64]``, ``null``,
    ``{"sgd": [0.1]}``), or ``true/false/yes/no/on/off`` for a boolean, or a comma list
    (``64,64``) for a list, or the bare text for a string; then :func:`check_value`."""
    stripped = text.strip()
    candidates: list[Any] = []
    try:
        candidates.append(json.loads(stripped))
    except json.JSONDecodeError:
        pass
    lowered = stripped.lower()
    if lowered in ("true", "yes", "on", "false", "no", "off"):
        candidates.append(lowered in ("true", "yes", "on"))
    if lowered in ("none", "null"):
        candidates.append(None)
    if "," in stripped and not stripped.startswith(("[", "{")):
        parts = []
        for t in (t.strip() for t in stripped.split(",") if t.strip()):
            try:
                parts.append(json.loads(t))
            except json.JSONDecodeError:
                parts.append(t)
        candidates.append(parts)
    candidates.append(text)
    for value in candidates:
        try:
            return check_value(value, hint, where)
        except ValueError:
            continue
    raise ValueError(f"{where}: expected {_describe(hint)}, got {text!r}")


def read_json(path: str | Path, what: str = "a JSON file") -> Any:
    """The JSON in ``path``; a missing, unreadable or malformed file raises an error naming it."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file ({what} was expected there)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read {what} ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno}); "
                         f"fix or delete the file") from None


#: The range of every numeric TrainConfig field (:mod:`geomopt.checks`; NaN and inf are never in range), checked
#: on every config (flags, files, ``--set``, stored runs), so that a bad value is refused before a run starts.
_VALUE_RULES: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "widths": (check_int, dict(low=1)),
    "dropout": (check_number, dict(low=0, high=1, high_open=True)),
    "train_size": (check_int, dict(low=1)),
    "val_fraction": (check_number, dict(low=0, high=1, high_open=True)),
    "label_noise": (check_number, dict(low=0, high=1)),
    "lr": (check_number, dict(low=0)),
    "momentum": (check_number, dict(low=0, high=1, high_open=True)),
    "weight_decay": (check_number, dict(low=0)),
    "epochs": (check_int, dict(low=1)),
    "batch_size": (check_int, dict(low=1)),
    "checkpoint_every": (check_int, dict(low=0)),
    "max_grad_norm": (check_number, dict(low=0, low_open=True)),
    "target_train_loss": (check_number, dict(low=0)),
    "track_sharpness": (check_int, dict(low=0)),  # 0: off, else every this many steps
    "sharpness_examples": (check_int, dict(low=1)),
    "seq_len": (check_int, dict(low=1)),
    "damping": (check_number, dict(low=0, low_open=True)),
    "factor_decay": (check_number, dict(low=0, high=1, high_open=True)),
    "update_freq": (check_int, dict(low=1)),
    "inv_freq": (check_int, dict(low=1)),
    "kl_clip": (check_number, dict(low=0, low_open=True)),
    "diag_freq": (check_int, dict(low=1)),
}


def _field(default: Any, help: str) -> Any:
    """A :class:`TrainConfig` field and its one-line description (``geomopt train --help`` shows it)."""
    if isinstance(default, dict):
        return dataclasses.field(default_factory=lambda: dict(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything that defines one training run of ``geomopt train``; every value is type-checked.

    Each field's description is in its metadata (``dataclasses.fields(TrainConfig)[i].metadata["help"]``).
    """

    model: str = _field("mlp", "network: mlp, cnn, relu-rnn, lstm, bnlstm, bnrnn, urnn, or your own as "
                               "MODULE:FACTORY, a function factory(input_shape, num_classes, **model_options)")
    model_options: dict[str, Any] = _field({}, "keyword arguments of a MODULE:FACTORY model, a JSON object "
                                               "(e.g. '{\"hidden\": 64}'); unused by the built-in models")
    widths: tuple[int, ...] = _field((256, 256), "hidden widths of an mlp, conv channels of a cnn, the hidden "
                                                 "size of a recurrent model (a comma list)")
    bias: bool = _field(True, "layers with bias terms (true or false)")
    dropout: float = _field(0.0, "dropout probability after each hidden layer (mlp, cnn)")
    init: str = _field("kaiming", "weight initialization; unbalanced, unbalanced-layer: kaiming with random "
                                  "function-preserving rescalings (Path-SGD's paper); irnn ... irnn-le: relu-rnn")
    data: str = _field("digits", "dataset: digits and mnist1d are embedded, the others read --data-dir; adding, "
                                 "copy, chars, seq-* (pixel by pixel) and rows-* are sequence tasks")
    data_dir: str | None = _field(None, "folder of the mnist / fashion-mnist / cifar10 files, or the chars text "
                                        "file (None: $GEOMOPT_DATA)")
    train_size: int | None = _field(None, "train on a seeded random subset of this many examples (None: all)")
    val_fraction: float = _field(0.0, "stratified fraction of the training set held out as a validation split "
                                      "(val_loss, val_acc) for choosing hyperparameters")
    label_noise: float = _field(0.0, "fraction of training labels redrawn at random (1.0: random labels)")
    optimizer: str = _field("sgd", "optimizer; path-sgd: Path-SGD (ReLU nets), kfac / ekfac: Kronecker-factored "
                                   "natural gradient (see --damping ...), muon / shampoo / soap: their class "
                                   "defaults (docs/optimizers.md)")
    lr: float = _field(0.05, "learning rate")
    momentum: float | None = _field(None, "momentum (None: 0.9 for --optimizer momentum, else 0)")
    weight_decay: float = _field(0.0, "L2 weight decay coefficient")
    schedule: str = _field("constant", "learning-rate schedule over the run: constant, cosine to 0, or step "
                                       "(x0.1 at 50% and 75% of the steps)")
    epochs: int = _field(20, "passes over the training set")
    batch_size: int = _field(100, "examples per optimizer step")
    seed: int = _field(0, "seed of the initialization, the data order and the data split")
    device: str = _field("cpu", "where to train: cpu, cuda, cuda:N, or auto (cuda when available)")
    checkpoint_every: int = _field(0, "also checkpoint every this many steps (0: at the end of each epoch only)")
    max_grad_norm: float | None = _field(None, "clip the global gradient norm to this value (None: no clipping)")
    target_train_loss: float | None = _field(None, "stop at the end of the first epoch whose training loss is "
                                                   "at most this")
    loss: Literal["task", "mse"] = _field("task", "training loss: task (the dataset's: cross-entropy for "
                                                  "classification) or mse (classification only: 1/2 the squared "
                                                  "distance of the outputs to one-hot labels; Cohen et al. 2021)")
    track_sharpness: int = _field(0, "log the top Hessian eigenvalue (sharpness) every this many steps (0: off)")
    sharpness_examples: int = _field(1000, "training examples the tracked sharpness is computed on")
    seq_len: int | None = _field(None, "sequence length T of the adding, copy and chars tasks "
                                       "(None: the dataset's)")
    damping: float = _field(DEFAULT_DAMPING, "kfac / ekfac: Tikhonov damping added to the curvature")
    factor_decay: float = _field(0.95, "kfac / ekfac: running-average decay of the Kronecker factors")
    update_freq: int = _field(10, "kfac / ekfac: re-estimate the factors every this many steps")
    inv_freq: int = _field(100, "kfac / ekfac: invert (eigendecompose) the factors every this many steps")
    fisher: str = _field("empirical", "kfac / ekfac: curvature the factors estimate: empirical Fisher, true "
                                      "Fisher (sampled labels) or GGN")
    kl_clip: float | Literal["auto"] | None = _field(
        "auto", f"kfac / ekfac: clip the step so that its KL change is at most this (auto: {DEFAULT_KL_CLIP}, "
                "none with --adaptive-step true; none: no clipping)")
    diag_freq: int = _field(1, "ekfac: re-estimate the eigenbasis diagonal every this many steps")
    adaptive_damping: bool = _field(False, "kfac / ekfac: Levenberg-Marquardt damping (Martens & Grosse 2015, "
                                           "sec. 6.5)")
    adaptive_step: bool = _field(False, "kfac / ekfac: step size and momentum from the exact 2x2 quadratic model "
                                        "(Martens & Grosse 2015, sec. 7)")
    log: Literal["jsonl", "tensorboard"] = _field("jsonl", "metrics.jsonl only, or also TensorBoard event files "
                                                           "in OUT/tensorboard (pip install 'geomopt[tensorboard]')")

    def __post_init__(self) -> None:
        checked = check_fields(TrainConfig, dataclasses.asdict(self), "TrainConfig")
        for name, value in checked.items():
            object.__setattr__(self, name, value)
        for name, (check, rule) in _VALUE_RULES.items():
            value = getattr(self, name)
            if value is not None and value != "auto":  # None / "auto": the field's documented default meaning
                for i, v in enumerate(value if isinstance(value, tuple) else (value,)):
                    check("TrainConfig", f"field {name!r}" + (f"[{i}]" if isinstance(value, tuple) else ""), v,
                          **rule)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a dict; an unknown key or a value of the wrong type raises ValueError naming
        the key and ``source``."""
        return cls(**check_fields(cls, d, source))

    def replace(self, **overrides: Any) -> TrainConfig:
        """A copy with some fields changed; unknown names raise ValueError."""
        return TrainConfig.from_dict({**self.to_dict(), **overrides})

    def differences(self, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """``{field: (self's value, other's value)}`` for every field that differs in effect: the K-FAC/EKFAC
        options only between runs of those optimizers (a stored SGD run's ``damping`` is not a difference),
        ``kl_clip="auto"`` as the value it stands for; ``log`` never (it does not change the run)."""
        mine, theirs = self._effective(), other._effective()
        return {k: (mine.get(k), theirs.get(k)) for k in self.to_dict() if mine.get(k) != theirs.get(k)}

    def _effective(self) -> dict[str, Any]:
        d = self.to_dict()
        del d["log"]  # where the metrics also go does not change the run
        if self.optimizer not in ("kfac", "ekfac"):
            for k in KRONECKER_OPTIONS:
                del d[k]
        elif d["kl_clip"] == "auto":
            d["kl_clip"] = None if self.adaptive_step else DEFAULT_KL_CLIP
        return d

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(read_json(path, "a run's config.json"), source=str(path))


def same_config(stored: Path, config: TrainConfig) -> bool:
    """Whether the config file ``stored`` holds ``config``, compared as TrainConfigs by
    :meth:`TrainConfig.differences` (a file written before a field was added reads with that field's
    default; one that no longer loads does not match)."""
    try:
        return stored.is_file() and not TrainConfig.load(stored).differences(config)
    except ValueError:
        return False
