"""Generalization measures: norms, path norms, margins, margin bounds, sharpness, PAC-Bayes flatness,
tangent-kernel alignment, and rank correlation with the generalization gap.

Example:
    >>> from geomopt.measures import compute
    >>> result = compute(model, train_loader, init_model=init, measures="all", margin_quantile=0.05)
    >>> result["l2_path_over_margin"], result["sharpness"], result["pacbayes_mag_sigma"]
"""

from geomopt.measures.core import GROUPS, MEASURES, compute
from geomopt.measures.layers import (LayerInfo, MeasureError, fold_batchnorm, operator_matrix, spectral_norm,
                                     weighted_layers)
from geomopt.measures.norms import margin_quantile, margins
from geomopt.measures.ntk import (TrajectoryComplexity, alignment, center_kernel, centered_targets, jacobian,
                                  kernel_alignment, logging_points, ntk_gram)
from geomopt.measures.rank import bootstrap_kendall, granulated_kendall, kendall_tau
from geomopt.measures.two_layer import BOUNDS as TWO_LAYER_BOUNDS, two_layer_measures, two_layer_weights
from geomopt.measures.sharpness import (DatasetObjective, bisection_sigma, function_objective, kl_term,
                                        pac_bayes_bound, perturbation_std, sample_perturbation, search_sigma,
                                        worst_case_sharpness)

__all__ = ["compute", "GROUPS", "MEASURES", "MeasureError", "LayerInfo", "fold_batchnorm", "operator_matrix", "spectral_norm",
           "weighted_layers", "margins", "margin_quantile", "ntk_gram", "jacobian", "alignment", "center_kernel",
           "centered_targets", "kernel_alignment", "logging_points", "TrajectoryComplexity", "kendall_tau",
           "bootstrap_kendall", "granulated_kendall", "DatasetObjective", "function_objective", "worst_case_sharpness",
           "search_sigma", "bisection_sigma", "perturbation_std", "sample_perturbation", "kl_term", "pac_bayes_bound",
           "two_layer_measures", "two_layer_weights", "TWO_LAYER_BOUNDS"]
