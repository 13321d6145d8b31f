"""Batch normalization with separate statistics for each time step (Cooijmans et al. 2017), the normalization
of every batch-normalized recurrent net here, and the per-step plan the fused layers read.

``BN_t(z) = gamma * (z - mean_t) / sqrt(var_t + eps) + beta`` with the statistics of step ``t`` (steps beyond
T_max reuse those of T_max - 1), or one set over all steps (sequence-wise, Laurent et al. 2016).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# what each step of one unmasked sequence normalizes with: (batch statistics?, running mean, running var)
_StepPlan = list[tuple[bool, Tensor | None, Tensor | None]]


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
