"""geomopt: geometry of optimization and implicit regularization in deep learning.

Subpackages: ``nn`` (models: MLP, CNN, ReLU/unitary/BN recurrent nets), ``geometry`` (path norms and
scales, node rescaling), ``optim`` (Path-SGD, K-FAC, EKFAC), ``curvature`` (Kronecker factors, exact
Hessian/GGN/Fisher operators, spectral tools), ``measures`` (generalization measures), ``implicit``
(the implicit-regularization lab), ``prune`` (pruning by loss modelling), ``data`` (datasets and
loaders), ``train`` (the training engine), ``sweep`` (many runs, local or Ray), ``experiments`` (paper
reproductions), ``report`` (figures and the HTML report). The command line: ``geomopt --help``.
"""

from geomopt import geometry, nn, optim

__version__ = "0.1.0"
__all__ = ["geometry", "nn", "optim", "__version__"]
