"""A factory module whose import the security tests watch: a refused reference must never import it."""

from tests.train.factories import small_mlp as factory

__all__ = ["factory"]
