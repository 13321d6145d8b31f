r"""Unitary recurrent network (uRNN).

Arjovsky, Shah & Bengio, "Unitary Evolution Recurrent Neural Networks", ICML 2016. A complex
hidden state ``h_t`` in C^n evolves by a unitary matrix built from cheap unitary factors,

    W = D3 R2 F^{-1} D2 Pi R1 F D1,
    h_t = modReLU(W h_{t-1} + V x_t),      y = U [Re h_T; Im h_T] + c   (or y_t from every h_t),

with ``D_k = diag(exp(i theta_k))`` (learned phases), ``R_k = I - 2 v_k v_k^* / ||v_k||^2`` (complex
reflections, learned ``v_k``), ``Pi`` a fixed random permutation and ``F`` the unitary discrete
Fourier transform (``torch.fft`` with ``norm="ortho"``). Applying W costs O(n log n) and W stays
unitary for any parameter values, so ``||W h|| = ||h||`` through training. The nonlinearity

    modReLU(z) = (|z| + b) z / |z|  if |z| + b >= 0,  else 0     (b real, one per unit)

keeps the phase and thresholds the modulus. Input and output maps are real as in the paper:
``V x_t`` is a real linear map to ``2n`` numbers read as real and imaginary parts, the read-out a
real linear map of the ``2n`` real and imaginary parts. Initialization as in the paper's code:
phases uniform in [-pi, pi], reflection vectors uniform in [-1, 1] (real and imaginary parts),
``V`` and ``U`` Glorot-uniform, ``b = 0``, a learned initial state uniform in
``[-sqrt(3 / 2n), sqrt(3 / 2n)]``. All parameters are real tensors (any optimizer applies).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geomopt.nn.relu_rnn import OUTPUTS, _check_sizes


def mod_relu(z: Tensor, bias: Tensor) -> Tensor:
    """``modReLU(z) = relu(|z| + b) z / |z|`` elementwise (0 where ``z = 0``); ``bias`` real, broadcast."""
    mag = z.abs()
    # the phase z / |z| as real divisions of (Re z, Im z) by |z| (complex division and torch.sgn lose
    # it, NaN, for subnormal moduli); dividing by 1 where z = 0 keeps it 0
    phase = torch.view_as_complex(torch.view_as_real(z) / torch.where(mag > 0, mag, 1.0).unsqueeze(-1))
    return phase * torch.relu(mag + bias)


class UnitaryRNN(nn.Module):
    """The uRNN of Arjovsky et al. (2016), batch-first, with a real read-out; interface of
    :class:`geomopt.nn.relu_rnn.ReLURNN`.

    Args:
        input_size: d_in, features per step (or the vocabulary size for token inputs ``(batch, T)``).
        hidden_size: n, complex hidden units.
        output_size: d_out.
        output: ``"last"`` (``(batch, d_out)`` from h_T) or ``"all"`` (``(batch, T, d_out)``).
        seed: seed of the initialization and of the permutation.
        seq_len: the training sequence length, if known (informational, as for ``ReLURNN``).
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int, *, output: str = "last", seed: int = 0,
                 seq_len: int | None = None):
        super().__init__()
        _check_sizes("UnitaryRNN", input_size, hidden_size, output_size)
        if output not in OUTPUTS:
            raise ValueError(f"UnitaryRNN: output must be one of {OUTPUTS}, got {output!r}")
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, output_size
        self.output_mode, self.seq_len = output, seq_len
        n = hidden_size
        self.input = nn.Linear(input_size, 2 * n, bias=False)  # rows :n real parts, n: imaginary parts
        self.theta = nn.Parameter(torch.empty(3, n))  # phases of D1, D2, D3
        self.reflection = nn.Parameter(torch.empty(2, 2, n))  # v1, v2: (real, imaginary) parts
        self.bias = nn.Parameter(torch.empty(n))  # modReLU thresholds
        self.h0 = nn.Parameter(torch.empty(2, n))  # initial state: real, imaginary parts
        self.output = nn.Linear(2 * n, output_size)
        self.register_buffer("permutation", torch.empty(n, dtype=torch.long))
        self.reset_parameters(seed)

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        n = self.hidden_size
        self.theta.uniform_(-math.pi, math.pi, generator=g)
        self.reflection.uniform_(-1.0, 1.0, generator=g)
        self.bias.zero_()
        bound = math.sqrt(3.0 / (2 * n))
        self.h0.uniform_(-bound, bound, generator=g)
        for lin in (self.input, self.output):
            fan_out, fan_in = lin.weight.shape
            lim = math.sqrt(6.0 / (fan_in + fan_out))
            lin.weight.uniform_(-lim, lim, generator=g)
        self.output.bias.zero_()
        self.permutation.copy_(torch.randperm(n, generator=g))

    def extra_repr(self) -> str:
        return f"output={self.output_mode!r}, seq_len={self.seq_len}"

    def _factors(self) -> tuple[Tensor, Tensor, Tensor]:
        """``exp(i theta)`` of D1, D2, D3 ``(3, n)``, the conjugated reflection vectors ``v^*`` and
        ``2 v / ||v||^2`` ``(2, n)`` (once per sequence)."""
        phases = torch.polar(torch.ones_like(self.theta), self.theta)
        v = torch.complex(self.reflection[:, 0], self.reflection[:, 1])
        scaled = v * (2.0 / (self.reflection ** 2).sum((1, 2))).unsqueeze(1)
        return phases, torch.complex(self.reflection[:, 0], -self.reflection[:, 1]), scaled

    def apply_recurrent(self, h: Tensor, factors: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
        """``W h`` for each row ``h`` of a complex ``(batch, n)`` tensor (``factors``: from ``_factors()``,
        computed once per sequence)."""
        phases, v_conj, v_scaled = self._factors() if factors is None else factors
        h = torch.fft.fft(h * phases[0], norm="ortho")
        h = torch.addr(h, h @ v_conj[0], v_scaled[0], alpha=-1)  # R1 h = h - 2 v (v^* h) / ||v||^2
        h = torch.fft.ifft(h[:, self.permutation] * phases[1], norm="ortho")
        h = torch.addr(h, h @ v_conj[1], v_scaled[1], alpha=-1)
        return h * phases[2]

    def recurrent_matrix(self) -> Tensor:
        """The dense complex ``(n, n)`` recurrent matrix W (the operator applied to the identity)."""
        eye = torch.eye(self.hidden_size, dtype=self.theta.dtype)
        return self.apply_recurrent(torch.complex(eye, torch.zeros_like(eye))).t()

    def input_projection(self, x: Tensor) -> Tensor:
        """``V x_t`` for every step, complex and time-major ``(T, batch, n)``."""
        if not x.is_floating_point():
            if x.dim() != 2:
                raise ValueError(f"UnitaryRNN: token input must have shape (batch, T), got {tuple(x.shape)}")
            u = F.embedding(x.t(), self.input.weight.t())
        else:
            if x.dim() != 3 or x.shape[-1] != self.input_size:
                raise ValueError(f"UnitaryRNN: input must have shape (batch, T, {self.input_size}) (batch-first), "
                                 f"got {tuple(x.shape)}")
            u = F.linear(x.transpose(0, 1), self.input.weight)
        if u.shape[0] == 0:
            raise ValueError("UnitaryRNN: the input has no time steps")
        n = self.hidden_size
        return torch.complex(u[..., :n], u[..., n:])

    def hidden_states(self, x: Tensor) -> Tensor:
        """All complex hidden states ``(T, batch, n)``, time-major (h_1 .. h_T)."""
        steps = self.input_projection(x).unbind(0)
        factors = self._factors()
        h = torch.complex(self.h0[0], self.h0[1]).expand(steps[0].shape[0], -1)
        hs = []
        for u_t in steps:
            h = mod_relu(self.apply_recurrent(h, factors) + u_t, self.bias)
            hs.append(h)
        return torch.stack(hs)

    def forward(self, x: Tensor) -> Tensor:
        hs = self.hidden_states(x)
        if self.output_mode == "last":
            return self.output(torch.cat([hs[-1].real, hs[-1].imag], -1))
        return self.output(torch.cat([hs.real, hs.imag], -1)).transpose(0, 1)
