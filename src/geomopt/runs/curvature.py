"""Curvature spectra of a trained run directory (``geomopt curvature RUN_DIR``): the largest eigenvalues
(Lanczos), the trace (Hutch++) and the spectral density (stochastic Lanczos quadrature) of the Hessian, GGN or
Fisher of the training loss, through :mod:`geomopt.curvature`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from geomopt.checks import check_int, check_number
from geomopt.curvature import curvature_operator, hutchinson_trace, lanczos_top_eigenvalues, read_batches, slq_density
from geomopt.data import make_loader
from geomopt.figures import plot_curves
from geomopt.runs.measure import load_run
from geomopt.train.checkpoint import write_json

CURVATURE_FILE = "curvature.json"


def curvature_run(run_dir: str | Path, *, top_k: int | None = None, trace: bool = False, spectrum: bool = False,
                  operator: str = "hessian", examples: int | None = 1000, tol: float = 1e-3, trace_tol: float = 0.01,
                  steps: int = 40, probes: int = 10, seed: int = 0) -> dict[str, Any]:
    """Spectral summaries of a trained run's curvature on its training set (``geomopt curvature RUN``).

    ``operator``: ``hessian``, ``ggn`` or ``fisher`` (the true Fisher) of the training cross-entropy on the
    first ``examples`` training examples (:mod:`geomopt.curvature.operators`). ``top_k``: the largest
    eigenvalues by Lanczos (relative residual ``tol``); ``trace``: Hutch++ with 40 sign vectors (stop rule
    ``trace_tol``);
    ``spectrum``: stochastic Lanczos quadrature (``probes`` x ``steps``), its density written to
    ``RUN_DIR/spectrum.png`` and its nodes and weights to ``curvature.json``.

    Returns the result, also written to ``RUN_DIR/curvature.json`` (only when every number is finite).

    Raises:
        ValueError: nothing asked for, or a count (``--top-k``, ``--examples``, ``steps``, ``probes``) or a
            tolerance out of range.
        FloatingPointError: a NaN or inf in the weights, the data or a product (nothing is written).
    """
    if top_k is None and not trace and not spectrum:
        raise ValueError("curvature: ask for at least one of --top-k K, --trace, --spectrum")
    for flag, value in (("--top-k", top_k), ("--examples", examples), ("steps", steps), ("probes", probes)):
        if value is not None:
            check_int("curvature", flag, value, low=1)
    check_number("curvature", "tol", tol, low=0, low_open=True)
    check_number("curvature", "trace_tol", trace_tol, low=0, low_open=True)
    run_dir = Path(run_dir)
    config, model, _, bundle = load_run(run_dir)
    batches = read_batches(make_loader(bundle.train, 1000, shuffle=False), None, examples)
    op = curvature_operator(operator, model, batches)
    gen = torch.Generator().manual_seed(seed)
    result: dict[str, Any] = {"operator": operator, "examples": op.num_examples, "parameters": op.shape[0],
                              "seed": seed}
    start = time.perf_counter()
    if top_k is not None:
        eig = lanczos_top_eigenvalues(op, top_k, tol=tol, generator=gen)
        result["top_eigenvalues"] = eig.values.tolist()
        result["top_converged"] = eig.converged
    if trace:
        tr = hutchinson_trace(op, tol=trace_tol, deflate=min(40, op.shape[0] // 2), generator=gen)
        result.update(trace=tr.estimate, trace_stderr=tr.stderr, trace_probes=tr.samples, trace_converged=tr.converged)
    if spectrum:
        dens = slq_density(op, steps=steps, probes=probes, generator=gen)
        lo, hi = float(dens.nodes.min()), float(dens.nodes.max())
        sigma = 0.01 * (hi - lo) if hi > lo else 1e-3
        grid = dens.grid(500, sigma=sigma)
        values = dens.density(grid, sigma)
        plot_curves({f"{operator} spectral density ({op.shape[0]} parameters)":
                     {"SLQ": (grid.tolist(), values.clamp(min=1e-8 * float(values.max())).tolist())}},
                    run_dir / "spectrum.png", xlabel="eigenvalue", ylabel="density", logy=True)
        result.update(spectrum_nodes=dens.nodes.tolist(), spectrum_weights=dens.weights.tolist(),
                      spectrum_sigma=sigma, spectrum_figure="spectrum.png")
    result["products"] = op.products
    result["seconds"] = round(time.perf_counter() - start, 3)
    result["config"] = config.to_dict()
    write_json(run_dir / CURVATURE_FILE, result)
    return result
