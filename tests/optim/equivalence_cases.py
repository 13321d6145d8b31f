"""Fixed float64 trajectories of PathSGD, KFAC and EKFAC for every option, recorded from the code before
the optimizers were composed from a geometry and a step rule (issue 27), and replayed by
tests/optim/test_equivalence.py against the current code.

``python -m tests.optim.equivalence_cases`` (from the repository root) rewrites ``equivalence.pt``: do that
only for a change that is meant to change the numbers, and say so in the commit.

Each case builds a small float64 model, runs ``STEPS`` steps of ``closure(); step()`` on fresh batches
(a closure for every optimizer, so the adaptive options have one) and records every parameter: in full
for the small models, and for the ones with a weight over one cache block (Path-SGD's row-block / C
path) 64 fixed entries and 8 fixed random projections of each parameter.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from geomopt.nn import ReLURNN
from geomopt.optim import EKFAC, KFAC, PathSGD

STORED = Path(__file__).with_name("equivalence.pt")
STEPS = 5
FULL_LIMIT = 20_000  # parameters with more entries are stored as entries + projections


def _mlp(seed: int, norm: bool = False, width: int = 8, d_in: int = 6) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(d_in, width), nn.ReLU()]
    if norm:
        layers += [nn.LayerNorm(width)]  # not supported by K-FAC: the momentum-SGD fallback
    layers += [nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 3)]
    return nn.Sequential(*layers).double()


def _cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(2 * 9, 3)).double()


def _rnn(seed: int) -> nn.Module:
    return ReLURNN(2, 5, 3, init="irnn", seed=seed, seq_len=4).double()


def _wide(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 600), nn.ReLU(), nn.Linear(600, 520), nn.ReLU(), nn.Linear(520, 3)).double()


MODELS = {"mlp": _mlp, "mlp-norm": lambda s: _mlp(s, norm=True), "cnn": _cnn, "rnn": _rnn, "wide": _wide,
          "mlp-wide-in": lambda s: _mlp(s, width=12, d_in=10)}
INPUTS = {"mlp": (6,), "mlp-norm": (6,), "cnn": (1, 5, 5), "rnn": (4, 2), "wide": (6,), "mlp-wide-in": (10,)}

#: name -> (optimizer, model, options, loss); "groups" in the options: two param groups (the last layer's
#: parameters at half the lr)
CASES: dict[str, tuple[str, str, dict, str]] = {
    "kfac-defaults": ("kfac", "mlp", {}, "ce"),
    "kfac-freq1": ("kfac", "mlp", dict(update_freq=1, inv_freq=1), "ce"),
    "kfac-freq2-3": ("kfac", "mlp", dict(update_freq=2, inv_freq=3, momentum=0.5), "ce"),
    "kfac-plain": ("kfac", "mlp", dict(update_freq=1, inv_freq=2, momentum=0.0, kl_clip=None), "ce"),
    "kfac-wd-clip": ("kfac", "mlp", dict(update_freq=1, inv_freq=2, weight_decay=1e-2, kl_clip=1e-4), "ce"),
    "kfac-true": ("kfac", "mlp", dict(update_freq=1, inv_freq=2, fisher="true", mc_samples=2, seed=5), "ce"),
    "kfac-ggn": ("kfac", "mlp", dict(update_freq=1, inv_freq=1, fisher="ggn"), "ce"),
    "kfac-true-gaussian": ("kfac", "mlp", dict(update_freq=1, inv_freq=1, fisher="true", likelihood="gaussian",
                                               seed=2), "mse"),
    "kfac-adaptive-damping": ("kfac", "mlp", dict(update_freq=1, inv_freq=1, adaptive_damping=True,
                                                  damping_interval=2, weight_decay=1e-3), "ce"),
    "kfac-adaptive-step": ("kfac", "mlp", dict(update_freq=1, inv_freq=2, adaptive_step=True), "ce"),
    "kfac-adaptive-both": ("kfac", "mlp-norm", dict(update_freq=1, inv_freq=1, adaptive_step=True,
                                                    adaptive_damping=True, damping_interval=1,
                                                    weight_decay=1e-3), "ce"),
    "kfac-fallback-groups": ("kfac", "mlp-norm", dict(update_freq=1, inv_freq=2, weight_decay=1e-3,
                                                      groups=True), "ce"),
    "kfac-cnn": ("kfac", "cnn", dict(update_freq=1, inv_freq=2, weight_decay=1e-3), "ce"),
    "kfac-accumulate": ("kfac", "mlp", dict(update_freq=1, inv_freq=1, accumulate=2), "ce"),
    "ekfac-defaults": ("ekfac", "mlp", {}, "ce"),
    "ekfac-freq1": ("ekfac", "mlp", dict(update_freq=1, inv_freq=2), "ce"),
    "ekfac-diag2-decay0": ("ekfac", "mlp", dict(update_freq=1, inv_freq=3, diag_freq=2, diag_decay=0.0), "ce"),
    "ekfac-wd-clip": ("ekfac", "mlp", dict(update_freq=1, inv_freq=2, weight_decay=1e-2, kl_clip=1e-4), "ce"),
    "ekfac-factored": ("ekfac", "mlp-wide-in", dict(update_freq=1, inv_freq=2, momentum=0.0, batch=4), "ce"),
    "ekfac-factored-diag2": ("ekfac", "mlp-wide-in", dict(update_freq=2, inv_freq=2, diag_freq=2, batch=2), "ce"),
    "ekfac-true": ("ekfac", "mlp", dict(update_freq=1, inv_freq=2, fisher="true", seed=4), "ce"),
    "ekfac-ggn-cnn": ("ekfac", "cnn", dict(update_freq=1, inv_freq=2, fisher="ggn"), "ce"),
    "ekfac-adaptive": ("ekfac", "mlp-norm", dict(update_freq=1, inv_freq=2, diag_freq=2, adaptive_damping=True,
                                                 damping_interval=2, adaptive_step=True), "ce"),
    "ekfac-fallback-groups": ("ekfac", "mlp-norm", dict(update_freq=1, inv_freq=2, groups=True), "ce"),
    "path-sgd": ("path-sgd", "mlp", dict(lr=0.05), "ce"),
    "path-sgd-momentum-wd": ("path-sgd", "mlp", dict(lr=0.05, momentum=0.9, weight_decay=1e-3), "ce"),
    "path-sgd-first-step": ("path-sgd", "mlp", dict(lr=0.05, normalize="first-step", momentum=0.5), "ce"),
    "path-sgd-groups": ("path-sgd", "mlp", dict(lr=0.05, momentum=0.9, groups=True), "ce"),
    "path-sgd-cnn": ("path-sgd", "cnn", dict(lr=0.05, momentum=0.9, weight_decay=1e-3, input_shape=(1, 5, 5)),
                     "ce"),
    "path-sgd-rnn": ("path-sgd", "rnn", dict(lr=0.01), "ce"),
    "path-sgd-rnn-k12-first-step": ("path-sgd", "rnn", dict(lr=0.01, include_kappa2=True,
                                                            normalize="first-step", momentum=0.9), "ce"),
    "path-sgd-wide": ("path-sgd", "wide", dict(lr=0.05), "ce"),
    "path-sgd-wide-momentum-wd": ("path-sgd", "wide", dict(lr=0.05, momentum=0.9, weight_decay=1e-3), "ce"),
}

_CLASSES = {"kfac": KFAC, "ekfac": EKFAC, "path-sgd": PathSGD}


def _groups(model: nn.Module, lr: float) -> list[dict]:
    params = list(model.parameters())
    return [{"params": params[:-2]}, {"params": params[-2:], "lr": lr / 2}]


def build(name: str) -> tuple[nn.Module, torch.optim.Optimizer, dict]:
    """Case ``name``'s model and optimizer (and the loop's own options: batch size, accumulation)."""
    kind, model_name, options, _ = CASES[name]
    options = dict(options)
    loop = {"batch": options.pop("batch", 8), "accumulate": options.pop("accumulate", 1)}
    model = MODELS[model_name](0)
    if options.pop("groups", False):
        options["param_groups"] = _groups(model, options.get("lr", 0.05))
    return model, _CLASSES[kind](model, **options), loop


def run(name: str, built: tuple | None = None) -> list[torch.Tensor]:
    """Case ``name``'s parameters after ``STEPS`` steps (of ``built``, the case's :func:`build`, if given)."""
    model, opt, loop = built or build(name)
    model_name, loss_name = CASES[name][1], CASES[name][3]
    g = torch.Generator().manual_seed(11)
    for _ in range(STEPS):
        batches = []
        for _ in range(loop["accumulate"]):
            x = torch.randn(loop["batch"], *INPUTS[model_name], generator=g, dtype=torch.float64)
            y = (torch.randn(loop["batch"], 3, generator=g, dtype=torch.float64) if loss_name == "mse"
                 else torch.randint(0, 3, (loop["batch"],), generator=g))
            batches.append((x, y))

        def closure(batches=batches):
            opt.zero_grad()
            total = None
            for x, y in batches:
                out = model(x)
                loss = F.mse_loss(out, y) if loss_name == "mse" else F.cross_entropy(out, y)
                (loss / len(batches)).backward()
                total = loss.detach() if total is None else total + loss.detach()
            return total
        opt.step(closure)
    return [p.detach().clone() for p in model.parameters()]


def summary(params: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Every parameter in full, or (over ``FULL_LIMIT`` entries) fixed entries and random projections."""
    out = []
    for i, p in enumerate(params):
        flat = p.reshape(-1)
        if flat.numel() <= FULL_LIMIT:
            out.append({"full": flat.clone()})
            continue
        g = torch.Generator().manual_seed(100 + i)
        idx = torch.randint(0, flat.numel(), (64,), generator=g)
        proj = torch.randn(8, flat.numel(), generator=g, dtype=torch.float64)
        out.append({"index": idx, "entries": flat[idx].clone(), "projections": proj @ flat})
    return out


def compare(stored: list[dict[str, torch.Tensor]], params: list[torch.Tensor]) -> float:
    """The largest relative difference between the stored summary and that of ``params`` (0.0: identical)."""
    worst = 0.0
    for rec, now in zip(stored, summary(params), strict=True):
        for key in ("full", "entries", "projections"):
            if key in rec:
                a, b = rec[key], now[key]
                scale = max(float(a.abs().max()), 1e-300)
                worst = max(worst, float((a - b).abs().max()) / scale)
    return worst


def main() -> None:
    torch.set_num_threads(1)
    records = {name: summary(run(name)) for name in CASES}
    torch.save({"steps": STEPS, "torch": str(torch.__version__), "cases": records}, STORED)
    print(f"wrote {len(records)} cases to {STORED}", file=sys.stderr)


if __name__ == "__main__":
    main()
