"""Models by name, for the training engine and the command line."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from geomopt.nn.cnn import CNN
from geomopt.nn.factory import build_from_factory, is_factory_reference
from geomopt.nn.mlp import MLP
from geomopt.nn.bn_rnn import BNSequenceModel
from geomopt.nn.relu_rnn import LSTMBaseline, ReLURNN, sequence_sizes
from geomopt.nn.urnn import UnitaryRNN

MODELS = ("mlp", "cnn", "relu-rnn", "lstm", "bnlstm", "bnrnn", "urnn")


def build_model(name: str, input_shape: Sequence[int], num_outputs: int, *, widths: Sequence[int],
                bias: bool = True, dropout: float = 0.0, init: str = "kaiming", seed: int = 0,
                task: str = "classification", options: dict | None = None) -> nn.Module:
    """Build a model by name, or by a factory reference ``MODULE:FACTORY`` (:mod:`geomopt.nn.factory`:
    ``factory(input_shape, num_outputs, **options)``, imported only when trusted; ``widths``, ``bias``,
    ``dropout``, ``init`` and ``task`` are not passed to it, ``seed`` seeds torch's RNG around the call).

    ``widths`` are the hidden widths of an ``mlp`` and the conv channels of a ``cnn``.
    ``relu-rnn`` (:class:`ReLURNN`), ``lstm`` (:class:`LSTMBaseline`), ``bnlstm`` and ``bnrnn``
    (:class:`geomopt.nn.bn_rnn.BNSequenceModel`, per-step statistics up to T) and ``urnn``
    (:class:`geomopt.nn.urnn.UnitaryRNN`, n complex units) take sequence data of
    per-example shape ``(T, features)``, one hidden size ``widths=(n,)``, and output at every step
    when ``task == "sequence"`` (else from the last state). ``relu-rnn`` inits: ``irnn``,
    ``np-rnn``, ``orthogonal``, ``gaussian``; the feedforward default ``kaiming`` selects ``irnn``.
    """
    if is_factory_reference(name):
        return build_from_factory(name, input_shape, num_outputs, options or {}, seed)
    if options:
        raise ValueError(f"model options {options} are the keyword arguments of a MODULE:FACTORY model; the built-in "
                         f"{name!r} takes --widths, --bias, --dropout and --init instead")
    if name in ("relu-rnn", "lstm", "bnlstm", "bnrnn", "urnn"):
        return _recurrent(name, input_shape, num_outputs, widths, bias, dropout, init, seed, task)
    if task == "sequence":
        raise ValueError(f"model {name!r} gives one output per example; the per-step (sequence) task needs "
                         "a recurrent model (relu-rnn, lstm, bnlstm, bnrnn, urnn)")
    if name == "mlp":
        return MLP(input_shape, widths, num_outputs, bias=bias, dropout=dropout, init=init, seed=seed)
    if name == "cnn":
        return CNN(input_shape, widths, num_outputs, bias=bias, dropout=dropout, init=init, seed=seed)
    raise ValueError(f"unknown model {name!r}; choose one of {MODELS} or MODULE:FACTORY")


def _recurrent(name: str, input_shape: Sequence[int], num_outputs: int, widths: Sequence[int], bias: bool,
               dropout: float, init: str, seed: int, task: str) -> nn.Module:
    T, features = sequence_sizes(input_shape)
    if len(tuple(widths)) != 1:
        raise ValueError(f"{name} has one recurrent layer: pass one hidden size, e.g. --widths 100, got {tuple(widths)}")
    if not bias:
        raise ValueError(f"{name} always has biases; drop --bias false")
    if dropout:
        raise ValueError(f"{name} has no dropout; drop --dropout")
    output = "all" if task == "sequence" else "last"
    if name in ("bnlstm", "bnrnn"):
        if init not in ("kaiming", "torch"):
            raise ValueError(f"{name} uses its paper's initialization (orthogonal, BN gamma 0.1); drop --init {init}")
        return BNSequenceModel(name, features, widths[0], num_outputs, output=output, seed=seed, seq_len=T)
    if name == "urnn":
        if init != "kaiming":
            raise ValueError(f"urnn uses its paper's initialization (phases, reflections, Glorot input/output); "
                             f"drop --init {init}")
        return UnitaryRNN(features, widths[0], num_outputs, output=output, seed=seed, seq_len=T)
    if name == "lstm":
        if init not in ("kaiming", "torch"):
            raise ValueError(f"lstm uses PyTorch's LSTM initialization; drop --init {init}")
        return LSTMBaseline(features, widths[0], num_outputs, output=output, seed=seed, seq_len=T)
    return ReLURNN(features, widths[0], num_outputs, output=output, init="irnn" if init == "kaiming" else init,
                   seed=seed, seq_len=T)
