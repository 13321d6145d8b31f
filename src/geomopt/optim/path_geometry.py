r"""The path-norm geometry of Path-SGD: the steepest-descent direction ``g / gamma`` of the path regularizer.

Neyshabur, Salakhutdinov & Srebro, "Path-SGD: Path-Normalized Optimization in Deep Neural Networks",
NeurIPS 2015; recurrent nets: Neyshabur, Wu, Salakhutdinov & Srebro, NeurIPS 2016. The norm is the
diagonal quadratic approximation of the path regularizer ``pi_2(w) = sum_paths prod_{e in path} w_e^2``:

    ||d||^2 = sum_e gamma_e(w) d_e^2,   gamma_e(w) = d pi_2(w) / d(w_e^2) = gamma_in(u) gamma_out(v)

for an edge ``e = u -> v`` (a bias of unit ``v``: ``gamma_out(v)``), so the direction is
``d_e = g_e / max(gamma_e, eps)`` (a rank-one ``gamma = gamma_out (x) gamma_in`` floored per factor at
``sqrt(eps)``). ``gamma`` is that of the current weights (:class:`geomopt.geometry.PathScales`: one
batch-1 pass through the squared network; :class:`geomopt.geometry.RNNPathScales`: kappa1, or
kappa1 + kappa2 with ``include_kappa2``, for a ReLU RNN), never accumulated: the geometry has no
statistics to save. For a Linear chain the next step's scales can be computed in the update pass itself
(:meth:`PathGeometry.precompute`), and are reused unless a weight changed in between.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from geomopt.checks import check_int, check_number
from geomopt.geometry.path_norm import BlockVisitor, PathScales, RankOneScale, UnsupportedModuleError
from geomopt.geometry.rnn_path import RNNPathScales, is_relu_rnn
from geomopt.optim.geometry import Block, Geometry


def floored(scale: Tensor | RankOneScale, eps: float) -> Tensor:
    """Dense gamma floored as the update uses it: at eps, or each rank-one factor at sqrt(eps)."""
    if isinstance(scale, RankOneScale):
        floor = eps ** 0.5
        return torch.outer(scale.out_scale.clamp_min(floor), scale.in_scale.clamp_min(floor))
    return scale.clamp_min(eps)


def first_step_ratio(grads: Sequence[Tensor], scales: Sequence[Tensor | RankOneScale], eps: float) -> float:
    """``(sum_p ||g_p|| / sum_p ||g_p / gamma_p||^2)^(1/2)`` over the parameters (Frobenius norms).

    The first author's public Path-SGD code multiplies the path-normalized direction by this number,
    computed once at the first step and then kept, so that one learning-rate grid serves SGD and
    Path-SGD. ``gamma`` is floored as in :func:`geomopt.optim.path_sgd_`. Raises ``ValueError`` when it is
    not finite and positive (a zero or non-finite first gradient).
    """
    sgd_norm, path_norm2 = 0.0, 0.0
    for g, scale in zip(grads, scales):
        d = g / floored(scale, eps)
        sgd_norm += float(g.double().norm())
        path_norm2 += float(d.double().norm()) ** 2
    ratio = (sgd_norm / path_norm2) ** 0.5 if path_norm2 > 0 else float("nan")
    if not (ratio > 0 and ratio < float("inf")):
        raise ValueError(f"PathSGD(normalize='first-step'): the first-step ratio is {ratio} (sum ||g|| = {sgd_norm}, "
                         f"sum ||g/gamma||^2 = {path_norm2}); the first gradient must be finite and non-zero")
    return ratio


def _recurrent_cells(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.RNNBase, nn.RNNCellBase))]


def build_scales(model: nn.Module, p: float, input_shape: Sequence[int] | None, seq_len: int | None,
                 include_kappa2: bool) -> PathScales | RNNPathScales:
    """The scales: :class:`RNNPathScales` for a ReLU RNN, :class:`PathScales` otherwise."""
    cells = _recurrent_cells(model)
    if cells:
        name, cell = cells[0]
        kind = type(cell).__name__
        if isinstance(cell, (nn.RNN, nn.RNNCell)):
            kind += f" (nonlinearity={cell.nonlinearity!r})"
        raise UnsupportedModuleError(
            f"PathSGD: module '{name or '<root>'}' is a {kind} recurrent cell, not a ReLU RNN with the layout of "
            "geomopt.nn.ReLURNN. Path-SGD needs a positively homogeneous network: LSTM, GRU and tanh RNNs are not; "
            "use geomopt.nn.ReLURNN (for torch.nn.RNN(nonlinearity='relu'), copy its weights into one) or train "
            "this model with sgd/adam.")
    if is_relu_rnn(model):
        if p != 2.0:
            raise ValueError(f"PathSGD: RNN path scales are implemented for p = 2 only, got p={p}")
        T = seq_len if seq_len is not None else getattr(model, "seq_len", None)
        if T is None:
            raise ValueError(f"PathSGD: {type(model).__name__} is a ReLU RNN and its path scales depend on the "
                             "sequence length: pass seq_len=T (or build the model with seq_len=T)")
        return RNNPathScales(model, T, include_kappa2=include_kappa2)
    if seq_len is not None or include_kappa2:
        raise ValueError(f"PathSGD: seq_len/include_kappa2 apply to ReLU RNNs only; {type(model).__name__} is not "
                         "one (see geomopt.geometry.is_relu_rnn)")
    return PathScales(model, p=p, input_shape=input_shape)


class PathGeometry(Geometry):
    """The path-norm geometry: one block per tensor, direction ``g / max(gamma, eps)`` (``eps`` per group).

    Args:
        model: the network (Linear/Conv layers, ReLU, pooling, flatten, dropout, residual sums; or a
            :class:`geomopt.nn.ReLURNN`).
        params: the parameters to precondition; every one must be the model's.
        p, input_shape, seq_len, include_kappa2: as in :class:`geomopt.optim.PathSGD`.

    Attributes:
        scales: the :class:`PathScales` / :class:`RNNPathScales` object (may be replaced).
        gamma: ``{parameter name: scale}`` of the current step (set by :meth:`update`).
    """

    name = "PathSGD"

    def __init__(self, model: nn.Module, params: Sequence[Tensor], *, p: float = 2.0,
                 input_shape: Sequence[int] | None = None, seq_len: int | None = None, include_kappa2: bool = False):
        check_number("PathSGD: option", "p", p, low=0, low_open=True)
        if seq_len is not None:
            check_int("PathSGD: option", "seq_len", seq_len, low=1)
        names = {param: name for name, param in model.named_parameters()}
        super().__init__(params, names)
        self.scales = build_scales(model, p, input_shape, seq_len, include_kappa2)
        for param in self.params:
            if param not in names:
                raise ValueError(f"PathSGD: a parameter of shape {tuple(param.shape)} is not a parameter of "
                                 f"{type(model).__name__}; path scales are defined by the model")
        self.gamma: dict[str, Tensor | RankOneScale] = {}
        self._next: tuple[PathScales | RNNPathScales, dict[str, Tensor | RankOneScale], tuple] | None = None

    @property
    def fused(self) -> bool:
        """Whether the scales can be computed inside the update pass (a Linear chain's rank-one scales)."""
        return isinstance(self.scales, PathScales) and self.scales.factored

    def invalidate(self) -> None:
        """Forget the scales precomputed for the next step."""
        self._next = None

    def _weights_version(self) -> tuple[tuple[int, int], ...]:
        return tuple((p._version, p.data_ptr()) for p in self.scales.model.parameters())

    def update(self, step: int, groups: Sequence[dict[str, Any]] = ()) -> None:
        """The scales of the current weights: those of :meth:`precompute` if no weight has changed since
        (and the scales object is the same), else computed now."""
        if self._next is not None:
            scales, gamma, version = self._next
            if scales is self.scales and version == self._weights_version():
                self.gamma = gamma
                return
        self.gamma = self.scales.compute()

    def precompute(self, visitors: dict[str, BlockVisitor]) -> None:
        """Compute the next step's scales now, calling ``visitors[name](r0, r1)`` on every row block of the
        named weights while the pass reads them (:meth:`PathScales.compute`)."""
        self._next = (self.scales, self.scales.compute(visitors), self._weights_version())

    def scale(self, param: Tensor) -> Tensor | RankOneScale:
        """``gamma`` of ``param`` in the current step."""
        return self.gamma[self.names[param]]

    def direction(self, block: Block, grad: Tensor, group: dict[str, Any]) -> Tensor:
        return grad / (floored(self.scale(block.key), group.get("eps", 1e-12)))
