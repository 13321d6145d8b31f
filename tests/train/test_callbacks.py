"""The callbacks of ``fit`` (geomopt.train.callbacks), each alone, and the hooks a user's callback gets.

References: the metrics file the engine writes (every record a callback is given), an uninterrupted
run (a resumed callback state must give its numbers), hand-computed gradient clipping, the rule
``loss > factor * initial`` for divergence.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from geomopt.train import Callback, NonFiniteLossError, fit, read_metrics
from geomopt.train.callbacks import (Checkpoint, ClipGradNorm, DivergedError, DivergenceGuard, InterruptAfter,
                                     LRSchedule, MetricsLog, ProgressBar, StepFunction, TargetLoss, TrainState)
from geomopt.train.callbacks.metrics import truncate_metrics
from geomopt.train.checkpoint import load_checkpoint

NOWHERE = Path("no-such-run")  # for hook calls that never write


def _data(n=24, batch=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=batch)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def _fit(tmp_path, *, epochs=2, callbacks=(), model=None, **kw):
    model = model or _model()
    loader = _data()
    return fit(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, loader, epochs=epochs, out_dir=tmp_path,
               progress=False, callbacks=list(callbacks), **kw)


def _state(tmp_path, model=None, loader=None, epochs=2) -> TrainState:
    model = model or _model()
    loader = loader or _data()
    return TrainState(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, loader, loader, None,
                      torch.nn.functional.cross_entropy, None, "cpu", tmp_path, epochs, callbacks=[])


class Recorder(Callback):
    """Every hook call, in order, with what the state says at that moment."""

    def __init__(self):
        self.calls, self.logged = [], []

    def setup(self, state):
        self.calls.append(("setup", state.step))

    def on_train_start(self, state):
        self.calls.append(("on_train_start", state.record["epoch"] if state.record else None))

    def on_before_backward(self, state):
        assert state.loss.grad_fn is not None and state.loss_value == state.loss.item()
        self.calls.append(("on_before_backward", state.step))

    def on_after_backward(self, state):
        assert all(p.grad is not None for p in state.model.parameters())
        self.calls.append(("on_after_backward", state.step))

    def on_step_end(self, state):
        self.calls.append(("on_step_end", state.step))

    def on_epoch_end(self, state):
        self.calls.append(("on_epoch_end", state.record["epoch"]))

    def on_log(self, state, record):
        self.logged.append(record)

    def on_train_end(self, state):
        self.calls.append(("on_train_end", state.summary["steps"]))

    def teardown(self, state):
        self.calls.append(("teardown", state.step))


def test_hooks_run_in_order_and_see_every_record(tmp_path):
    rec = Recorder()
    summary = _fit(tmp_path, callbacks=[rec])
    step = lambda s: [("on_before_backward", s - 1), ("on_after_backward", s - 1), ("on_step_end", s)]  # noqa: E731
    epoch = lambda e: [c for s in range(3 * e - 2, 3 * e + 1) for c in step(s)] + [("on_epoch_end", e)]  # noqa: E731
    assert rec.calls == [("setup", 0), ("on_train_start", 0), *epoch(1), *epoch(2), ("on_train_end", 6),
                         ("teardown", 6)]
    assert rec.logged == read_metrics(tmp_path) and summary["steps"] == 6


def test_should_stop_mid_epoch_ends_that_epoch_evaluated_and_checkpointed(tmp_path):
    class StopAt(Callback):
        def on_step_end(self, state):
            state.should_stop = state.step == 4

    summary = _fit(tmp_path, epochs=5, callbacks=[StopAt()])
    epochs = [r for r in read_metrics(tmp_path) if r["kind"] == "epoch"]
    assert [(r["epoch"], r["step"]) for r in epochs] == [(0, 0), (1, 3), (2, 4)]
    assert (summary["steps"], summary["epochs"]) == (4, 2)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert (ckpt["epoch"], ckpt["batch"], ckpt["step"]) == (2, 0, 4)


@pytest.mark.parametrize("record", [{"kind": "mine"}, {"step": 1}, ["kind", "step"]])
def test_a_record_without_kind_or_step_is_refused(record):
    with pytest.raises(ValueError, match="TrainState.log: a record is a dict with a 'kind' and a 'step'"):
        _state(NOWHERE).log(record)


def test_should_stop_at_train_start_takes_no_step(tmp_path):
    class Never(Callback):
        def on_train_start(self, state):
            state.should_stop = True

    summary = _fit(tmp_path, callbacks=[Never()])
    assert summary["steps"] == 0 and not (tmp_path / "checkpoint.pt").exists()


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_teardown_runs_after_an_error_and_train_end_does_not(tmp_path, error):
    class Fails(Recorder):
        def on_step_end(self, state):
            raise error

    rec = Fails()
    with pytest.raises(type(error)):
        _fit(tmp_path, callbacks=[rec])
    assert rec.calls[-1] == ("teardown", 1) and "on_train_end" not in [c for c, _ in rec.calls]


class Counter(Callback):
    """Counts steps; its count is checkpointed."""

    def __init__(self):
        self.count, self.seen = 0, []

    def on_step_end(self, state):
        self.count += 1
        self.seen.append(self.count)

    def on_save_checkpoint(self, state, checkpoint):
        checkpoint["counter"] = self.count

    def on_load_checkpoint(self, state, checkpoint):
        self.count = checkpoint["counter"]


def test_callback_state_is_checkpointed_and_restored(tmp_path):
    full = Counter()
    _fit(tmp_path / "full", epochs=3, callbacks=[full])
    cut = Counter()
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "cut", epochs=3, callbacks=[cut], checkpoint_every=2, stop_after_steps=5)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["counter"] == 4
    again = Counter()
    model = _model()
    _fit(tmp_path / "cut", epochs=3, callbacks=[again], checkpoint_every=2, resume=True, model=model)
    assert again.seen == full.seen[4:] and again.count == full.count == 9


def test_a_key_the_checkpoint_holds_is_refused(tmp_path):
    class Clash(Callback):
        def on_save_checkpoint(self, state, checkpoint):
            checkpoint["model"] = None

    with pytest.raises(ValueError, match=r"Clash stores \['model'\]"):
        _fit(tmp_path, callbacks=[Clash()])


@pytest.mark.parametrize("bad, match", [(lambda s, m: None, r"callbacks must be a list"),
                                        ([print], r"callbacks\[0\] is a builtin_function_or_method"),
                                        (Recorder(), r"callbacks must be a list"),
                                        ([Recorder(), "log"], r"callbacks\[1\] is a str")])
def test_callbacks_that_are_not_callbacks_are_refused(tmp_path, bad, match):
    model = _model()
    with pytest.raises(TypeError, match=match):
        fit(model, torch.optim.SGD(model.parameters(), lr=0.1), _data(), _data(), epochs=1, out_dir=tmp_path,
            callbacks=bad)
    assert not (tmp_path / "metrics.jsonl").exists()


# --- each engine callback alone, on a TrainState ------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(max_norm=st.floats(1e-3, 10.0), scale=st.floats(1e-3, 100.0))
def test_clip_grad_norm_scales_to_the_bound(max_norm, scale):
    model = torch.nn.Linear(3, 2)
    grads = [torch.randn_like(p, generator=torch.Generator().manual_seed(1)) * scale for p in model.parameters()]
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads))
    state = _state(NOWHERE, model=model)
    ClipGradNorm(max_norm).on_after_backward(state)
    factor = min(1.0, max_norm / (norm + 1e-6))  # torch's rule
    for p, g in zip(model.parameters(), grads):
        assert torch.allclose(p.grad, g * factor, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "1"])
def test_clip_grad_norm_refuses_a_bad_bound(bad):
    with pytest.raises((ValueError, TypeError), match="ClipGradNorm: max_norm"):
        ClipGradNorm(bad)


@settings(max_examples=60, deadline=None)
@given(initial=st.floats(-10, 10), loss=st.floats(-10, 1e3), factor=st.floats(0.1, 100))
def test_divergence_guard_follows_its_rule(initial, loss, factor):
    guard = DivergenceGuard(factor)
    state = _state(NOWHERE)
    state.record = {"epoch": 0, "train_loss": initial}
    guard.on_train_start(state)
    state.record = {"epoch": 3, "train_loss": loss}
    if loss > factor * max(initial, 1e-12):
        with pytest.raises(DivergedError, match=r"after epoch 3 \(more than"):
            guard.on_epoch_end(state)
    else:
        guard.on_epoch_end(state)
    DivergenceGuard(None).on_epoch_end(state)  # no factor: only NaN/inf stop a run


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_divergence_guard_stops_a_non_finite_loss_before_backward(tmp_path, value):
    state = _state(tmp_path)
    state.step, state.epoch, state.loss_value = 7, 2, value
    with pytest.raises(NonFiniteLossError, match=rf"the loss became {value} at step 8 \(epoch 3\).*no checkpoint"):
        DivergenceGuard().on_before_backward(state)
    state.loss_value = 1.5
    DivergenceGuard().on_before_backward(state)


@pytest.mark.parametrize("bad", [0, -2.0, float("nan")])
def test_divergence_guard_refuses_a_bad_factor(bad):
    with pytest.raises(ValueError, match="DivergenceGuard: factor"):
        DivergenceGuard(bad)


def test_lr_schedule_steps_and_round_trips(tmp_path):
    state = _state(tmp_path)
    sched = torch.optim.lr_scheduler.StepLR(state.optimizer, step_size=2, gamma=0.5)
    cb = LRSchedule(sched)
    for _ in range(3):
        cb.on_step_end(state)
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    stored = {}
    cb.on_save_checkpoint(state, stored)
    other = _state(tmp_path)
    fresh = torch.optim.lr_scheduler.StepLR(other.optimizer, step_size=2, gamma=0.5)
    LRSchedule(fresh).on_load_checkpoint(other, stored)
    assert fresh.state_dict() == sched.state_dict()


def test_target_loss_stops_when_reached_and_says_so(tmp_path):
    cb, state = TargetLoss(0.5), _state(tmp_path)
    state.record = {"epoch": 1, "train_loss": 0.6}
    cb.on_epoch_end(state)
    assert not state.should_stop
    state.record = {"epoch": 2, "train_loss": 0.5}
    cb.on_epoch_end(state)
    cb.on_train_end(state)
    assert state.should_stop and state.summary["reached_target"] is True
    with pytest.raises(ValueError, match="TargetLoss: target"):
        TargetLoss(float("nan"))


def test_metrics_log_starts_empty_or_drops_records_after_the_checkpoint(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"kind": "step", "step": 9}\n')
    state, log = _state(tmp_path), MetricsLog()
    log.setup(state)
    log.on_log(state, {"kind": "step", "step": 1})
    log.teardown(state)
    assert read_metrics(tmp_path) == [{"kind": "step", "step": 1}]
    records = [{"kind": "epoch", "epoch": 0, "step": 0}, {"kind": "step", "step": 1}, {"kind": "step", "step": 2},
               {"kind": "callback", "step": 2}, {"kind": "epoch", "epoch": 1, "step": 2}, {"kind": "step", "step": 3}]
    (tmp_path / "metrics.jsonl").write_text("".join(f"{r}\n".replace("'", '"') for r in records))
    truncate_metrics(tmp_path / "metrics.jsonl", step=2, epoch=0)
    assert read_metrics(tmp_path) == records[:4]


def test_checkpoint_saves_at_its_cadence_and_never_a_non_finite_model(tmp_path):
    state, cb = _state(tmp_path), Checkpoint(every=2, extra={"config": 1})
    state.step, state.batch = 1, 1
    cb.on_step_end(state)
    assert not state.checkpoint_path.exists()
    state.step, state.batch = 2, 2
    cb.on_step_end(state)
    stored = load_checkpoint(state.checkpoint_path)
    assert (stored["step"], stored["batch"], stored["extra"]) == (2, 2, {"config": 1})
    state.step, state.batch = 3, 3  # the epoch's last batch: the epoch-end checkpoint follows
    cb.on_step_end(state)
    assert load_checkpoint(state.checkpoint_path)["step"] == 2
    before = state.checkpoint_path.read_bytes()
    with torch.no_grad():
        next(state.model.parameters())[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="a parameter became NaN/inf at step 3.*last good checkpoint"):
        cb.on_epoch_end(state)
    assert state.checkpoint_path.read_bytes() == before
    with pytest.raises(ValueError, match="Checkpoint: every"):
        Checkpoint(every=-1)


def test_step_function_logs_its_records_and_checks_its_function(tmp_path):
    calls = []
    summary = _fit(tmp_path, step_callback=lambda step, model: calls.append(step) or {"even": step % 2 == 0})
    assert calls == list(range(summary["steps"] + 1))
    logged = [r for r in read_metrics(tmp_path) if r["kind"] == "callback"]
    assert logged == [{"kind": "callback", "step": s, "even": s % 2 == 0} for s in calls]
    with pytest.raises(TypeError, match="StepFunction: fn must be a function"):
        StepFunction(3)


def test_progress_bar_counts_steps_and_interrupt_after_raises(tmp_path):
    state, bar, off = _state(tmp_path), ProgressBar(), ProgressBar(enabled=False)
    state.step = 2  # a resumed run: the bar starts at its step
    for b in (bar, off):
        b.on_train_start(state)
        b.on_step_end(state)
    assert (bar.bar.total, bar.bar.n, bar.bar.disable, off.bar.disable) == (6, 3, False, True)
    bar.teardown(state)
    assert bar.bar is None
    state.step = 4
    InterruptAfter(5).on_step_end(state)
    state.step = 5
    with pytest.raises(KeyboardInterrupt):
        InterruptAfter(5).on_step_end(state)


def test_the_readme_callback_stops_at_its_accuracy(tmp_path, monkeypatch):
    """The README's user callback: training stops after the first epoch whose test accuracy is >= 0.9."""
    import re
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    [block] = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "(Callback)" in b]
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(block, "README.md callback block", "exec"), namespace)
    accs = [r["test_acc"] for r in read_metrics(tmp_path / "runs" / "cb") if r["kind"] == "epoch"]
    assert accs[-1] >= 0.9 > max(accs[:-1]) and namespace["summary"]["epochs"] == len(accs) - 1 < 30
