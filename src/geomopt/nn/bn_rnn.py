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

Implementation: unmasked batches run each layer as one autograd Function with a hand-written
backward (``_FusedLSTMLayer``, ``_FusedRNNLayer``: per step one matmul, ``native_batch_norm`` and a
few elementwise kernels; on CPU the BN-LSTM's elementwise step work runs in the C kernels of
:mod:`geomopt.nn._gate_kernels` where a C compiler is available); masked batches and ``fused=False``
run the plain step-by-step loop, the reference the fused layers are tested against.
"""

from __future__ import annotations

import shutil
import warnings

import torch
from torch import Tensor, nn
from torch._inductor import config as inductor_config

from geomopt.nn import _gate_kernels


class StepBatchNorm(nn.Module):
    """Batch normalization with separate statistics for each time step.

    Args:
        num_features: F, the normalized dimension of inputs ``(batch, F)`` or ``(batch, T, F)``.
        max_steps: T_max, the number of time steps with their own statistics; ``1`` with
            ``sequence_wise=True`` gives one set of statistics shared by all steps.
        gamma: initial scale (0.1 in Cooijmans et al.).
        beta: whether there is a learned shift (BN-LSTM's h and x terms have none).
        reuse_last: steps t >= T_max use the statistics of step T_max - 1; if False they are an error.
        momentum, eps: as in ``nn.BatchNorm1d``.
        missing_stats: what eval mode does for a step without population statistics (never trained
            on): ``"error"`` (raise) or ``"batch"`` (normalize with the batch's statistics, not stored).
    """

    def __init__(self, num_features: int, max_steps: int, *, gamma: float = 0.1, beta: bool = True,
                 reuse_last: bool = True, sequence_wise: bool = False, momentum: float = 0.1, eps: float = 1e-5,
                 missing_stats: str = "error"):
        super().__init__()
        if missing_stats not in ("error", "batch"):
            raise ValueError(f"StepBatchNorm: missing_stats must be 'error' or 'batch', got {missing_stats!r}")
        self.missing_stats = missing_stats
        if max_steps < 1:
            raise ValueError(f"StepBatchNorm: max_steps must be >= 1, got {max_steps}")
        self.num_features, self.max_steps = num_features, 1 if sequence_wise else max_steps
        self.reuse_last, self.sequence_wise, self.momentum, self.eps = reuse_last, sequence_wise, momentum, eps
        self.weight = nn.Parameter(torch.full((num_features,), float(gamma)))
        self.bias = nn.Parameter(torch.zeros(num_features)) if beta else None
        self.register_buffer("running_mean", torch.zeros(self.max_steps, num_features))
        self.register_buffer("running_var", torch.ones(self.max_steps, num_features))
        self.register_buffer("steps_tracked", torch.zeros(self.max_steps, dtype=torch.long))

    def _slots(self, first: int, count: int) -> Tensor:
        """Index of the statistics used by steps first .. first+count-1."""
        last = first + count - 1
        if self.sequence_wise:
            return torch.zeros(count, dtype=torch.long)
        if last >= self.max_steps and not self.reuse_last:
            raise ValueError(f"StepBatchNorm: step {last} is beyond T_max = {self.max_steps} and reuse_last=False; "
                             "raise max_steps or allow reusing the last step's statistics")
        return torch.arange(first, first + count).clamp_max(self.max_steps - 1)

    def forward(self, x: Tensor, step: int = 0, mask: Tensor | None = None) -> Tensor:
        """Normalize ``x``: ``(batch, F)`` at time ``step``, or ``(batch, T, F)`` for steps
        ``step .. step+T-1``. ``mask``: ``(batch,)`` or ``(batch, T)`` booleans, the valid entries."""
        if x.dim() == 2 and mask is None and not self.sequence_wise:
            return self._one_step(x, step)
        single = x.dim() == 2
        if single:
            x = x.unsqueeze(1)
            mask = None if mask is None else mask.unsqueeze(1)
        batch, steps, _ = x.shape
        slots = self._slots(step, steps).to(x.device)
        valid = (torch.ones(batch, steps, dtype=torch.bool, device=x.device) if mask is None else mask).to(x.dtype)
        missing = not self.training and bool((self.steps_tracked[slots] == 0).any())
        if missing and self.missing_stats == "error":
            absent = sorted(set(slots[self.steps_tracked[slots] == 0].tolist()))
            raise RuntimeError(f"StepBatchNorm in eval mode has no population statistics for step(s) {absent}: "
                               "train (in train mode) on sequences of that length first")
        if (self.training or missing) and mask is None and batch > 1 and not self.sequence_wise:
            # all entries valid, per-step statistics: the (t, feature) pairs as the channels of one
            # fused batch norm (one kernel forward and backward), which also updates the running
            # averages when the steps have their own slots (else they are computed apart)
            own = self.training and step + steps <= self.max_steps
            rows = slice(step, step + steps)
            out = torch.batch_norm(x.reshape(batch, -1), self.weight.repeat(steps),
                                   None if self.bias is None else self.bias.repeat(steps),
                                   self.running_mean[rows].view(-1) if own else None,
                                   self.running_var[rows].view(-1) if own else None, True, self.momentum,
                                   self.eps, False).view_as(x)
            if own:
                self.steps_tracked[rows] += 1
            elif self.training:
                with torch.no_grad():
                    mean = x.mean(0)
                    centered = x - mean
                    self._update(slots, mean, (centered * centered).mean(0), x.new_full((steps,), batch),
                                 valid.sum(0) > 0)
            return out.squeeze(1) if single else out
        if (self.training or missing) and mask is None:  # all entries valid: plain means (two passes)
            dims = (0, 1) if self.sequence_wise else 0
            mean = x.mean(dims)
            centered = x - mean
            var = (centered * centered).mean(dims)
            counts = x.new_full((steps,), batch * steps if self.sequence_wise else batch)
            if self.sequence_wise:
                mean, var = mean.expand(steps, -1), var.expand(steps, -1)
            if self.training:
                self._update(slots, mean.detach(), var.detach(), counts, valid.sum(0) > 0)
        elif self.training or missing:  # missing with missing_stats="batch": this batch's statistics, not stored
            w = valid.unsqueeze(-1)
            if self.sequence_wise:
                count = w.sum().clamp_min(1)
                mean = (x * w).sum((0, 1)) / count
                var = (((x - mean) ** 2) * w).sum((0, 1)) / count
                mean, var, counts = mean.expand(steps, -1), var.expand(steps, -1), count.expand(steps)
            else:
                counts = w.sum(0).squeeze(-1).clamp_min(1)  # (T,)
                mean = (x * w).sum(0) / counts.unsqueeze(-1)
                var = (((x - mean) ** 2) * w).sum(0) / counts.unsqueeze(-1)
            if self.training:
                self._update(slots, mean.detach(), var.detach(), counts.detach(), valid.sum(0) > 0)
        else:
            mean, var = self.running_mean[slots], self.running_var[slots]
        out = (x - mean) * torch.rsqrt(var + self.eps) * self.weight
        if self.bias is not None:
            out = out + self.bias
        return out.squeeze(1) if single else out

    def plan(self, steps: int) -> list[tuple[bool, Tensor | None, Tensor | None]]:
        """What steps ``0 .. steps-1`` of one unmasked sequence normalize with, for the fused
        recurrences: ``(batch_statistics, running_mean, running_var)`` per step. In training the
        running rows are the ones that step updates (None beyond T_max); in eval they are the
        population statistics read (and ``batch_statistics`` is True only for a missing step with
        ``missing_stats="batch"``). Call :meth:`count_steps` after a training pass."""
        slots = self._slots(0, steps).tolist()
        means, variances = self.running_mean.unbind(0), self.running_var.unbind(0)
        if self.training:
            return [(True, means[t], variances[t]) if t < self.max_steps else (True, None, None) for t in range(steps)]
        tracked = self.steps_tracked.tolist()
        absent = sorted({s for s in slots if not tracked[s]})
        if absent and self.missing_stats == "error":
            raise RuntimeError(f"StepBatchNorm in eval mode has no population statistics for step(s) {absent}: "
                               "train (in train mode) on sequences of that length first")
        return [(False, means[s], variances[s]) if tracked[s] else (True, None, None) for s in slots]

    @torch.no_grad()
    def count_steps(self, steps: int) -> None:
        """Count one training pass of ``steps`` steps in ``steps_tracked`` (after :meth:`plan`'s updates)."""
        if self.training:
            self.steps_tracked[:min(steps, self.max_steps)] += 1

    def _one_step(self, x: Tensor, step: int) -> Tensor:
        """The common case of a recurrent cell, one unmasked step: the same computation as the
        general path with a handful of operations (it runs T times per sequence)."""
        slot = int(self._slots(step, 1)[0])
        tracked = int(self.steps_tracked[slot]) > 0
        if self.training or not tracked:
            if not self.training and self.missing_stats == "error":
                raise RuntimeError(f"StepBatchNorm in eval mode has no population statistics for step(s) [{slot}]: "
                                   "train (in train mode) on sequences of that length first")
            mean, var = x.mean(0), x.var(0, unbiased=False)
            if self.training and slot == step:  # steps beyond T_max do not update the last slot
                with torch.no_grad():
                    n = x.shape[0]
                    self.running_mean[slot].mul_(1 - self.momentum).add_(mean, alpha=self.momentum)
                    self.running_var[slot].mul_(1 - self.momentum).add_(var, alpha=self.momentum * n / max(n - 1, 1))
                    self.steps_tracked[slot] += 1
        else:
            mean, var = self.running_mean[slot], self.running_var[slot]
        out = (x - mean) * torch.rsqrt(var + self.eps) * self.weight
        return out + self.bias if self.bias is not None else out

    @torch.no_grad()
    def _update(self, slots: Tensor, mean: Tensor, var: Tensor, counts: Tensor, present: Tensor) -> None:
        """Running averages of the statistics of the steps that have their own slot (unbiased variance)."""
        if self.sequence_wise:  # one pooled estimate, stored in the single slot
            keep = torch.zeros_like(present)
            keep[0] = present.any()
        else:  # steps beyond T_max reuse the last slot: only its own step updates it
            keep = present.clone()
            keep[1:] &= slots[1:] != slots[:-1]
        idx = slots[keep]
        if idx.numel() == 0:
            return
        n = counts[keep].to(var.dtype).unsqueeze(-1)
        unbiased = var[keep] * n / (n - 1).clamp_min(1)
        m = self.momentum
        self.running_mean[idx] = (1 - m) * self.running_mean[idx] + m * mean[keep]
        self.running_var[idx] = (1 - m) * self.running_var[idx] + m * unbiased
        self.steps_tracked[idx] += 1

    def extra_repr(self) -> str:
        return (f"{self.num_features}, max_steps={self.max_steps}, sequence_wise={self.sequence_wise}, "
                f"reuse_last={self.reuse_last}")


def _mask(lengths: Tensor | None, batch: int, steps: int, device: torch.device) -> Tensor | None:
    if lengths is None:
        return None
    lengths = torch.as_tensor(lengths, device=device)
    if lengths.shape != (batch,):
        raise ValueError(f"lengths must have shape ({batch},), got {tuple(lengths.shape)}")
    if bool((lengths < 1).any()) or bool((lengths > steps).any()):
        raise ValueError(f"lengths must be in [1, {steps}] (the padded length), got {lengths.tolist()}")
    return torch.arange(steps, device=device).unsqueeze(0) < lengths.unsqueeze(1)


def _check_input(name: str, x: Tensor, input_size: int) -> None:
    if x.dim() != 3 or x.shape[-1] != input_size:
        raise ValueError(f"{name} expects input of shape (batch, time, {input_size}), got {tuple(x.shape)}")


def _advance(valid: Tensor | None, new: Tensor, old: Tensor) -> Tensor:
    """The next state: ``new`` for sequences still running at this step, ``old`` for ended ones."""
    return new if valid is None else torch.where(valid.unsqueeze(1), new, old)


def _emit(valid: Tensor | None, h: Tensor) -> Tensor:
    """The output at this step: zeros after a sequence's end."""
    return h if valid is None else h * valid.unsqueeze(1)


def _input_terms(cell: nn.Module, x: Tensor, mask: Tensor | None) -> Tensor:
    """``BN(W_x x_t) + b`` of every step ``(batch, T, F)``, normalized at once (per-step statistics of all
    steps in one pass); the step loops unbind it over time (O(T) backward)."""
    return cell.bn_x(x @ cell.weight_x.t(), 0, mask) + cell.bias


def _recurrent_term(cell: nn.Module, h: Tensor, t: int, m: Tensor | None) -> Tensor:
    """``W_h h``, batch-normalized with step ``t``'s statistics when the cell has ``bn_h``."""
    rec = h @ cell.weight_h.t()
    return rec if cell.bn_h is None else cell.bn_h(rec, t, m)


_bn_backward = torch.ops.aten.native_batch_norm_backward.default
_sigmoid_backward = torch.ops.aten.sigmoid_backward.grad_input
_tanh_backward = torch.ops.aten.tanh_backward.grad_input
_threshold_backward = torch.ops.aten.threshold_backward.grad_input
_StepPlan = list[tuple[bool, Tensor | None, Tensor | None]]


def _folded(plan: _StepPlan, gamma: Tensor, beta: Tensor | None, eps: float) -> tuple[Tensor, Tensor]:
    """Per-step scale and shift ``(T, F)`` of a BN with population statistics: ``BN_t(z) = z * scale_t + shift_t``."""
    mean, var = torch.stack([p[1] for p in plan]), torch.stack([p[2] for p in plan])
    scale = gamma * torch.rsqrt(var + eps)
    return scale, (-mean * scale if beta is None else beta - mean * scale)


class _FusedLSTMLayer(torch.autograd.Function):
    """One LSTM layer over all steps with a hand-written backward: per step one matmul, one fused
    batch normalization of the four gates' ``W_h h`` (``torch.native_batch_norm``, which also updates
    the step's running statistics), one of ``c_t``, and a few elementwise kernels writing into
    buffers of all steps (11 kernels per step); what is off the recurrence (the gates' derivative
    factors) is computed for all steps at once after the loop. The backward runs the same recurrence
    in reverse with ``native_batch_norm_backward`` (8 kernels per step) and accumulates the weight
    gradient in one matmul over all steps. With both recurrent batch norms on CPU, the elementwise work
    of a step and the batch norm of ``c_t`` run in C kernels instead (:func:`_native_forward`,
    :func:`_native_backward`: 4 calls per step forward and 3 backward). Same equations as the
    step-by-step loop of ``_lstm_forward`` (tested against it in float64, values and gradients, train
    and eval, with and without the kernels).

    Inputs: ``u (B, T, 4H)`` the input terms ``BN(W_x x_t) + b`` (batch-first; the gradient comes back
    time-major, transposed), ``weight = W_h (4H, H)``, ``gamma_h (4H,)``, ``gamma_c, beta_c (H,)`` (None
    without ``bn_h`` / ``bn_c``), ``h0, c0 (B, H)``, the per-step plans of ``bn_h`` and ``bn_c``
    (:meth:`StepBatchNorm.plan`) and their momentum and eps, ``keep``: whether a backward will follow,
    ``native``: whether to use the C kernels where they apply. Outputs ``hs, cs (T + 1, B, H)``: the
    states h_0 .. h_T and c_0 .. c_T.

    When no gradient is needed, nothing is kept for the backward, and a BN with population
    statistics (eval) is folded, for all steps at once, into per-step affine maps
    ``BN_t(z) = z * gamma / sqrt(var_t + eps) + (beta - mean_t gamma / sqrt(var_t + eps))``, the shift of
    ``W_h h`` going into the input terms ``u``: the step runs ``mm``, ``addcmul`` and the gates.
    (Folding the scale into ``W_h`` itself would take a copy of ``W_h`` per time step.)
    """

    @staticmethod
    def forward(ctx, u, weight, gamma_h, gamma_c, beta_c, h0, c0, plan_h: _StepPlan | None,
                plan_c: _StepPlan | None, momentum: tuple[float, float], eps: tuple[float, float], keep: bool,
                native: bool = True):
        batch, steps, gates = u.shape
        n = gates // 4
        hs = u.new_empty(steps + 1, batch, n)
        cs = u.new_empty(steps + 1, batch, n)
        hs[0], cs[0] = h0, c0
        fold_h, fold_c = (not keep and plan is not None and not any(p[0] for p in plan) for plan in (plan_h, plan_c))
        kernels = None
        if native and u.device.type == "cpu" and None not in (plan_h, plan_c) and not (fold_h or fold_c):
            kernels = _gate_kernels.load(u.dtype)
        if kernels is not None:  # the elementwise work of a step and BN(c_t) in C kernels
            saved = _native_forward(kernels, u, weight, gamma_h, gamma_c, beta_c, hs, cs, plan_h, plan_c, momentum,
                                    eps, keep)
            ctx.save_for_backward(weight, gamma_h, gamma_c, beta_c, hs, cs)  # outputs: see below
            ctx.saved = (*saved, plan_h, plan_c, eps, kernels)
            return hs, cs
        acts = u.new_empty(steps, batch, gates)  # pre-activations, then their sigmoids (g's slot unused)
        gs = u.new_empty(steps, batch, n)  # tanh(g)
        tcs = u.new_empty(steps, batch, n)  # tanh(BN(c_t))
        if fold_h:
            scale_h, shift_h = _folded(plan_h, gamma_h, None, eps[0])
            u = u + shift_h
        if fold_c:
            scale_c, shift_c = _folded(plan_c, gamma_c, beta_c, eps[1])
        rec = u.new_empty(steps, batch, gates) if plan_h is not None and not fold_h else None
        i_all, f_all, g_all, o_all = acts.view(steps, batch, 4, n).unbind(2)
        # every step's operands as views made once: the loop only launches kernels
        h_t, c_t, a_t, g_t, tc_t, i_t, f_t, pg_t, o_t = (
            v.unbind(0) for v in (hs, cs, acts, gs, tcs, i_all, f_all, g_all, o_all))
        u_t = u.unbind(1)
        r_t = None if rec is None else rec.unbind(0)
        stats_h, stats_c = [], []
        wt = weight.t()
        for t in range(steps):
            a = a_t[t]
            if plan_h is None:
                torch.addmm(u_t[t], h_t[t], wt, out=a)
            elif fold_h:
                torch.addcmul(u_t[t], torch.mm(h_t[t], wt), scale_h[t], out=a)
            else:
                use_batch, rm, rv = plan_h[t]
                pre, mean, invstd = torch.native_batch_norm(torch.mm(h_t[t], wt, out=r_t[t]), gamma_h, None, rm, rv,
                                                            use_batch, momentum[0], eps[0])
                torch.add(pre, u_t[t], out=a)
                stats_h.append((mean, invstd))
            g = torch.tanh(pg_t[t], out=g_t[t])
            torch.sigmoid_(a)
            c = torch.mul(f_t[t], c_t[t], out=c_t[t + 1]).addcmul_(i_t[t], g)
            if plan_c is None:
                tc = torch.tanh(c, out=tc_t[t])
            elif fold_c:
                tc = torch.tanh(torch.addcmul(shift_c[t], c, scale_c[t]), out=tc_t[t])
            else:
                use_batch, rm, rv = plan_c[t]
                cn, mean, invstd = torch.native_batch_norm(c, gamma_c, beta_c, rm, rv, use_batch, momentum[1], eps[1])
                stats_c.append((mean, invstd))
                tc = torch.tanh(cn, out=tc_t[t])
            torch.mul(o_t[t], tc, out=h_t[t + 1])
        partner = coef = None
        if keep:
            # d act / d pre times the factor each gate's activation multiplies, all steps at once:
            # i <-> tanh g, f <-> c_{t-1}, g <-> i (through tanh), o <-> tanh(BN(c_t))
            partner = torch.cat([gs, cs[:steps], i_all, tcs], 2)
            _sigmoid_backward(partner, acts, grad_input=partner)
            _tanh_backward(i_all, gs, grad_input=partner.view(steps, batch, 4, n)[:, :, 2])
            coef = torch.ops.aten.tanh_backward(o_all, tcs)  # d h_t / d BN(c_t) = o * (1 - tanh^2)
        # outputs go through save_for_backward: kept on ctx they would form a reference cycle through
        # their grad_fn that Python's collector cannot see, and every step's states would leak
        ctx.save_for_backward(weight, gamma_h, gamma_c, beta_c, hs, cs)
        ctx.saved = (f_all, partner, coef, rec, stats_h, stats_c, plan_h, plan_c, eps, None)
        return hs, cs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_hs, grad_cs):
        weight, gamma_h, gamma_c, beta_c, hs, cs = ctx.saved_tensors
        f_all, partner, coef, rec, stats_h, stats_c, plan_h, plan_c, eps, kernels = ctx.saved
        steps, batch, gates = partner.shape
        n = gates // 4
        if kernels is not None:
            du, dr, dh, dc, grads = _native_backward(kernels, grad_hs, grad_cs, weight, gamma_h, gamma_c, cs, f_all,
                                                     partner, coef, rec, stats_h, stats_c, plan_h, plan_c, eps)
            grad_weight = dr.reshape(-1, gates).t() @ hs[:steps].reshape(-1, n)
            return du.transpose(0, 1), grad_weight, *grads, dh, dc, None, None, None, None, None, None
        du = torch.empty_like(partner)
        c_t, f_t, p_t, k_t, du_t, gh_t, gc_t = (v.unbind(0) for v in (cs, f_all, partner, coef, du, grad_hs, grad_cs))
        r_t = None if rec is None else rec.unbind(0)
        drec, grad_gamma_h, grad_gamma_c, grad_beta_c = [], [], [], []
        dh, dc = gh_t[steps], gc_t[steps]
        for t in reversed(range(steps)):
            if plan_c is None:
                dc = torch.addcmul(dc, dh, k_t[t])
            else:
                use_batch, rm, rv = plan_c[t]
                dcn, dgamma, dbeta = _bn_backward(dh * k_t[t], c_t[t + 1], gamma_c, rm, rv, *stats_c[t], use_batch,
                                                  eps[1], [True, True, True])
                grad_gamma_c.append(dgamma)
                grad_beta_c.append(dbeta)
                dc = dc + dcn
            dpre = torch.mul(torch.cat([dc, dc, dc, dh], 1), p_t[t], out=du_t[t])
            if plan_h is not None:
                use_batch, rm, rv = plan_h[t]
                dpre, dgamma, _ = _bn_backward(dpre, r_t[t], gamma_h, rm, rv, *stats_h[t], use_batch, eps[0],
                                               [True, True, False])
                drec.append(dpre)
                grad_gamma_h.append(dgamma)
            dh = torch.addmm(gh_t[t], dpre, weight)
            dc = torch.addcmul(gc_t[t], dc, f_t[t])
        dr = du if plan_h is None else torch.stack(drec[::-1])
        grad_weight = dr.reshape(-1, gates).t() @ hs[:steps].reshape(-1, n)
        grads = [torch.stack(g).sum(0) if g else None for g in (grad_gamma_h, grad_gamma_c, grad_beta_c)]
        return du.transpose(0, 1), grad_weight, *grads, dh, dc, None, None, None, None, None, None


def _native_forward(kernels: _gate_kernels.GateKernels, u, weight, gamma_h, gamma_c, beta_c, hs, cs,
                    plan_h: _StepPlan, plan_c: _StepPlan, momentum: tuple[float, float], eps: tuple[float, float],
                    keep: bool):
    """The step loop of :class:`_FusedLSTMLayer` (both recurrent batch norms, CPU) with the elementwise
    work and the batch norm of ``c_t`` in :mod:`geomopt.nn._gate_kernels`: per step ``mm`` and
    ``native_batch_norm`` of ``W_h h``, the gates kernel (``c_t``), the output kernel (``BN(c_t)``, its
    running statistics, ``h_t``). Fills ``hs, cs``; returns what the backward reads: ``f (T, B, H)``, the
    gates' derivative factors ``(T, B, 4H)``, ``d h_t / d BN(c_t) (T, B, H)``, ``W_h h (T, B, 4H)``, the
    statistics of ``BN(W_h h)`` per step and those of ``BN(c_t)`` (mean and 1/std ``(T, H)``)."""
    batch, steps, gates = u.shape
    n = gates // 4
    u = u.contiguous()
    size = u.element_size()
    rec = u.new_empty(steps, batch, gates)
    kept = steps if keep else 1  # without a backward the kernels write nothing there
    partner, f_all, coef = u.new_empty(kept, batch, gates), u.new_empty(kept, batch, n), u.new_empty(kept, batch, n)
    mean_c, invstd_c = u.new_empty(steps, n), u.new_empty(steps, n)
    o_tmp = u.new_empty(batch, n)
    u_ptr, c_ptr, h_ptr, p_ptr, f_ptr, k_ptr, o_ptr, m_ptr, s_ptr, g_ptr, b_ptr = (
        v.data_ptr() for v in (u, cs, hs, partner, f_all, coef, o_tmp, mean_c, invstd_c, gamma_c, beta_c))
    nstep = batch * n * size  # bytes per step of a (T, B, H) buffer
    pstep, kstep = (4 * nstep, nstep) if keep else (0, 0)
    h_t, r_t = hs.unbind(0), rec.unbind(0)
    stats_h = []
    wt = weight.t()
    for t in range(steps):
        use_batch, rm, rv = plan_h[t]
        pre, mean, invstd = torch.native_batch_norm(torch.mm(h_t[t], wt, out=r_t[t]), gamma_h, None, rm, rv,
                                                    use_batch, momentum[0], eps[0])
        stats_h.append((mean, invstd))
        kernels.gates(batch, n, pre.data_ptr(), u_ptr + t * gates * size, steps * gates, c_ptr + t * nstep,
                      c_ptr + (t + 1) * nstep, o_ptr, p_ptr + t * pstep, f_ptr + t * kstep, keep)
        use_batch, rm, rv = plan_c[t]
        kernels.output(batch, n, c_ptr + (t + 1) * nstep, g_ptr, b_ptr, None if rm is None else rm.data_ptr(),
                       None if rv is None else rv.data_ptr(), use_batch, momentum[1], eps[1], o_ptr,
                       h_ptr + (t + 1) * nstep, p_ptr + t * pstep, k_ptr + t * kstep, m_ptr + t * n * size,
                       s_ptr + t * n * size, keep)
    return f_all, partner, coef, rec, stats_h, (mean_c, invstd_c)


def _native_backward(kernels: _gate_kernels.GateKernels, grad_hs, grad_cs, weight, gamma_h, gamma_c, cs, f_all,
                     partner, coef, rec, stats_h, stats_c, plan_h: _StepPlan, plan_c: _StepPlan,
                     eps: tuple[float, float]):
    """The backward step loop of :func:`_native_forward`: per step the backward kernel (through
    ``h_t = o tanh(BN(c_t))`` and the gates: ``d pre``, ``d c_{t-1}``, the gradients of ``gamma_c``
    and ``beta_c``), ``native_batch_norm_backward`` for ``BN(W_h h)`` and ``addmm`` for ``d h_{t-1}``.
    Returns ``d pre (T, B, 4H)``, ``d W_h h (T, B, 4H)``, ``d h_0``, ``d c_0`` and the gradients of
    ``gamma_h, gamma_c, beta_c``."""
    steps, batch, gates = partner.shape
    n = gates // 4
    grad_hs, grad_cs = grad_hs.contiguous(), grad_cs.contiguous()
    du = torch.empty_like(partner)
    grad_gamma_c, grad_beta_c = gamma_c.new_zeros(n), gamma_c.new_zeros(n)  # the kernel adds every step's terms
    scratch = du.new_empty(2, n)
    size = du.element_size()
    nstep = batch * n * size
    mean_c, invstd_c = stats_c
    p_ptr, f_ptr, gc_ptr, du_ptr, k_ptr, c_ptr, m_ptr, s_ptr, g_ptr = (
        v.data_ptr() for v in (partner, f_all, grad_cs, du, coef, cs, mean_c, invstd_c, gamma_c))
    tail = (grad_gamma_c.data_ptr(), grad_beta_c.data_ptr(), scratch[0].data_ptr(), scratch[1].data_ptr())
    gh_t, r_t, du_t = (v.unbind(0) for v in (grad_hs, rec, du))
    carry = (du.new_empty(batch, n), du.new_empty(batch, n))  # d c_t of alternate steps
    drec, grad_gamma_h = [], []
    dh, dc = gh_t[steps], grad_cs[steps]
    for t in reversed(range(steps)):
        kernels.backward(batch, n, dh.data_ptr(), k_ptr + t * nstep, c_ptr + (t + 1) * nstep, m_ptr + t * n * size,
                         s_ptr + t * n * size, g_ptr, plan_c[t][0], dc.data_ptr(), p_ptr + t * 4 * nstep,
                         gc_ptr + t * nstep, f_ptr + t * nstep, du_ptr + t * 4 * nstep, carry[t % 2].data_ptr(), *tail)
        dc = carry[t % 2]
        use_batch, rm, rv = plan_h[t]
        dr, dgamma, _ = _bn_backward(du_t[t], r_t[t], gamma_h, rm, rv, *stats_h[t], use_batch, eps[0],
                                     [True, True, False])
        drec.append(dr)
        grad_gamma_h.append(dgamma)
        dh = torch.addmm(gh_t[t], dr, weight)
    return du, torch.stack(drec[::-1]), dh, dc, [torch.stack(grad_gamma_h).sum(0), grad_gamma_c, grad_beta_c]


class _FusedRNNLayer(torch.autograd.Function):
    """One BN-RNN layer over all steps with a hand-written backward: per step ``h_t = phi(BN(W_h h) + u_t)``
    by one matmul, one ``native_batch_norm`` (or ``addmm`` without recurrent BN) and the activation;
    the backward by the activation's derivative, ``native_batch_norm_backward`` and one ``addmm``.
    Inputs ``u (T, B, H)``, ``weight (H, H)``, ``gamma_h (H,)`` or None, ``h0 (B, H)``, the plan of
    ``bn_h``, its momentum and eps, ``relu`` (else tanh). Output ``hs (T + 1, B, H)``."""

    @staticmethod
    def forward(ctx, u, weight, gamma_h, h0, plan_h: _StepPlan | None, momentum: float, eps: float, relu: bool):
        steps, batch, n = u.shape
        hs = u.new_empty(steps + 1, batch, n)
        hs[0] = h0
        h_t, u_t = hs.unbind(0), u.unbind(0)
        rec, stats = [], []
        wt = weight.t()
        for t in range(steps):
            if plan_h is None:
                pre = torch.addmm(u_t[t], h_t[t], wt)
            else:
                r = torch.mm(h_t[t], wt)
                use_batch, rm, rv = plan_h[t]
                pre, mean, invstd = torch.native_batch_norm(r, gamma_h, None, rm, rv, use_batch, momentum, eps)
                pre += u_t[t]
                rec.append(r)
                stats.append((mean, invstd))
            if relu:
                torch.clamp_min(pre, 0.0, out=h_t[t + 1])
            else:
                torch.tanh(pre, out=h_t[t + 1])
        ctx.save_for_backward(weight, gamma_h, hs)  # the output: see _FusedLSTMLayer
        ctx.saved = (rec, stats, plan_h, eps, relu)
        return hs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_hs):
        weight, gamma_h, hs = ctx.saved_tensors
        rec, stats, plan_h, eps, relu = ctx.saved
        steps = hs.shape[0] - 1
        du = torch.empty_like(hs[1:])
        h_t, du_t, gh_t = hs.unbind(0), du.unbind(0), grad_hs.unbind(0)
        drec, grad_gamma = [], []
        dh = gh_t[steps]
        for t in reversed(range(steps)):
            if relu:
                dpre = _threshold_backward(dh, h_t[t + 1], 0.0, grad_input=du_t[t])
            else:
                dpre = _tanh_backward(dh, h_t[t + 1], grad_input=du_t[t])
            if plan_h is not None:
                use_batch, rm, rv = plan_h[t]
                dpre, dgamma, _ = _bn_backward(dpre, rec[t], gamma_h, rm, rv, *stats[t], use_batch, eps,
                                               [True, True, False])
                drec.append(dpre)
                grad_gamma.append(dgamma)
            dh = torch.addmm(gh_t[t], dpre, weight)
        dr = du if plan_h is None else torch.stack(drec[::-1])
        grad_weight = dr.reshape(-1, dr.shape[-1]).t() @ hs[:steps].reshape(-1, dr.shape[-1])
        return du, grad_weight, torch.stack(grad_gamma).sum(0) if grad_gamma else None, dh, None, None, None, None


def _bnlstm_step(h, weight, u, c_prev, gamma_h, gamma_c, beta_c, eps_h: float, eps_c: float):
    """One BN-LSTM training step with batch statistics as one pure function (what ``torch.compile``
    fuses): the new ``h, c``, what the backward needs and the statistics ``(mean, biased var)``."""
    n = c_prev.shape[1]
    r = h @ weight.t()
    var_r, mean_r = torch.var_mean(r, 0, correction=0)
    invstd_r = torch.rsqrt(var_r + eps_h)
    rn = (r - mean_r) * invstd_r
    pre = rn * gamma_h + u
    s = torch.sigmoid(pre)
    i, f, g, o = s[:, :n], s[:, n:2 * n], torch.tanh(pre[:, 2 * n:3 * n]), s[:, 3 * n:]
    c = f * c_prev + i * g
    var_c, mean_c = torch.var_mean(c, 0, correction=0)
    invstd_c = torch.rsqrt(var_c + eps_c)
    cn = (c - mean_c) * invstd_c
    tc = torch.tanh(cn * gamma_c + beta_c)
    d = s * (1 - s)
    partner = torch.cat([g * d[:, :n], c_prev * d[:, n:2 * n], i * (1 - g * g), tc * d[:, 3 * n:]], 1)
    return o * tc, c, f, partner, o * (1 - tc * tc), rn, invstd_r, cn, invstd_c, mean_r, var_r, mean_c, var_c


def _bnlstm_step_backward(dh, dc, grad_h_prev, grad_c_prev, weight, f, partner, coef, rn, invstd_r, cn, invstd_c,
                          gamma_h, gamma_c):
    """The backward of :func:`_bnlstm_step` for one step: ``d pre`` (= d u), the gradients of
    ``h_{t-1}, c_{t-1}`` and the step's terms of the BN parameters' gradients."""
    d_tc = dh * coef
    dcn = d_tc * gamma_c
    dc = dc + invstd_c * (dcn - dcn.mean(0) - cn * (dcn * cn).mean(0))
    dpre = torch.cat([dc, dc, dc, dh], 1) * partner
    drn = dpre * gamma_h
    dr = invstd_r * (drn - drn.mean(0) - rn * (drn * rn).mean(0))
    return (dpre, dr, torch.addmm(grad_h_prev, dr, weight), torch.addcmul(grad_c_prev, dc, f),
            (dpre * rn).sum(0), (d_tc * cn).sum(0), d_tc.sum(0))


class _StepFnLSTMLayer(torch.autograd.Function):
    """A BN-LSTM layer in training mode (batch statistics at every step) by two step functions,
    :func:`_bnlstm_step` and :func:`_bnlstm_step_backward`, ``torch.compile``-d by ``BNLSTM(compile=True)``
    (one generated kernel each per step). The running statistics are updated once per sequence,
    by the caller from the returned per-step ``(mean, biased var)`` of both BNs (same formula as
    ``native_batch_norm``). Inputs: those of :class:`_FusedLSTMLayer` up to ``c0``, ``step_fns`` (the
    two functions) and the two eps; outputs ``hs, cs (T + 1, B, H)`` and the four statistics ``(T, F)``."""

    @staticmethod
    def forward(ctx, u, weight, gamma_h, gamma_c, beta_c, h0, c0, step_fns, eps: tuple[float, float]):
        forward_step, _ = step_fns
        h, c = h0, c0
        hs, cs, saved, stats = [h0], [c0], [], []
        for u_t in u.unbind(0):
            h, c, *keep, mean_r, var_r, mean_c, var_c = forward_step(h, weight, u_t, c, gamma_h, gamma_c, beta_c,
                                                                     *eps)
            hs.append(h)
            cs.append(c)
            saved.append(keep)
            stats.append((mean_r, var_r, mean_c, var_c))
        hs, cs = torch.stack(hs), torch.stack(cs)
        ctx.save_for_backward(weight, gamma_h, gamma_c, hs)  # the output: see _FusedLSTMLayer
        ctx.saved = (saved, step_fns)
        stats = [torch.stack(v) for v in zip(*stats)]
        ctx.mark_non_differentiable(*stats)
        return hs, cs, *stats

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_hs, grad_cs, *_):
        weight, gamma_h, gamma_c, hs = ctx.saved_tensors
        saved, (_, backward_step) = ctx.saved
        steps = len(saved)
        dh, dc = grad_hs[steps], grad_cs[steps]
        du, dr, grads = [], [], []
        for t in reversed(range(steps)):
            dpre, drec, dh, dc, *g = backward_step(dh, dc, grad_hs[t], grad_cs[t], weight, *saved[t], gamma_h, gamma_c)
            du.append(dpre)
            dr.append(drec)
            grads.append(g)
        du, dr = torch.stack(du[::-1]), torch.stack(dr[::-1])
        grad_weight = dr.reshape(-1, dr.shape[-1]).t() @ hs[:steps].reshape(-1, hs.shape[-1])
        g_h, g_gamma_c, g_beta_c = (torch.stack(v).sum(0) for v in zip(*grads))
        return du, grad_weight, g_h, g_gamma_c, g_beta_c, dh, dc, None, None


@torch.no_grad()
def _update_running(bn: StepBatchNorm, mean: Tensor, var: Tensor, batch: int) -> None:
    """``native_batch_norm``'s running-average update for the steps with their own slot, all at once."""
    k = min(mean.shape[0], bn.max_steps)
    m = bn.momentum
    bn.running_mean[:k] = (1 - m) * bn.running_mean[:k] + m * mean[:k]
    bn.running_var[:k] = (1 - m) * bn.running_var[:k] + m * var[:k] * (batch / (batch - 1))


_COMPILED: list[tuple] = []


def _step_functions() -> tuple:
    """The two step functions, ``torch.compile``-d once per process when a C++ compiler is present
    (else, with a warning, run eagerly: same numbers, no fusion)."""
    if not _COMPILED:
        fns = (_bnlstm_step, _bnlstm_step_backward)
        cxx = inductor_config.cpp.cxx[-1] or "g++"
        if shutil.which(cxx) is None:
            warnings.warn(f"BNLSTM(compile=True): no C++ compiler ({cxx!r}) for torch.compile; running the step "
                          "functions eagerly", stacklevel=3)
        else:
            fns = tuple(torch.compile(fn, dynamic=False, fullgraph=True) for fn in fns)
        _COMPILED.append(fns)
    return _COMPILED[0]


def _fused_lstm_layer(cell: nn.Module, x: Tensor, h0: Tensor, c0: Tensor, compile: bool,
                      native: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """One layer by :class:`_FusedLSTMLayer` (with the C gate kernels if ``native``; or, with ``compile``
    for a BN-LSTM in training, :class:`_StepFnLSTMLayer`): outputs ``(batch, T, H)``, ``h_T``, ``c_T``."""
    batch, steps = x.shape[:2]
    u = _input_terms(cell, x, None)
    bns = [cell.bn_h, cell.bn_c]
    if compile and cell.training and None not in bns:
        hs, cs, *stats = _StepFnLSTMLayer.apply(u.transpose(0, 1).contiguous(), cell.weight_h, cell.bn_h.weight,
                                                cell.bn_c.weight, cell.bn_c.bias, h0, c0, _step_functions(),
                                                (cell.bn_h.eps, cell.bn_c.eps))
        for bn, (mean, var) in zip(bns, (stats[:2], stats[2:])):
            _update_running(bn, mean, var, batch)
            bn.count_steps(steps)
        return hs[1:].transpose(0, 1), hs[-1], cs[-1]
    plans = [None if bn is None else bn.plan(steps) for bn in bns]
    inputs = (u, cell.weight_h, None if cell.bn_h is None else cell.bn_h.weight,
              None if cell.bn_c is None else cell.bn_c.weight, None if cell.bn_c is None else cell.bn_c.bias, h0, c0)
    keep = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    hs, cs = _FusedLSTMLayer.apply(*inputs, *plans, tuple(bn.momentum if bn else 0.0 for bn in bns),
                                   tuple(bn.eps if bn else 0.0 for bn in bns), keep, native)
    for bn in bns:
        if bn is not None:
            bn.count_steps(steps)
    return hs[1:].transpose(0, 1), hs[-1], cs[-1]


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
        wx = _input_terms(cell, x, mask).unbind(1)
        outputs = []
        for t in range(steps):
            m = None if mask is None else mask[:, t]
            i, f, g, o = (_recurrent_term(cell, h, t, m) + wx[t]).chunk(4, dim=1)
            c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h_new = torch.sigmoid(o) * torch.tanh(c_new if cell.bn_c is None else cell.bn_c(c_new, t, m))
            c, h = _advance(m, c_new, c), _advance(m, h_new, h)
            outputs.append(_emit(m, h_new))
        x = torch.stack(outputs, dim=1)
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
        hs = []
        if self.fused and mask is None and (batch > 1 or not self.training):
            for layer, cell in enumerate(self.cells):
                h = x.new_zeros(batch, self.hidden_size) if state is None else state[layer]
                u = _input_terms(cell, x, None).transpose(0, 1).contiguous()
                bn = cell.bn_h
                h_all = _FusedRNNLayer.apply(u, cell.weight_h, None if bn is None else bn.weight, h,
                                             None if bn is None else bn.plan(steps), bn.momentum if bn else 0.0,
                                             bn.eps if bn else 0.0, self.phi is torch.relu)
                if bn is not None:
                    bn.count_steps(steps)
                x = h_all[1:].transpose(0, 1)
                hs.append(h_all[-1])
            return x, torch.stack(hs)
        for layer, cell in enumerate(self.cells):
            h = x.new_zeros(batch, self.hidden_size) if state is None else state[layer]
            wx = _input_terms(cell, x, mask).unbind(1)
            outputs = []
            for t in range(steps):
                m = None if mask is None else mask[:, t]
                h_new = self.phi(_recurrent_term(cell, h, t, m) + wx[t])
                h = _advance(m, h_new, h)
                outputs.append(_emit(m, h_new))
            x = torch.stack(outputs, dim=1)
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
