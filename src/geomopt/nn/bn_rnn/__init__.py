r"""Batch-normalized recurrent networks.

Cooijmans, Ballas, Laurent, Gulcehre & Courville, "Recurrent Batch Normalization", ICLR 2017
(arXiv 2016). BN-LSTM, for every time step t:

    (f, i, o, g) = BN(W_h h_{t-1}; gamma_h, 0) + BN(W_x x_t; gamma_x, 0) + b
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(BN(c_t; gamma_c, beta_c))

with separate statistics per time step t < T_max (later steps reuse those of T_max - 1) and
gamma initialized to 0.1. Laurent, Pereyra, Brakel, Zhang & Bengio, "Batch Normalized Recurrent
Neural Networks", ICASSP 2016, normalize only the input-to-hidden term,

    h_t = phi(W_h h_{t-1} + BN(W_x x_t) + b),

with frame-wise (per step) or sequence-wise (over all steps) statistics.

All modules are batch-first, multi-layer, and take optional ``lengths`` for variable-length
batches: statistics are computed over the valid entries of each step only, and the state of a
sequence stops changing after its last step.

Modules by concept:

- ``norm``: :class:`StepBatchNorm`, per-step statistics, and the per-step plan the fused layers read;
- ``modules``: :class:`BNLSTM`, :class:`BNRNN`, :class:`BNInputLSTM`, :class:`BNSequenceModel`;
- ``fused``: unmasked batches run each layer as one autograd Function with a hand-written backward
  (``_FusedLSTMLayer``, ``_FusedRNNLayer``: per step one matmul, ``native_batch_norm`` and a few
  elementwise kernels; on CPU the BN-LSTM's elementwise step work runs in the C kernels of
  :mod:`geomopt.nn._gate_kernels` where a C compiler is available);
- ``reference``: masked batches and ``fused=False`` run the plain step-by-step loop, the reference the
  fused layers are tested against.
"""

from geomopt.nn.bn_rnn.modules import BNLSTM, BNRNN, BNInputLSTM, BNSequenceModel
from geomopt.nn.bn_rnn.norm import StepBatchNorm

__all__ = ["BNLSTM", "BNRNN", "BNInputLSTM", "BNSequenceModel", "StepBatchNorm"]

