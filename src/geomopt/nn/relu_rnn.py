r"""Plain ReLU recurrent networks for long-term dependencies, and an LSTM baseline.

A one-layer ReLU RNN (Elman network) on a batch-first input ``x`` of shape ``(batch, T, d_in)``::

    h_0 = 0,   h_t = relu(W_in x_t + b + W_rec h_{t-1}),   y = W_out h_T + b_out   (many-to-one)
                                                          y_t = W_out h_t + b_out   (many-to-many)

Parameters: ``input`` (Linear d_in -> n, weight W_in and the hidden bias b), ``recurrent``
(Linear n -> n, no bias) and ``output`` (Linear n -> d_out). This is ``torch.nn.RNN(nonlinearity=
'relu')`` with ``bias_ih + bias_hh = b`` plus a linear read-out.

Initializations of the recurrent matrix (the input and output weights are N(0, 1/fan_in) except for
``irnn-le``, biases 0):

- ``"irnn"``: identity (Le, Jaitly & Hinton 2015, "A simple way to initialize recurrent networks of
  rectified linear units");
- ``"np-rnn"``: normalized positive definite, ``W_rec = (A + I) / lambda_max(A + I)`` with
  ``A = R^T R / n``, ``R`` standard Gaussian (Talathi & Vattikuti 2015, "Improving performance of
  recurrent neural network with ReLU nonlinearity"): all eigenvalues in (0, 1], the largest 1;
- ``"orthogonal"``: a Haar-random orthogonal matrix (QR of a Gaussian, signs fixed);
- ``"gaussian"``: entries N(0, 1/n).
- ``"irnn-le"``: identity recurrence with the input and output weights U[-0.01, 0.01] (biases 0): the
  protocol of Le et al. (2015) that Neyshabur et al. (2016) follow for IRNN and RNN-Path.

The forward pass computes the input projection of all T steps in one matmul and then runs one
``addmm`` and one ``relu`` per step on contiguous ``(batch, n)`` slices: no other Python work per
step. Integer inputs of shape ``(batch, T)`` are token indices: ``W_in x_t`` is then the column of
W_in for that token (exactly the one-hot product, without building one-hot vectors), which is how
character-level language models feed the network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

RNN_INITS = ("irnn", "np-rnn", "orthogonal", "gaussian", "irnn-le")
# "irnn-le": the non-recurrent weights are U[-LE_RANGE, LE_RANGE] (Le et al. 2015, as used by Neyshabur et al. 2016)
LE_RANGE = 0.01
OUTPUTS = ("last", "all")


def _check_sizes(where: str, input_size: int, hidden_size: int, output_size: int) -> None:
    for name, v in (("input_size", input_size), ("hidden_size", hidden_size), ("output_size", output_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{where}: {name} must be a positive integer, got {v!r}")


@torch.no_grad()
def recurrent_init(n: int, init: str, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> Tensor:
    """An ``(n, n)`` recurrent matrix for one of ``RNN_INITS`` (see the module docstring)."""
    if init in ("irnn", "irnn-le"):
        return torch.eye(n, dtype=dtype)
    if init == "np-rnn":
        r = torch.randn(n, n, generator=generator, dtype=torch.float64)
        a = r.T @ r / n + torch.eye(n, dtype=torch.float64)
        return (a / torch.linalg.eigvalsh(a).max()).to(dtype)
    if init == "orthogonal":
        q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
        return (q * torch.sign(torch.diagonal(r)).unsqueeze(0)).to(dtype)
    if init == "gaussian":
        return (torch.randn(n, n, generator=generator, dtype=torch.float64) / math.sqrt(n)).to(dtype)
    raise ValueError(f"unknown RNN init {init!r}; choose one of {RNN_INITS}")


class ReLURNN(nn.Module):
    """One-layer ReLU RNN with a linear read-out, batch-first, any sequence length.

    Args:
        input_size: d_in, features per step (or the vocabulary size for token inputs).
        hidden_size: n, hidden units (100 in the Path-SGD RNN paper).
        output_size: d_out, outputs (classes, or 1 for the adding problem).
        output: ``"last"`` (many-to-one: ``(batch, d_out)`` from h_T) or ``"all"`` (many-to-many:
            ``(batch, T, d_out)``).
        init: one of ``RNN_INITS``.
        seed: seed of the initialization.
        seq_len: the training sequence length, if known (Path-SGD's scales depend on it;
            :class:`geomopt.optim.PathSGD` reads it from here unless given ``seq_len=``).

    Shapes:
        ``x``: float ``(batch, T, d_in)``, or integer token indices ``(batch, T)`` in ``[0, d_in)``.

    Raises:
        ValueError: bad sizes, init or output mode; at call time an input of the wrong shape.
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int, *, output: str = "last",
                 init: str = "irnn", seed: int = 0, seq_len: int | None = None):
        super().__init__()
        _check_sizes("ReLURNN", input_size, hidden_size, output_size)
        if output not in OUTPUTS:
            raise ValueError(f"ReLURNN: output must be one of {OUTPUTS}, got {output!r}")
        if init not in RNN_INITS:
            raise ValueError(f"ReLURNN: unknown init {init!r}; choose one of {RNN_INITS}")
        if seq_len is not None and (isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1):
            raise ValueError(f"ReLURNN: seq_len must be a positive integer or None, got {seq_len!r}")
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, output_size
        self.output_mode, self.init_name, self.seq_len = output, init, seq_len
        self.input = nn.Linear(input_size, hidden_size)
        self.recurrent = nn.Linear(hidden_size, hidden_size, bias=False)
        self.output = nn.Linear(hidden_size, output_size)
        self.reset_parameters(seed)

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        if self.init_name == "irnn-le":
            self.input.weight.uniform_(-LE_RANGE, LE_RANGE, generator=g)
        else:
            self.input.weight.normal_(0.0, 1.0 / math.sqrt(self.input_size), generator=g)
        self.input.bias.zero_()
        self.recurrent.weight.copy_(recurrent_init(self.hidden_size, self.init_name, g))
        if self.init_name == "irnn-le":
            self.output.weight.uniform_(-LE_RANGE, LE_RANGE, generator=g)
        else:
            self.output.weight.normal_(0.0, 1.0 / math.sqrt(self.hidden_size), generator=g)
        self.output.bias.zero_()

    def extra_repr(self) -> str:
        return f"output={self.output_mode!r}, init={self.init_name!r}, seq_len={self.seq_len}"

    def input_projection(self, x: Tensor) -> Tensor:
        """``W_in x_t + b`` for every step, time-major: ``(T, batch, n)``, one matmul (or one gather)."""
        if not x.is_floating_point():
            if x.dim() != 2:
                raise ValueError(f"ReLURNN: token input must have shape (batch, T), got {tuple(x.shape)}")
            # column x of W_in for each token == W_in @ one_hot(x): a gather instead of a matmul
            return F.embedding(x.t(), self.input.weight.t()) + self.input.bias
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"ReLURNN: input must have shape (batch, T, {self.input_size}) (batch-first), "
                             f"got {tuple(x.shape)}")
        return F.linear(x.transpose(0, 1), self.input.weight, self.input.bias)

    def hidden_states(self, x: Tensor, h0: Tensor | None = None) -> Tensor:
        """All hidden states ``(T, batch, n)``, time-major (h_1 .. h_T)."""
        return torch.stack(self._run(x, h0, keep=True))

    def _run(self, x: Tensor, h0: Tensor | None, keep: bool) -> list[Tensor]:
        # unbind (not u[t]): its backward stacks the T slices once, where T selects would each
        # scatter into a zero tensor of u's full size (quadratic in T)
        steps = self.input_projection(x).unbind(0)
        if not steps:
            raise ValueError("ReLURNN: the input has no time steps")
        w_rec_t = self.recurrent.weight.t()
        h = torch.relu(steps[0]) if h0 is None else torch.relu(torch.addmm(steps[0], h0, w_rec_t))
        hs = [h]
        for u_t in steps[1:]:
            h = torch.relu(torch.addmm(u_t, h, w_rec_t))
            if keep:
                hs.append(h)
        return hs if keep else [h]

    def forward(self, x: Tensor) -> Tensor:
        if self.output_mode == "last":
            return self.output(self._run(x, None, keep=False)[0])
        return self.output(self.hidden_states(x)).transpose(0, 1)


class LSTMBaseline(nn.Module):
    """``torch.nn.LSTM`` (one layer, batch-first) with a linear read-out, the interface of :class:`ReLURNN`.

    The forget-gate bias starts at 1 (Jozefowicz et al. 2015); the rest is PyTorch's default
    initialization (``seed`` makes it reproducible). Token inputs ``(batch, T)`` are one-hot encoded.
    Not positively homogeneous: :class:`geomopt.optim.PathSGD` rejects it (train it with SGD or Adam).
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int, *, output: str = "last",
                 seed: int = 0, seq_len: int | None = None):
        super().__init__()
        _check_sizes("LSTMBaseline", input_size, hidden_size, output_size)
        if output not in OUTPUTS:
            raise ValueError(f"LSTMBaseline: output must be one of {OUTPUTS}, got {output!r}")
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, output_size
        self.output_mode, self.seq_len = output, seq_len
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
            self.output = nn.Linear(hidden_size, output_size)
        with torch.no_grad():
            for name in ("bias_ih_l0", "bias_hh_l0"):
                getattr(self.lstm, name)[hidden_size:2 * hidden_size].fill_(0.5)  # forget gates: 0.5 + 0.5 = 1

    def forward(self, x: Tensor) -> Tensor:
        if not x.is_floating_point():
            x = F.one_hot(x, self.input_size).to(self.output.weight.dtype)
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"LSTMBaseline: input must have shape (batch, T, {self.input_size}), got {tuple(x.shape)}")
        hs, _ = self.lstm(x)
        return self.output(hs[:, -1] if self.output_mode == "last" else hs)


def sequence_sizes(input_shape: Sequence[int]) -> tuple[int, int]:
    """``(T, d_in)`` of a per-example sequence shape ``(T, d_in)``."""
    shape = tuple(input_shape)
    if len(shape) != 2:
        raise ValueError(f"a recurrent model needs sequence data of per-example shape (T, features), got {shape}; "
                         "use a sequence dataset (adding, copy, seq-digits, seq-mnist1d, seq-mnist, chars, ...)")
    return int(shape[0]), int(shape[1])
