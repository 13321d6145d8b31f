"""Implicit regularization lab: matrix sensing and completion with (deep) factorized gradient
descent, the minimum nuclear norm baseline, and deep linear networks.

Gunasekar et al. 2017 (implicit regularization in matrix factorization); Arora, Cohen, Hu & Luo
2019 (deep matrix factorization); Arora, Cohen & Hazan 2018 (acceleration by
overparameterization); Arora, Cohen, Golowich & Hu 2019 (deficiency margin).

- ``operators``: :class:`GaussianSensing`, :class:`Completion`, :func:`random_psd`, :func:`random_low_rank`.
- ``factorized``: :func:`init_factors`, :func:`run_factorized` (batched runs of any depth),
  :func:`run_sweep`, the end-to-end update rule.
- ``spectral``: nuclear norm, effective rank (Roy & Vetterli 2007), distances.
- ``nuclear``: :func:`min_nuclear_norm` (cvxpy SDP or ADMM on the operator).
- ``deep_linear``: l_p regression objective, balancedness, deficiency margin.
- ``geometry`` (imported on its own: it uses ``geomopt.optim``): the targets of a geometry's implicit bias on
  linear models (Gunasekar, Lee, Soudry & Srebro 2018): max margins per norm, min Bregman divergence, AdaGrad's
  frozen-preconditioner limit (cvxpy), and the runs that approach them.
"""

from geomopt.implicit.deep_linear import (
    RegressionObjective,
    balancedness,
    convergence_bound,
    deficiency_margin,
    run_scaled_gd,
    synthetic_regression,
)
from geomopt.implicit.factorized import (
    INITS,
    FactorizedResult,
    SensingObjective,
    balanced_factors,
    end_to_end,
    end_to_end_direction,
    end_to_end_step,
    end_to_end_vector_step,
    factor_grads,
    factor_shapes,
    init_factors,
    run_end_to_end,
    run_factorized,
    run_sweep,
)
from geomopt.implicit.nuclear import NuclearResult, min_nuclear_norm, solve_admm, solve_cvxpy
from geomopt.implicit.operators import Completion, GaussianSensing, MeasurementOperator, random_low_rank, random_psd
from geomopt.implicit.spectral import effective_rank, nuclear_norm, psd_power, relative_distance, singular_values

__all__ = [
    "Completion", "FactorizedResult", "GaussianSensing", "INITS", "MeasurementOperator", "NuclearResult",
    "RegressionObjective", "SensingObjective", "balanced_factors", "balancedness", "convergence_bound",
    "deficiency_margin", "effective_rank", "end_to_end", "end_to_end_direction", "end_to_end_step",
    "end_to_end_vector_step", "factor_grads", "factor_shapes", "init_factors", "min_nuclear_norm", "nuclear_norm",
    "psd_power", "random_low_rank", "random_psd", "relative_distance", "run_end_to_end", "run_factorized",
    "run_sweep", "run_scaled_gd", "singular_values", "solve_admm", "solve_cvxpy", "synthetic_regression",
]
