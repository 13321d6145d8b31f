r"""The exact quadratic model of a step: the automatic step size and Levenberg-Marquardt damping.

Martens & Grosse, "Optimizing Neural Networks with Kronecker-factored Approximate Curvature", ICML 2015,
sections 6.5 and 7. On the step's batch, with ``F`` the exact generalized Gauss-Newton matrix
``(1/N) sum_n J_n^T H_n J_n`` (the Fisher of the likelihood; their "exact F"), weight decay ``eta`` and
damping ``lambda``,

    M(delta) = grad^T delta + delta^T (F + (lambda + eta) I) delta / 2.

- Automatic step (:meth:`QuadraticModel.adaptive_deltas`): ``delta = alpha Delta + mu delta_0`` over the span
  of the new direction ``Delta = -D`` and the last update ``delta_0``, ``(alpha, mu)`` minimizing ``M``: a
  2x2 linear system (``mu = 0`` at first, and when the system is near singular or its ``mu`` is outside
  ``(-1, 1)``: then ``alpha`` minimizes ``M`` along ``Delta`` alone).
- Levenberg-Marquardt (:class:`LevenbergMarquardt`): every ``T1`` steps, ``rho = (h(theta + delta) - h(theta))
  / (M(delta) - M(0))`` (the damping left out of ``M``, as in kfac-jax's default); the damping times
  ``omega = decay^T1`` if ``rho > 3/4``, divided by it if ``rho < 1/4``.

``F`` enters only through ``v_i^T F v_j``, by one Jacobian-vector product per vector on the recorded
inputs of the batch (``torch.func.jvp``), in the recorder's isolated pass (buffers and RNG as before).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.func import functional_call

from geomopt.curvature.capture import output_hessian_gram
from geomopt.optim.kronecker_geometry import KroneckerGeometry
from geomopt.optim.step_rule import BlockStep


class QuadraticModel:
    """``M`` of a Kronecker geometry's model on the batch it recorded (the inputs, the likelihood, the
    data-parallel group)."""

    def __init__(self, geometry: KroneckerGeometry):
        self.geometry = geometry

    def tangent(self, steps: Sequence[BlockStep], mats: Sequence[Tensor],
                fallback: Sequence[tuple[Tensor, Tensor]] = ()) -> dict[str, Tensor]:
        """A parameter-space vector as ``{name: tensor}`` of every model parameter (zero where not given) from
        per-block matrices and ``(param, tensor)`` pairs."""
        geo = self.geometry
        out = {n: torch.zeros_like(p) for n, p in geo.model.named_parameters()}
        for s, mat in zip(steps, mats):
            for p, part in zip(s.block.params, s.block.from_matrix(mat)):
                out[geo.names[p]] = part
        for p, t in fallback:
            out[geo.names[p]] = t
        return out

    def gram(self, tangents: list[dict[str, Tensor]]) -> Tensor:
        """``Q_ij = v_i^T F v_j`` ``(R, R)`` on the micro-batches of this step (float64)."""
        geo = self.geometry
        r = len(tangents)
        q = torch.zeros(r, r, dtype=torch.float64)
        records = geo.recorder.records()
        if not records:
            raise RuntimeError(f"{geo.name}: the quadratic model needs this step's batch, but no forward of the "
                               "model with a backward was recorded since the last step")
        params = {n: p.detach() for n, p in geo.model.named_parameters()}
        total = 0
        with geo.recorder.isolated():
            for rec in records:
                def f(ps, rec=rec):  # buffers cloned inside: BatchNorm may update them in place
                    bufs = {n: b.clone() for n, b in geo.model.named_buffers()}
                    return functional_call(geo.model, {**ps, **bufs}, rec["args"], rec["kwargs"])
                jvs = []
                for t in tangents:
                    out, jv = torch.func.jvp(f, (params,), (t,))
                    jvs.append(jv.detach())
                q += output_hessian_gram(out.detach(), torch.stack(jvs), geo.likelihood)
                total += out.shape[0]
        q /= total
        if geo.comm is not None:  # the global batch's: count-weighted mean over the processes
            geo.comm.stage([q], total)
            geo.comm.flush()
        return q

    def adaptive_deltas(self, steps: Sequence[BlockStep], state: dict) -> tuple[list[Tensor], float, float]:
        """The automatic step: each block's ``delta`` (stored as its state's ``"update"``), ``alpha`` and ``mu``."""
        vecs = []
        for s in steps:
            prev = state[s.block.key].get("update")
            vecs.append([-s.direction] + ([prev] if prev is not None else []))
        r = min(len(v) for v in vecs)
        vecs = [v[:r] for v in vecs]
        c = self.gram([self.tangent(steps, [v[i] for v in vecs]) for i in range(r)])
        b = torch.zeros(r, dtype=torch.float64)
        for s, v in zip(steps, vecs):
            shift = s.group["damping"] + s.group["weight_decay"]
            for i in range(r):
                b[i] += float((s.grad * v[i]).sum())
                for j in range(r):
                    c[i, j] += shift * float((v[i] * v[j]).sum())
        coef = self._solve(c, b)
        r = len(coef)
        updates = []
        for s, v in zip(steps, vecs):
            delta = sum(float(coef[i]) * v[i] for i in range(r))
            state[s.block.key]["update"] = delta.clone()
            updates.append(delta)
        return updates, float(coef[0]), float(coef[1]) if r == 2 else 0.0

    def _solve(self, c: Tensor, b: Tensor) -> Tensor:
        """``(alpha, mu)`` minimizing ``b^T x + x^T c x / 2`` (or ``(alpha,)`` along the new direction alone)."""
        if not (bool(torch.isfinite(c).all()) and bool(torch.isfinite(b).all()) and float(c[0, 0]) > 0):
            raise FloatingPointError(f"{self.geometry.name}: the quadratic model is not finite (curvature "
                                     f"{c.tolist()}, slopes {b.tolist()}); raise the damping")
        if len(b) == 2 and float(torch.linalg.det(c)) > 1e-12 * float(c[0, 0] * c[1, 1]):
            coef = torch.linalg.solve(c, -b)
            if -1 < float(coef[1]) < 1:  # else a near-singular system: keep to the new direction
                return coef
        return -b[:1] / c[0, 0]

    def change(self, steps: Sequence[BlockStep], updates: Sequence[Tensor], fallback: Sequence[tuple[Tensor, Tensor]],
               group_of: dict) -> float:
        """``M(delta) - M(0) = grad^T delta + delta^T (F + eta I) delta / 2`` for the whole update (every
        parameter; ``grad`` with weight decay ``eta``); the damping is left out."""
        change = 0.5 * float(self.gram([self.tangent(steps, updates, fallback)])[0, 0])
        for s, u in zip(steps, updates):
            change += float((s.grad * u).sum()) + 0.5 * s.group["weight_decay"] * float(u.square().sum())
        for p, u in fallback:
            wd = group_of[p]["weight_decay"]
            change += float((p.grad * u).sum()) + wd * float((p * u).sum()) + 0.5 * wd * float(u.square().sum())
        return change


def _l2_change(steps: Sequence[BlockStep], updates: Sequence[Tensor], fallback: Sequence[tuple[Tensor, Tensor]],
               group_of: dict) -> float:
    """``h``'s weight-decay change ``eta (<theta, delta> + |delta|^2 / 2)`` at the old ``theta = new - delta``."""
    reg = 0.0
    for s, u in zip(steps, updates):
        if s.group["weight_decay"]:
            w = s.block.to_matrix([p.detach() for p in s.block.params]) - u
            reg += s.group["weight_decay"] * float((w * u).sum() + 0.5 * u.square().sum())
    for p, u in fallback:
        wd = group_of[p]["weight_decay"]
        if wd:
            reg += wd * float(((p - u) * u).sum() + 0.5 * u.square().sum())
    return reg


class LevenbergMarquardt:
    """The damping rule of Martens & Grosse (2015, sec. 6.5), every ``interval`` steps (their T1).

    Args:
        interval: steps between adaptations; decay: ``omega = decay ** interval``;
        min_damping, max_damping: the damping is kept in ``[min_damping, max_damping]``.
    """

    def __init__(self, interval: int, decay: float, min_damping: float, max_damping: float):
        self.interval, self.decay = int(interval), float(decay)
        self.min_damping, self.max_damping = float(min_damping), float(max_damping)

    def due(self, k: int) -> bool:
        """Whether step ``k`` ends with an adaptation."""
        return (k + 1) % self.interval == 0

    def adapt(self, model: QuadraticModel, loss: float, predicted: float, closure: Callable[[], Tensor], rng,
              steps: Sequence[BlockStep], updates: Sequence[Tensor], fallback: Sequence[tuple[Tensor, Tensor]],
              groups: Sequence[dict], group_of: dict) -> float:
        """After the update: ``closure`` evaluated again at the new parameters with the first evaluation's
        randomness ``rng`` (its gradients discarded); every group's damping adapted from ``rho``, returned.
        ``h`` includes the weight-decay term ``eta |theta|^2 / 2``."""
        reg = _l2_change(steps, updates, fallback, group_of)
        grads = {p: None if p.grad is None else p.grad.clone() for g in groups for p in g["params"]}
        with model.geometry.recorder.isolated(rng):
            try:
                with torch.enable_grad():
                    new_loss = float(torch.as_tensor(closure()).detach())
            except FloatingPointError:  # e.g. the engine's non-finite loss: as bad as a step can be
                new_loss = math.inf
        for p, g in grads.items():
            p.grad = g
        actual = new_loss - loss + reg
        rho = actual / predicted if predicted < 0 and math.isfinite(actual) else -math.inf
        omega = self.decay ** self.interval
        factor = omega if rho > 0.75 else 1 / omega if rho < 0.25 else 1.0
        for group in groups:
            group["damping"] = min(max(group["damping"] * factor, self.min_damping), self.max_damping)
        return rho
