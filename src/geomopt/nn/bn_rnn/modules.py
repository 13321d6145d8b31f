"""The batch-normalized recurrent modules: :class:`BNLSTM`, :class:`BNRNN`, :class:`BNInputLSTM` and the
:class:`BNSequenceModel` the training engine builds. Each layer runs fused (:mod:`geomopt.nn.bn_rnn.fused`) on
unmasked batches, else step by step (:mod:`geomopt.nn.bn_rnn.reference`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from geomopt.nn.bn_rnn.fused import _fused_lstm_layer, _fused_rnn_layer
from geomopt.nn.bn_rnn.norm import StepBatchNorm
from geomopt.nn.bn_rnn.reference import _check_input, _lstm_layer_reference, _mask, _rnn_layer_reference


def _lstm_forward(cells: nn.ModuleList, hidden: int, x: Tensor, lengths: Tensor | None,
                  state: tuple[Tensor, Tensor] | None, fused: bool, compile: bool = False,
                  native: bool = True) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Multi-layer LSTM over time; a cell's ``bn_h`` / ``bn_c`` (per-step BN of W_h h and of c_t)
    may be None (BN-input LSTM), its ``bn_x`` normalizes W_x x for all steps at once. Without
    ``lengths`` (and with more than one sequence in training) each layer runs fused
    (:class:`_FusedLSTMLayer`) unless ``fused=False``; otherwise step by step (the reference)."""
    batch, steps, _ = x.shape
    mask = _mask(lengths, batch, steps, x.device)
    if fused and mask is None and (batch > 1 or not cells.training):
        hs, cs = [], []
        for layer, cell in enumerate(cells):
            h, c = (x.new_zeros(batch, hidden), x.new_zeros(batch, hidden)) if state is None else \
                (state[0][layer], state[1][layer])
            x, h, c = _fused_lstm_layer(cell, x, h, c, compile, native)
            hs.append(h)
            cs.append(c)
        return x, (torch.stack(hs), torch.stack(cs))
    hs, cs = [], []
    for layer, cell in enumerate(cells):
        h, c = (x.new_zeros(batch, hidden), x.new_zeros(batch, hidden)) if state is None else \
            (state[0][layer], state[1][layer])
        x, h, c = _lstm_layer_reference(cell, x, h, c, mask)
        hs.append(h)
        cs.append(c)
    return x, (torch.stack(hs), torch.stack(cs))


def _lstm_cell(fan_in: int, hidden_size: int) -> nn.Module:
    """LSTM weights ``weight_x (4H, fan_in)``, ``weight_h (4H, H)``, ``bias (4H,)`` with the paper code's init:
    orthogonal input weights, identity-like recurrent weights (an orthogonal block per gate), forget-gate
    bias 1 (gate order i, f, g, o)."""
    cell = nn.Module()
    cell.weight_x = nn.Parameter(torch.empty(4 * hidden_size, fan_in))
    cell.weight_h = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
    cell.bias = nn.Parameter(torch.zeros(4 * hidden_size))
    nn.init.orthogonal_(cell.weight_x)
    with torch.no_grad():
        for k in range(4):
            nn.init.orthogonal_(cell.weight_h[k * hidden_size:(k + 1) * hidden_size])
        cell.bias[hidden_size:2 * hidden_size].fill_(1.0)
    return cell


class BNLSTM(nn.Module):
    """Batch-normalized LSTM (Cooijmans et al.), batch-first, multi-layer.

    Args:
        input_size, hidden_size, num_layers: as in ``nn.LSTM``.
        max_steps: T_max, the number of time steps with their own BN statistics.
        reuse_last: steps beyond T_max reuse the statistics of the last one (else an error).
        gamma: initial BN scale of the h, x and c terms (0.1 in the paper).
        momentum: running-average momentum of the population statistics.
        fused: run unmasked batches by the fused recurrence (a hand-written backward, a few kernels
            per step); False: the plain step-by-step loop (the reference; always used with ``lengths``).
        compile: in training, run each fused step as two ``torch.compile``-d functions (forward and
            backward, one generated kernel each); compiled once per process (about a minute or more on
            a loaded CPU), without a C++ compiler they run eagerly. See benchmarks/RESULTS.md for when it pays.
        native: on CPU, run the elementwise work of each fused step and the batch norm of ``c_t`` in C
            kernels (:mod:`geomopt.nn._gate_kernels`, compiled once per process with the system's C
            compiler, well under a second; ~20-30% faster per training step at hidden 100); without a
            compiler, or False, the same step as ATen calls (same numbers up to rounding).

    Forward: ``output, (h_n, c_n) = bnlstm(x, lengths=None, state=None)`` with ``x`` of shape
    ``(batch, T, input_size)``, ``output`` ``(batch, T, hidden)`` (zeros after each sequence's end),
    ``h_n, c_n`` ``(num_layers, batch, hidden)`` at each sequence's last valid step.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *, max_steps: int = 784,
                 reuse_last: bool = True, gamma: float = 0.1, momentum: float = 0.1, missing_stats: str = "error",
                 fused: bool = True, compile: bool = False, native: bool = True):
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.fused, self.compile, self.native = fused, compile, native
        self.max_steps = max_steps
        bn = dict(reuse_last=reuse_last, momentum=momentum, missing_stats=missing_stats)
        self.cells = nn.ModuleList()
        for layer in range(num_layers):
            fan_in = input_size if layer == 0 else hidden_size
            cell = _lstm_cell(fan_in, hidden_size)
            cell.bn_x = StepBatchNorm(4 * hidden_size, max_steps, gamma=gamma, beta=False, **bn)
            cell.bn_h = StepBatchNorm(4 * hidden_size, max_steps, gamma=gamma, beta=False, **bn)
            cell.bn_c = StepBatchNorm(hidden_size, max_steps, gamma=gamma, beta=True, **bn)
            self.cells.append(cell)

    def forward(self, x: Tensor, lengths: Tensor | None = None,
                state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        _check_input("BNLSTM", x, self.input_size)
        return _lstm_forward(self.cells, self.hidden_size, x, lengths, state, self.fused, self.compile, self.native)


class BNRNN(nn.Module):
    """Batch-normalized vanilla RNN, batch-first, multi-layer.

    ``h_t = phi(BN_h(W_h h_{t-1}) + BN_x(W_x x_t) + b)`` (recurrent BN, Cooijmans et al.) or,
    with ``recurrent_bn=False``, ``h_t = phi(W_h h_{t-1} + BN_x(W_x x_t) + b)`` (Laurent et al.).

    Args:
        nonlinearity: ``"relu"`` or ``"tanh"``.
        stats: ``"frame"`` (BN_x statistics per time step) or ``"sequence"`` (one set over all
            steps and the batch).
        max_steps, reuse_last, gamma, momentum, fused: as in :class:`BNLSTM` (fused: :class:`_FusedRNNLayer`).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *, nonlinearity: str = "relu",
                 recurrent_bn: bool = True, stats: str = "frame", max_steps: int = 784, reuse_last: bool = True,
                 gamma: float = 0.1, momentum: float = 0.1, missing_stats: str = "error", fused: bool = True):
        super().__init__()
        self.fused = fused
        bn = dict(reuse_last=reuse_last, momentum=momentum, missing_stats=missing_stats)
        if nonlinearity not in ("relu", "tanh"):
            raise ValueError(f"BNRNN nonlinearity must be 'relu' or 'tanh', got {nonlinearity!r}")
        if stats not in ("frame", "sequence"):
            raise ValueError(f"BNRNN stats must be 'frame' or 'sequence', got {stats!r}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.phi = torch.relu if nonlinearity == "relu" else torch.tanh
        self.cells = nn.ModuleList()
        for layer in range(num_layers):
            fan_in = input_size if layer == 0 else hidden_size
            cell = nn.Module()
            cell.weight_x = nn.Parameter(torch.empty(hidden_size, fan_in))
            cell.weight_h = nn.Parameter(torch.eye(hidden_size) if nonlinearity == "relu" else torch.empty(hidden_size,
                                                                                                      hidden_size))
            cell.bias = nn.Parameter(torch.zeros(hidden_size))
            nn.init.orthogonal_(cell.weight_x)
            if nonlinearity == "tanh":
                nn.init.orthogonal_(cell.weight_h)
            cell.bn_x = StepBatchNorm(hidden_size, max_steps, gamma=gamma, beta=False,
                                      sequence_wise=stats == "sequence", **bn)
            cell.bn_h = StepBatchNorm(hidden_size, max_steps, gamma=gamma, beta=False, **bn) if recurrent_bn else None
            self.cells.append(cell)

    def forward(self, x: Tensor, lengths: Tensor | None = None,
                state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_input("BNRNN", x, self.input_size)
        batch, steps, _ = x.shape
        mask = _mask(lengths, batch, steps, x.device)
        fused = self.fused and mask is None and (batch > 1 or not self.training)
        hs = []
        for layer, cell in enumerate(self.cells):
            h = x.new_zeros(batch, self.hidden_size) if state is None else state[layer]
            x, h = _fused_rnn_layer(cell, x, h, self.phi is torch.relu) if fused else \
                _rnn_layer_reference(cell, self.phi, x, h, mask)
            hs.append(h)
        return x, torch.stack(hs)


class BNInputLSTM(nn.Module):
    """LSTM with batch normalization of the input-to-hidden term only (Laurent et al. 2016):
    ``gates = W_h h_{t-1} + BN(W_x x_t) + b``, frame-wise or sequence-wise statistics."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *, stats: str = "frame",
                 max_steps: int = 784, reuse_last: bool = True, gamma: float = 0.1, momentum: float = 0.1,
                 missing_stats: str = "error", fused: bool = True):
        super().__init__()
        if stats not in ("frame", "sequence"):
            raise ValueError(f"BNInputLSTM stats must be 'frame' or 'sequence', got {stats!r}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.fused = fused
        self.cells = nn.ModuleList()
        for layer in range(num_layers):
            fan_in = input_size if layer == 0 else hidden_size
            cell = _lstm_cell(fan_in, hidden_size)
            cell.bn_x = StepBatchNorm(4 * hidden_size, max_steps, gamma=gamma, beta=False, reuse_last=reuse_last,
                                      sequence_wise=stats == "sequence", momentum=momentum,
                                      missing_stats=missing_stats)
            cell.bn_h = cell.bn_c = None  # only the input-to-hidden term is normalized
            self.cells.append(cell)

    def forward(self, x: Tensor, lengths: Tensor | None = None,
                state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        _check_input("BNInputLSTM", x, self.input_size)
        return _lstm_forward(self.cells, self.hidden_size, x, lengths, state, self.fused)


class BNSequenceModel(nn.Module):
    """A batch-normalized recurrent core with a linear read-out, for the training engine.

    Same interface as :class:`geomopt.nn.relu_rnn.ReLURNN`: input ``(batch, T, input_size)``
    (token inputs ``(batch, T)`` are one-hot encoded); ``output="last"`` gives ``(batch, d_out)``
    from the last state, ``"all"`` gives ``(batch, T, d_out)``.

    Args:
        core: ``"bnlstm"`` (:class:`BNLSTM`), ``"bnrnn"`` (:class:`BNRNN`, ReLU, recurrent BN) or
            ``"bninput-lstm"`` (:class:`BNInputLSTM`, frame-wise).
        max_steps: T_max of the per-step statistics (default: ``seq_len``, else 784).

    Before any training step, eval mode normalizes with the batch's statistics
    (``missing_stats="batch"``), so that the engine can evaluate the untrained model.
    """

    CORES = ("bnlstm", "bnrnn", "bninput-lstm")

    def __init__(self, core: str, input_size: int, hidden_size: int, output_size: int, *, output: str = "last",
                 seed: int = 0, seq_len: int | None = None, max_steps: int | None = None):
        super().__init__()
        if core not in self.CORES:
            raise ValueError(f"BNSequenceModel: core must be one of {self.CORES}, got {core!r}")
        if output not in ("last", "all"):
            raise ValueError(f"BNSequenceModel: output must be 'last' or 'all', got {output!r}")
        self.input_size, self.output_mode, self.seq_len = input_size, output, seq_len
        steps = max_steps or seq_len or 784
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            cls = {"bnlstm": BNLSTM, "bnrnn": BNRNN, "bninput-lstm": BNInputLSTM}[core]
            self.rnn = cls(input_size, hidden_size, max_steps=steps, missing_stats="batch")
            self.output = nn.Linear(hidden_size, output_size)

    def forward(self, x: Tensor) -> Tensor:
        if not x.is_floating_point():
            x = nn.functional.one_hot(x, self.input_size).to(self.output.weight.dtype)
        hs, _ = self.rnn(x)
        return self.output(hs[:, -1] if self.output_mode == "last" else hs)
