"""Curvature shared by optimizers, measures and pruning: Kronecker factors (K-FAC, EKFAC) from one
hook-based collection of layer inputs and output gradients, and one registry of supported layers.

Example:
    >>> from geomopt.curvature import compute_kfac, compute_ekfac
    >>> F = compute_kfac(model, (x, y), fisher="empirical")      # linear operator
    >>> F.mv(v); F.solve(v, damping=1e-3); F.to_dense()          # v in the order of F.params
"""

from geomopt.curvature.capture import (FISHERS, LIKELIHOODS, Capture, backprop_output_grads,
                                       hessian_sqrt_columns, nll_grad, sample_targets)
from geomopt.curvature.kronecker import (EKFAC, KFAC, captured_diagonal, compute_ekfac, compute_kfac, damped_inverse,
                                         damped_solve, diagonal_from_rotated, eigenbasis_diagonal, factor_precision,
                                         factored_rotation, kronecker_factors, pi_split, symeig)
from geomopt.curvature.layers import (SUPPORTED_LAYERS, Conv2dHandler, LayerHandler, LinearHandler, layer_handler,
                                      per_example_gradients, register_layer, supported_layers, unsupported_reason)

__all__ = ["Capture", "backprop_output_grads", "sample_targets", "nll_grad", "hessian_sqrt_columns", "FISHERS",
           "LIKELIHOODS", "KFAC", "EKFAC", "compute_kfac", "compute_ekfac", "kronecker_factors",
           "eigenbasis_diagonal", "captured_diagonal", "per_example_gradients", "pi_split", "symeig",
           "damped_inverse", "damped_solve",
           "factor_precision", "factored_rotation", "diagonal_from_rotated", "SUPPORTED_LAYERS",
           "LayerHandler", "LinearHandler", "Conv2dHandler", "register_layer", "layer_handler",
           "supported_layers", "unsupported_reason"]
