r"""Pruning scores from local models of the loss.

Laurent, Ballas, George, Schwartz & Vincent, "Revisiting Loss Modelling for Unstructured
Pruning", 2020. Removing weight i (delta theta_i = -theta_i) changes the loss by, to second order,

    delta L_i ~= -g_i theta_i + 0.5 d_i theta_i^2,

with g the mean gradient and d a diagonal curvature (Gauss-Newton / Fisher). The score of a
weight, lowest pruned first, is

    r_i = | -g_i theta_i + 0.5 d_i theta_i^2 | + 0.5 lambda theta_i^2,

where the locality penalty lambda keeps each pruning step small. Criteria:
``mp`` (magnitude: g = 0, d = 1), ``lm`` (linear model: d = 0), ``qm`` (quadratic model),
``obd`` (Optimal Brain Damage: g = 0), and ``kobs`` (Optimal Brain Surgeon with the K-FAC
approximation H ~ A (x) G of the same Gauss-Newton matrix: saliency theta^2 / (2 [H^-1]_qq) and a
compensating update of the remaining weights; Linear layers). The exact diagonal of the Gauss-Newton matrix
G = sum_n J_n^T H_n J_n (H_n the Hessian of the loss in the network outputs) and the Kronecker factors
come from :mod:`geomopt.curvature` (one capture, :func:`~geomopt.curvature.gauss_newton_statistics`);
layers outside the curvature registry use per-example, per-class backward passes vectorized with
``torch.func.vmap``: with H_n = sum_c s_c s_c^T, diag(G) = sum_n sum_c (J_n^T s_c)^2.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap

from geomopt.curvature import gauss_newton_statistics, hessian_sqrt_columns, layer_handler

CRITERIA = ("mp", "lm", "qm", "obd", "kobs")


def prunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights of Linear/Conv layers, by name (biases are kept, as in the paper)."""
    out = {}
    for mod_name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            name = f"{mod_name}.weight" if mod_name else "weight"
            weight = getattr(module, "weight_orig", module.weight)
            out[name] = weight
    if not out:
        raise ValueError(f"{type(model).__name__} has no Linear/Conv layer to prune")
    return out


def _take(loader: Iterable, n_examples: int, device: torch.device) -> tuple[Tensor, Tensor]:
    xs, ys, count = [], [], 0
    for x, y in loader:
        xs.append(x)
        ys.append(y)
        count += len(y)
        if count >= n_examples:
            break
    if count == 0:
        raise ValueError("the loader yielded no examples to estimate the scores on")
    return torch.cat(xs)[:n_examples].to(device), torch.cat(ys)[:n_examples].to(device)


def _captured_statistics(model: nn.Module, names: list[str], x: Tensor, y: Tensor, chunk: int, kronecker: bool
                         ) -> tuple[dict[str, Tensor], dict[str, tuple[Tensor, Tensor]] | None] | None:
    """The Gauss-Newton diagonal of the weights ``names`` (and, with ``kronecker``, their K-FAC factors
    without the bias row: A = E[a a^T] over layer inputs, G = E[sum_c g_c g_c^T]) from one capture of
    :func:`geomopt.curvature.gauss_newton_statistics`; None when a layer is not in the curvature registry."""
    modules = {n: model.get_submodule(n[:-len(".weight")]) if n != "weight" else model for n in names}
    layers = [(n, m, layer_handler(m)) for n, m in modules.items()]
    if any(h is None for _, _, h in layers):
        return None
    if kronecker and not all(isinstance(m, nn.Linear) for m in modules.values()):
        raise ValueError("Kronecker factors (kobs) need every prunable layer to be an nn.Linear")
    batches = [(x[i:i + chunk], y[i:i + chunk]) for i in range(0, len(y), chunk)]
    stats = gauss_newton_statistics(model, batches, layers, fisher="ggn", likelihood="categorical",
                                    kronecker=kronecker)
    diag = {n: h.from_matrix(m, stats[n]["diag"])[0] for n, m, h in layers}
    kfac = {n: (stats[n]["A"][:-1, :-1] if m.bias is not None else stats[n]["A"], stats[n]["G"])
            for n, m, h in layers} if kronecker else None
    return diag, kfac


def loss_statistics(model: nn.Module, loader: Iterable, *, n_examples: int = 1000, gradient: bool = True,
                    curvature: bool = True, chunk: int = 32, method: str = "auto",
                    kronecker: bool = False) -> dict[str, Any]:
    """Mean loss, mean gradient and (optionally) the exact Gauss-Newton diagonal of the mean
    cross-entropy over the first ``n_examples`` of ``loader``.

    ``method``: how the Gauss-Newton diagonal is computed: ``"hooks"`` (layers of the curvature
    registry, Linear and Conv2d: one capture of :mod:`geomopt.curvature`, one forward and C backward
    passes per chunk, :func:`geomopt.curvature.gauss_newton_statistics`), ``"vmap"`` (any layer:
    per-example, per-class gradients by ``torch.func.vmap``), or ``"auto"`` (hooks when possible).
    ``kronecker``: also return ``"kfac"``: {name: (A, G)}, the K-FAC factors of the same Gauss-Newton
    matrix from the same capture (A = E[a a^T] over layer inputs, G = E[sum_c g_c g_c^T] over output
    gradients; Linear layers only), for the Kronecker OBS criterion.

    Returns:
        ``{"loss": float, "grad": {name: Tensor} or None, "ggn_diag": {name: Tensor} or None, "n": int}``,
        for the parameters of :func:`prunable_parameters` (masked weights included: their
        effective value is 0).
    """
    device = next(model.parameters()).device
    x, y = _take(loader, n_examples, device)
    was_training = model.training
    model.eval()
    if not gradient and not curvature:
        with torch.no_grad():
            loss = sum(nn.functional.cross_entropy(model(x[i:i + 256]), y[i:i + 256], reduction="sum").item()
                       for i in range(0, len(y), 256))
        model.train(was_training)
        return {"loss": loss / len(y), "grad": None, "ggn_diag": None, "n": len(y)}
    names = prunable_parameters(model)
    params = {k: v.detach() for k, v in model.named_parameters()}
    effective = _effective_weights(model)
    target = {k: effective[k] for k in names}
    others = {k: v for k, v in params.items() if k not in {_orig(n) for n in names}}
    buffers = {k: v for k, v in model.named_buffers() if not k.endswith("_mask")}

    def logits_fn(weights: dict[str, Tensor], inputs: Tensor) -> Tensor:
        with _masks_off(model):
            return functional_call(model, {**others, **buffers, **weights}, (inputs,))

    if method not in ("auto", "hooks", "vmap"):
        raise ValueError(f"loss_statistics: method must be 'auto', 'hooks' or 'vmap', got {method!r}")
    grads = {k: torch.zeros_like(v) for k, v in target.items()}
    diag = {k: torch.zeros_like(v) for k, v in target.items()} if curvature else None
    kfac: dict[str, tuple[Tensor, Tensor]] | None = None
    if kronecker and (not curvature or method == "vmap"):
        raise ValueError("loss_statistics(kronecker=True) needs curvature=True and the hooks method")
    if curvature and method != "vmap":
        fast = _captured_statistics(model, list(target), x, y, max(chunk, 256), kronecker)
        if fast is None and (kronecker or method == "hooks"):
            raise ValueError(f"loss_statistics(method='hooks'{', kronecker=True' if kronecker else ''}) needs every "
                             "prunable layer to be in the curvature registry (geomopt.curvature.supported_layers: "
                             "Linear, Conv2d); use method='vmap'")
        if fast is not None:
            (diag, kfac), curvature = fast, False  # computed: skip the vmap pass below
    total = 0.0
    n = len(y)
    for start in range(0, n, chunk):
        xb, yb = x[start:start + chunk], y[start:start + chunk]
        weights = {k: v.clone().requires_grad_(True) for k, v in target.items()}
        with torch.enable_grad():
            loss = nn.functional.cross_entropy(logits_fn(weights, xb), yb, reduction="sum")
            g = torch.autograd.grad(loss, list(weights.values()))
        total += loss.item()
        for k, gk in zip(weights, g):
            grads[k] += gk
        if curvature:
            def per_example(xi: Tensor) -> dict[str, Tensor]:
                out, pullback = vjp(lambda w: logits_fn(w, xi.unsqueeze(0))[0], target)
                factor = hessian_sqrt_columns(out.detach(), "categorical")  # (C, C), rows s_c
                (cols,) = vmap(pullback)(factor)  # per class: J^T s_c
                return {k: (v ** 2).sum(0) for k, v in cols.items()}

            for k, v in vmap(per_example)(xb).items():
                diag[k] += v.sum(0) / n
    model.train(was_training)
    return {"loss": total / n, "kfac": kfac, "grad": {k: v / n for k, v in grads.items()},
            "ggn_diag": diag, "n": n}


def scores(model: nn.Module, criterion: str, stats: dict[str, Any] | None = None, *, locality: float = 0.0,
           damping: float = 1e-3) -> dict[str, Tensor]:
    """r_i = |-g_i theta_i + 0.5 d_i theta_i^2| + 0.5 lambda theta_i^2 for every prunable weight.

    Args:
        model: the (possibly already masked) network.
        criterion: ``mp``, ``lm``, ``qm`` or ``obd``.
        stats: :func:`loss_statistics` output (needed by lm, qm, obd).
        locality: lambda, the penalty on large weights (0 = none).
        damping: kobs only: each factor gets damping * (its mean eigenvalue) added to its diagonal.

    Already-pruned weights get score +inf so that they are never counted twice.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown pruning criterion {criterion!r}; choose one of {CRITERIA}")
    if criterion != "mp" and stats is None:
        raise ValueError(f"criterion {criterion!r} needs the gradient/curvature statistics (loss_statistics)")
    if criterion in ("qm", "obd") and stats["ggn_diag"] is None:
        raise ValueError(f"criterion {criterion!r} needs the curvature: loss_statistics(..., curvature=True)")
    if criterion == "kobs" and not stats.get("kfac"):
        raise ValueError("criterion 'kobs' needs the Kronecker factors: loss_statistics(..., kronecker=True)")
    effective = _effective_weights(model)
    masks = _masks(model)
    out = {}
    for name in prunable_parameters(model):
        theta = effective[name].detach()
        if criterion == "kobs":
            a_inv, g_inv = kfac_inverses(stats["kfac"][name], damping)
            r = kronecker_obs(theta, a_inv, g_inv)[0] + 0.5 * locality * theta ** 2
            if name in masks:
                r = torch.where(masks[name].bool(), r, torch.full_like(r, float("inf")))
            out[name] = r
            continue
        if criterion == "mp":
            g, d = torch.zeros_like(theta), torch.ones_like(theta)
        else:
            g = torch.zeros_like(theta) if criterion == "obd" else stats["grad"][name]
            d = torch.zeros_like(theta) if criterion == "lm" else stats["ggn_diag"][name]
        r = (-g * theta + 0.5 * d * theta ** 2).abs() + 0.5 * locality * theta ** 2
        if name in masks:
            r = torch.where(masks[name].bool(), r, torch.full_like(r, float("inf")))
        out[name] = r
    return out


def predicted_loss_change(criterion: str, stats: dict[str, Any], removed: dict[str, Tensor],
                          weights: dict[str, Tensor]) -> float | None:
    """The loss model's prediction of L(pruned) - L(dense) for removing ``removed`` (boolean masks)
    of ``weights``: sum over removed weights of -g theta + 0.5 d theta^2 (lm: d = 0, obd: g = 0).
    ``None`` for magnitude pruning, which models no loss."""
    if criterion == "mp":
        return None
    if criterion == "kobs":  # sum of single-weight OBS saliencies (ignores interactions between removals)
        return float(sum(kronecker_obs(weights[k], *kfac_inverses(stats["kfac"][k], 1e-3))[0][rm].sum()
                         for k, rm in removed.items()))
    total = 0.0
    for name, rm in removed.items():
        theta = weights[name][rm]
        g = stats["grad"][name][rm] if criterion != "obd" else torch.zeros_like(theta)
        d = stats["ggn_diag"][name][rm] if criterion != "lm" else torch.zeros_like(theta)
        total += float((-g * theta + 0.5 * d * theta ** 2).sum())
    return total


# --- masks as torch.nn.utils.prune keeps them --------------------------------------------------

def _orig(name: str) -> str:
    return name[:-len("weight")] + "weight_orig"


def _masks(model: nn.Module) -> dict[str, Tensor]:
    return {name[:-len("_mask")]: buf for name, buf in model.named_buffers() if name.endswith("weight_mask")}


def _effective_weights(model: nn.Module) -> dict[str, Tensor]:
    """Weight values as the forward pass sees them (original times mask where pruned)."""
    masks = _masks(model)
    out = {}
    for name, weight in prunable_parameters(model).items():
        out[name] = weight.detach() * masks[name] if name in masks else weight.detach()
    return out


class _masks_off:
    """Disable torch.nn.utils.prune's forward pre-hooks (functional_call passes effective weights)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.saved: list[tuple[nn.Module, dict]] = []

    def __enter__(self):
        from torch.nn.utils.prune import BasePruningMethod
        for module in self.model.modules():
            hooks = {k: h for k, h in module._forward_pre_hooks.items() if isinstance(h, BasePruningMethod)}
            if hooks:
                for k in hooks:
                    del module._forward_pre_hooks[k]
                self.saved.append((module, hooks))
        return self

    def __exit__(self, *exc):
        for module, hooks in self.saved:
            module._forward_pre_hooks.update(hooks)
        return False


# --- Optimal Brain Surgeon ----------------------------------------------------------------------

def obs_saliency(theta: Tensor, hessian_inverse_diag: Tensor) -> Tensor:
    """OBS saliency theta_q^2 / (2 [H^-1]_qq) (Hassibi & Stork 1993): the loss increase of removing
    weight q and letting the others compensate optimally, for a quadratic loss at a minimum."""
    return theta ** 2 / (2 * hessian_inverse_diag)


def obs_update(theta: Tensor, hessian_inverse: Tensor, q: int) -> Tensor:
    """The compensating update delta = -theta_q H^-1 e_q / [H^-1]_qq (flat vectors): after it,
    theta + delta has entry q exactly 0."""
    col = hessian_inverse[:, q]
    return -theta[q] * col / col[q]


def kronecker_obs(weight: Tensor, a_inverse: Tensor, g_inverse: Tensor) -> tuple[Tensor, Tensor]:
    """OBS for a Linear weight W (out, in) with H ~= A (x) G (K-FAC; A over inputs, G over outputs).

    [H^-1]_{(i,j),(i,j)} = [G^-1]_ii [A^-1]_jj, and the compensating update for removing W_ij is
    -W_ij / ([G^-1]_ii [A^-1]_jj) * G^-1[:, i] A^-1[j, :]. Returns (saliency (out, in), the
    function-free data needed by :func:`kronecker_obs_update`: the inverse diagonal product).
    """
    inv_diag = torch.outer(torch.diagonal(g_inverse), torch.diagonal(a_inverse))
    return obs_saliency(weight, inv_diag), inv_diag


def kronecker_obs_update(weight: Tensor, removed: Tensor, a_inverse: Tensor, g_inverse: Tensor) -> Tensor:
    """Sum of the single-weight OBS compensations of every removed (i, j) under H ~= A (x) G:
    delta W = -G^-1 diag-scaled(W_removed) A^-1, with W_removed_ij = W_ij / ([G^-1]_ii [A^-1]_jj)
    on removed entries, 0 elsewhere. (The removed entries themselves are then masked to 0.)"""
    inv_diag = torch.outer(torch.diagonal(g_inverse), torch.diagonal(a_inverse))
    scaled = torch.where(removed, weight / inv_diag, torch.zeros_like(weight))
    return -(g_inverse @ scaled @ a_inverse)


def kfac_inverses(factors: tuple[Tensor, Tensor], damping: float) -> tuple[Tensor, Tensor]:
    """Damped inverses (A + d_A I)^-1, (G + d_G I)^-1 with d = damping * mean eigenvalue (float64)."""
    out = []
    for f in factors:
        f64 = f.double()
        eye = torch.eye(f.shape[0], dtype=torch.float64, device=f.device)
        shift = damping * max(float(torch.trace(f64)) / f.shape[0], 1e-12)
        out.append(torch.linalg.inv(f64 + shift * eye).to(f.dtype))
    return out[0], out[1]
