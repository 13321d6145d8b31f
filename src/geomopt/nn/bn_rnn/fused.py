"""The fused batch-normalized recurrences: one ``torch.autograd.Function`` per layer over all time steps, with a
hand-written backward (``_FusedLSTMLayer``, ``_FusedRNNLayer``: per step one matmul, ``native_batch_norm`` and a
few elementwise kernels; on CPU the BN-LSTM's elementwise step work runs in the C kernels of
:mod:`geomopt.nn._gate_kernels` where a C compiler is available), and the ``torch.compile``-d step functions of
``BNLSTM(compile=True)`` (``_StepFnLSTMLayer``). Same equations as the step-by-step reference
(:mod:`geomopt.nn.bn_rnn.reference`), against which they are tested in float64.
"""

from __future__ import annotations

import shutil
import warnings

import torch
from torch import Tensor, nn
from torch._inductor import config as inductor_config

from geomopt.nn import _gate_kernels
from geomopt.nn.bn_rnn.norm import StepBatchNorm, _StepPlan
from geomopt.nn.bn_rnn.reference import _input_terms

_bn_backward = torch.ops.aten.native_batch_norm_backward.default
_sigmoid_backward = torch.ops.aten.sigmoid_backward.grad_input
_tanh_backward = torch.ops.aten.tanh_backward.grad_input
_threshold_backward = torch.ops.aten.threshold_backward.grad_input


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
    step-by-step reference (:func:`geomopt.nn.bn_rnn.reference._lstm_layer_reference`, tested against it in float64, values and gradients, train
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


def _fused_rnn_layer(cell: nn.Module, x: Tensor, h0: Tensor, relu: bool) -> tuple[Tensor, Tensor]:
    """One vanilla-RNN layer by :class:`_FusedRNNLayer` (``relu``, else tanh): outputs ``(batch, T, H)`` and
    ``h_T``."""
    steps = x.shape[1]
    u = _input_terms(cell, x, None).transpose(0, 1).contiguous()
    bn = cell.bn_h
    h_all = _FusedRNNLayer.apply(u, cell.weight_h, None if bn is None else bn.weight, h0,
                                 None if bn is None else bn.plan(steps), bn.momentum if bn else 0.0,
                                 bn.eps if bn else 0.0, relu)
    if bn is not None:
        bn.count_steps(steps)
    return h_all[1:].transpose(0, 1), h_all[-1]
