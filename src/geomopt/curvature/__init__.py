"""Curvature shared by optimizers, measures and pruning: Kronecker factors (K-FAC, EKFAC) from one
hook-based collection of layer inputs and output gradients, and one registry of supported layers;
exact Hessian / GGN / Fisher operators (torch.func products) and spectral tools on any operator
(Lanczos, power iteration, Hutchinson trace and diagonal, stochastic Lanczos quadrature).

Example:
    >>> from geomopt.curvature import compute_kfac, compute_ekfac
    >>> F = compute_kfac(model, (x, y), fisher="empirical")      # linear operator
    >>> F.mv(v); F.solve(v, damping=1e-3); F.to_dense()          # v in the order of F.params
    >>> H = HessianOperator(model, loader)                       # exact, by Hessian-vector products
    >>> lanczos_top_eigenvalues(H, k=3).values, hutchinson_trace(H).estimate, slq_density(H)
"""

from geomopt.curvature.capture import (FISHERS, LIKELIHOODS, Capture, backprop_output_grads,
                                       hessian_sqrt_columns, nll_grad, output_hessian_gram,
                                       sample_targets)
from geomopt.curvature.kronecker import (EKFAC, KFAC, captured_diagonal, compute_ekfac, compute_kfac, damped_inverse,
                                         damped_solve, diagonal_from_rotated, eigenbasis_diagonal, factor_precision,
                                         factored_rotation, kronecker_factors, pi_split, spectral_inverse,
                                         symeig)
from geomopt.curvature.gauss_newton import captured_exact_diagonal, gauss_newton_statistics
from geomopt.curvature.operators import (FISHER_KINDS, OPERATORS, CurvatureOperator, FisherOperator, GGNOperator,
                                         HessianOperator, ScaledOperator, curvature_operator, read_batches)
from geomopt.curvature.spectral import (EigenResult, HutchinsonResult, Lanczos, SpectralDensity, as_operator,
                                        hutchinson_diagonal, hutchinson_trace, lanczos, lanczos_top_eigenvalues,
                                        power_iteration, slq_density)
from geomopt.curvature.layers import (SUPPORTED_LAYERS, Conv2dHandler, LayerHandler, LinearHandler, layer_handler,
                                      per_example_gradients, register_layer, supported_layers, unsupported_reason)

__all__ = ["Capture", "backprop_output_grads", "sample_targets", "nll_grad", "hessian_sqrt_columns",
           "output_hessian_gram", "FISHERS",
           "LIKELIHOODS", "KFAC", "EKFAC", "compute_kfac", "compute_ekfac", "kronecker_factors",
           "eigenbasis_diagonal", "captured_diagonal", "per_example_gradients", "pi_split", "symeig",
           "damped_inverse", "damped_solve", "spectral_inverse",
           "factor_precision", "factored_rotation", "diagonal_from_rotated", "SUPPORTED_LAYERS",
           "LayerHandler", "LinearHandler", "Conv2dHandler", "register_layer", "layer_handler",
           "supported_layers", "unsupported_reason", "CurvatureOperator", "HessianOperator", "GGNOperator",
           "FisherOperator", "ScaledOperator", "curvature_operator", "read_batches", "FISHER_KINDS", "OPERATORS",
           "Lanczos", "lanczos", "lanczos_top_eigenvalues", "power_iteration", "EigenResult", "hutchinson_trace",
           "hutchinson_diagonal", "HutchinsonResult", "slq_density", "SpectralDensity", "as_operator",
           "captured_exact_diagonal", "gauss_newton_statistics"]
