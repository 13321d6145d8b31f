"""Optimizers by name, for the training engine and the command line."""

from __future__ import annotations

import torch
from torch import nn

from geomopt.optim.kfac import EKFAC, KFAC
from geomopt.optim.muon import Muon
from geomopt.optim.path_sgd import PathSGD
from geomopt.optim.shampoo import Shampoo
from geomopt.optim.soap import SOAP

OPTIMIZERS = ("sgd", "momentum", "adam", "adagrad", "path-sgd", "path-sgd-first-step", "path-sgd-k12-first-step",
              "kfac", "ekfac", "muon", "shampoo", "soap")
KRONECKER_OPTIONS = ("damping", "factor_decay", "update_freq", "inv_freq", "fisher", "kl_clip", "diag_freq",
                     "adaptive_damping", "adaptive_step")


def build_optimizer(name: str, model: nn.Module, *, lr: float, momentum: float | None = None,
                    weight_decay: float = 0.0, **kronecker) -> torch.optim.Optimizer:
    """Build an optimizer by name.

    ``path-sgd-first-step``: PathSGD with ``normalize="first-step"`` (the step times the first step's
    ratio, as in the first author's code); ``path-sgd-k12-first-step`` also with kappa1 + kappa2 (ReLU RNNs).
    ``momentum``: for ``momentum`` (SGD with heavy ball) default 0.9; for ``sgd`` and
    ``path-sgd`` default 0 (``path-sgd`` takes any value in [0, 1)); ``adam``/``adagrad`` reject it;
    ``kfac``/``ekfac`` default 0.9 (the class's default); ``muon`` 0.95 (its Nesterov momentum, the class's
    default), its non-matrix parameters (biases) taking AdamW steps at ``lr``; ``shampoo`` 0 (heavy ball on the
    preconditioned direction; the class's other defaults); ``soap`` rejects it (Adam's betas are the class's
    ``(0.95, 0.95)``). ``weight_decay`` is decoupled for ``muon``, ``shampoo`` and ``soap``.
    ``kronecker``: options of :class:`KFAC`/:class:`EKFAC`
    (``damping``, ``factor_decay``, ``update_freq``, ``inv_freq``, ``fisher``, ``kl_clip``,
    ``adaptive_damping``, ``adaptive_step``; ``diag_freq`` for ``ekfac`` only), for those two only.
    """
    unknown = sorted(set(kronecker) - set(KRONECKER_OPTIONS))
    if unknown:
        raise ValueError(f"build_optimizer: unknown option(s) {unknown}; valid: {KRONECKER_OPTIONS}")
    if kronecker and name not in ("kfac", "ekfac"):
        raise ValueError(f"options {sorted(kronecker)} are for kfac/ekfac, not {name!r}")
    if momentum is not None and name in ("adam", "adagrad", "soap"):
        raise ValueError(f"optimizer {name!r} takes no momentum; drop --momentum")
    params = model.parameters()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum or 0.0, weight_decay=weight_decay)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9 if momentum is None else momentum,
                               weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
    if name == "path-sgd":
        return PathSGD(model, lr=lr, momentum=momentum or 0.0, weight_decay=weight_decay)
    if name in ("path-sgd-first-step", "path-sgd-k12-first-step"):
        return PathSGD(model, lr=lr, momentum=momentum or 0.0, weight_decay=weight_decay, normalize="first-step",
                       include_kappa2=name == "path-sgd-k12-first-step")
    if name == "muon":
        return Muon(params, lr=lr, weight_decay=weight_decay, momentum=0.95 if momentum is None else momentum)
    if name == "shampoo":
        return Shampoo(params, lr=lr, weight_decay=weight_decay, momentum=momentum or 0.0)
    if name == "soap":
        return SOAP(params, lr=lr, weight_decay=weight_decay)
    if name == "kfac" and kronecker.pop("diag_freq", 1) != 1:
        raise ValueError("diag_freq is an EKFAC option (K-FAC has no eigenbasis diagonal); use --optimizer ekfac")
    if name in ("kfac", "ekfac"):
        cls = KFAC if name == "kfac" else EKFAC
        if momentum is not None:
            kronecker["momentum"] = momentum
        return cls(model, lr=lr, weight_decay=weight_decay, **kronecker)  # the class's defaults otherwise
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
