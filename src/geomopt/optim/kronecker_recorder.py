r"""What a Kronecker geometry records from the user's passes, and the passes it runs itself.

Statistics are gathered by forward hooks on the supported layers and tensor hooks on their outputs
(:class:`geomopt.curvature.Capture`), recorded per forward/backward and consumed at the next step, so any
loop order works: ``zero_grad(); loss = f(model(x)); loss.backward(); step()``, ``loss = f(model(x));
zero_grad(); loss.backward(); step()`` (the order of Lightning's closure), ``step(closure)``, and
gradient accumulation. Each forward of the model with gradients enabled starts a micro-batch (unless
inside :meth:`Recorder.micro_batch`); :meth:`Recorder.drop_backpropagated` (the optimizer's ``zero_grad``)
drops the records whose gradients are discarded and keeps forwards still waiting for their backward.

For ``fisher='true'``/``'ggn'`` and the exact quadratic model, the model's inputs are recorded per
micro-batch (a forward pre-hook on the model) and :meth:`Recorder.fisher_passes` runs one more forward
and backward per micro-batch with sampled targets (Martens & Grosse 2015, sec. 5: the "true" Fisher) or
the columns of the loss-Hessian square root (``ggn``). Those passes are invisible to the user
(:meth:`Recorder.isolated`): nothing recorded by the user-facing hooks, ``.grad`` untouched, the model's
buffers restored, and the global RNG streams restored too (inside, seeded from the recorder's own
generator, whose state the optimizer saves, so a resumed run samples the same targets).

The hooks reach the recorder through weak references and record only calls of the layers they were
registered on (:class:`geomopt.curvature.capture.WeakHook`): ``copy.deepcopy(model)``, ``pickle`` and
``torch.save(model)`` work, and nothing a copy computes enters the statistics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from geomopt.curvature.capture import Capture, WeakHook, backprop_output_grads
from geomopt.curvature.layers import LayerHandler


def rng_state(devices: Sequence[int]) -> tuple[Tensor, list[Tensor]]:
    """The global CPU RNG state and that of the given CUDA devices."""
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]


def _detached(value: Any) -> Any:
    return value.detach() if isinstance(value, Tensor) else value


class Recorder:
    """Hook capture of a model's supported layers and of the model's inputs, for one Kronecker geometry.

    Args:
        model: the network.
        layers: ``(name, module, handler)`` of the layers with factors.
        fisher: ``empirical`` (output gradients of the user's loss, scaled by the batch size) or
            ``true``/``ggn`` (output gradients of :meth:`fisher_passes`, unscaled).
        seed: seed of the recorder's own generator (default ``torch.initial_seed()``).
        name: the owner's name, for messages.
    """

    def __init__(self, model: nn.Module, layers: Sequence[tuple[str, nn.Module, LayerHandler]], fisher: str,
                 seed: int | None, name: str):
        self.model, self.layers, self.fisher, self.name = model, list(layers), fisher, name
        self.inputs: list[dict[str, Any]] = []  # the model's inputs per micro-batch
        self.want_inputs = False
        self._internal = False  # inside a pass of the recorder's own: record nothing
        self._one_batch = False  # inside micro_batch(): forwards do not start micro-batches
        self.generator = torch.Generator().manual_seed(torch.initial_seed() if seed is None else int(seed))
        self.capture = Capture(self.layers, grad_scale=None if fisher == "empirical" else 1.0).attach()
        self._hooks = [model.register_forward_pre_hook(WeakHook(self, "_on_model_forward", model), with_kwargs=True),
                       model.register_forward_hook(WeakHook(self, "_after_model_forward", model))]

    def arm(self, capture: bool, inputs: bool) -> None:
        """Record the layers' inputs and output gradients (``capture``) and the model's inputs (``inputs``)
        in the forwards from now on."""
        self.capture.active, self.want_inputs = capture, inputs

    def remove_hooks(self) -> None:
        """Detach every hook (nothing is recorded any more)."""
        self.capture.active = False
        self.capture.remove()
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def __del__(self) -> None:
        try:
            self.remove_hooks()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def clear(self) -> None:
        """Drop every record (the step consumed them)."""
        self.capture.clear()
        self.inputs = []

    def drop_backpropagated(self) -> None:
        """Drop the records whose backward has run (their gradients are being zeroed)."""
        self.capture.clear(backpropagated_only=True)
        self.inputs = [r for r in self.inputs if not r["done"]]

    def records(self) -> list[dict[str, Any]]:
        """The recorded model inputs whose backward has run: ``{"args", "kwargs", "done"}``."""
        return [r for r in self.inputs if r["done"]]

    @contextlib.contextmanager
    def micro_batch(self):
        """Every forward of the model inside is part of ONE micro-batch (see the optimizers' ``micro_batch``)."""
        outer = self._one_batch
        if not outer:
            self.capture.new_batch()
        self._one_batch = True
        try:
            yield
        finally:
            self._one_batch = outer

    def _on_model_forward(self, module, args, kwargs):
        if self._internal or not torch.is_grad_enabled():
            return
        if not self._one_batch:
            self.capture.new_batch()
        if self.want_inputs:
            self.inputs.append({"args": tuple(_detached(a) for a in args),
                                "kwargs": {k: _detached(v) for k, v in kwargs.items()}, "done": False})

    def _after_model_forward(self, module, args, output):
        if self._internal or not torch.is_grad_enabled() or not self.want_inputs or not self.inputs:
            return
        record = self.inputs[-1]
        if isinstance(output, Tensor) and output.requires_grad:  # counts once its backward has run
            output.register_hook(lambda grad: record.__setitem__("done", True))
        else:
            record["done"] = True

    def cuda_devices(self) -> list[int]:
        return sorted({p.device.index or 0 for p in self.model.parameters() if p.device.type == "cuda"})

    @contextlib.contextmanager
    def isolated(self, rng: tuple[Tensor, list[Tensor]] | None = None):
        """A pass of the recorder's own that the user does not see: nothing recorded by the user-facing
        hooks, the model's buffers (BatchNorm statistics, ``num_batches_tracked``) restored afterwards,
        and the global RNG streams restored too. Inside, the streams are set to ``rng`` (a state from
        :func:`rng_state`), or else seeded from :attr:`generator`, so that dropout and sampled targets are
        reproducible and independent of the user's draws."""
        saved = [b.detach().clone() for b in self.model.buffers()]
        devices = self.cuda_devices()
        active = self.capture.active
        with torch.random.fork_rng(devices=devices):
            if rng is None:
                seed = int(torch.randint(0, 2 ** 62, (1,), generator=self.generator))
                torch.default_generator.manual_seed(seed)
                for d in devices:
                    torch.cuda.default_generators[d].manual_seed(seed)
            else:
                torch.set_rng_state(rng[0])
                for d, st in zip(devices, rng[1]):
                    torch.cuda.set_rng_state(st, d)
            self._internal, self.capture.active = True, False
            try:
                yield
            finally:
                self._internal, self.capture.active = False, active
                with torch.no_grad():
                    for b, old in zip(self.model.buffers(), saved):
                        b.copy_(old)

    def fisher_passes(self, likelihood: str, mc_samples: int) -> None:
        """One forward and ``K`` backward passes with sampled (``true``) or Hessian-square-root (``ggn``)
        output gradients per recorded micro-batch, in :meth:`isolated` (the model inputs are kept for the
        quadratic model; the step clears them)."""
        records = self.records()
        self.capture.clear()
        if not records:
            return
        params = [p for _, m, h in self.layers for p in h.params(m)]
        with self.isolated():
            self.capture.active, self.capture.keep_outputs = True, True  # the context restores .active
            try:
                for r in records:
                    self.capture.new_batch()
                    with torch.enable_grad():
                        out = self.model(*r["args"], **r["kwargs"])
                        # to the layers' outputs (no parameter gradient needed), unless one was modified in place
                        targets = self.capture.output_tensors(self.capture.batch) or params
                        try:
                            backprop_output_grads(out, targets, fisher=self.fisher, likelihood=likelihood,
                                                  mc_samples=mc_samples)
                        except FloatingPointError as exc:
                            raise FloatingPointError(f"{self.name}: {exc}; nothing was updated") from exc
            finally:
                self.capture.keep_outputs = False
