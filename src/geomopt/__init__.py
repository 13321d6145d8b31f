"""geomopt: geometry of optimization and implicit regularization in deep learning.

Subpackages: ``nn`` (models), ``geometry`` (path norms and scales, node rescaling),
``optim`` (Path-SGD), ``data`` (datasets and loaders), ``train`` (the training engine),
``experiments`` (paper reproductions), ``report`` (figures and the HTML report).
"""

from geomopt import geometry, nn, optim

__version__ = "0.1.0"
__all__ = ["geometry", "nn", "optim", "__version__"]
