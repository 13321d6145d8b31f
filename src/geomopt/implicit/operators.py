"""Linear measurement operators and low-rank ground truths for matrix sensing and completion.

Gunasekar et al. (2017), "Implicit Regularization in Matrix Factorization"; Arora, Cohen, Hu
& Luo (2019), "Implicit Regularization in Deep Matrix Factorization".

A measurement operator ``A: R^{n1 x n2} -> R^m`` maps ``X`` to ``A(X)_i = <A_i, X>``; its
adjoint is ``A*(y) = sum_i y_i A_i``, so that ``<A(X), y> = <X, A*(y)>``. Both act on batches:
``X`` of shape ``(..., n1, n2)`` gives ``(..., m)``.

- :class:`GaussianSensing`: ``A_i`` with i.i.d. ``N(0, scale^2)`` entries, symmetrized
  (``(G + G^T) / 2``) for PSD problems as in Gunasekar et al.
- :class:`Completion`: ``A_i = e_j e_k^T`` for the observed index set ``{(j_i, k_i)}``.

Ground truths: :func:`random_psd` (``U U^T``, U ``n x r`` Gaussian) and :func:`random_low_rank`
(``U V^T / sqrt(r)`` with U, V ``N(0, 1)``, optionally rescaled to a given Frobenius norm, the
protocol of Arora et al. 2019).
"""

from __future__ import annotations

import torch
from torch import Tensor

from geomopt.checks import check_int, check_number, check_tensor


def _generator(where: str, seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(check_int(where, "seed", seed))


def _sizes(where: str, **sizes: int) -> None:
    for key, value in sizes.items():
        check_int(where, key, value, low=1)


def _check_input(name: str, x: Tensor, trailing: tuple[int, ...], what: str) -> None:
    check_tensor(name, what, x, nonempty=False, finite=False)
    if x.dim() < len(trailing) or tuple(x.shape[x.dim() - len(trailing):]) != trailing:
        raise ValueError(f"{name}: expected {what} with trailing shape {trailing}, got shape {tuple(x.shape)}")


class MeasurementOperator:
    """Base class: ``A(X)`` (:meth:`forward`), ``A*(y)`` (:meth:`adjoint`) and :meth:`to_dense`.

    Attributes:
        shape: ``(n1, n2)``, the matrix shape.
        m: number of measurements.
    """

    shape: tuple[int, int]
    m: int

    def forward(self, X: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``(..., n1, n2) -> (..., m)``."""
        raise NotImplementedError

    def adjoint(self, y: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``(..., m) -> (..., n1, n2)``."""
        raise NotImplementedError

    def __call__(self, X: Tensor) -> Tensor:
        return self.forward(X)

    def to_dense(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """The ``(m, n1 * n2)`` matrix of the operator (row-major vec of X); for tests and cvxpy."""
        n1, n2 = self.shape
        eye = torch.eye(n1 * n2, dtype=dtype).reshape(n1 * n2, n1, n2)
        return self.forward(eye).T.contiguous()

    def gram_solve(self, z: Tensor) -> Tensor:
        """Solve ``(A A*) u = z`` for ``u`` (``(..., m)``); used to project onto ``{X: A(X) = y}``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def project(self, X: Tensor, y: Tensor) -> Tensor:
        """Euclidean projection of ``X`` onto the affine set ``{Z: A(Z) = y}``: ``X - A*((AA*)^-1 (A(X) - y))``."""
        return X - self.adjoint(self.gram_solve(self.forward(X) - y))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> MeasurementOperator:
        raise NotImplementedError  # pragma: no cover - abstract


class GaussianSensing(MeasurementOperator):
    """Gaussian sensing: ``A_i`` with i.i.d. ``N(0, scale^2)`` entries, symmetrized when ``symmetric``.

    Args:
        n1, n2: matrix shape (``symmetric`` needs ``n1 == n2``).
        m: number of measurements.
        seed: seed of the measurement matrices.
        symmetric: use ``(G_i + G_i^T) / 2`` (Gunasekar et al. 2017, PSD sensing).
        scale: standard deviation of the entries (Arora et al. 2019 use ``1 / n``).
        dtype: dtype of the stored matrices.

    Raises:
        ValueError: on non-positive sizes or ``symmetric`` with ``n1 != n2``.
    """

    def __init__(self, n1: int, n2: int, m: int, *, seed: int = 0, symmetric: bool = False, scale: float = 1.0,
                 dtype: torch.dtype = torch.float64, matrices: Tensor | None = None) -> None:
        _sizes("GaussianSensing", n1=n1, n2=n2, m=m)
        if symmetric and n1 != n2:
            raise ValueError(f"GaussianSensing: symmetric=True needs a square matrix, got {n1} x {n2}")
        check_number("GaussianSensing", "scale", scale, low=0, low_open=True)
        if matrices is not None and tuple(matrices.shape) != (m, n1, n2):
            raise ValueError(f"GaussianSensing: matrices must have shape (m, n1, n2) = {(m, n1, n2)}, got "
                             f"{tuple(matrices.shape)}")
        self.shape, self.m, self.symmetric, self.scale, self.seed = (n1, n2), m, symmetric, scale, seed
        if matrices is None:
            g = torch.randn(m, n1, n2, generator=_generator("GaussianSensing", seed), dtype=torch.float64) * scale
            if symmetric:
                g = (g + g.transpose(1, 2)) / 2
            matrices = g.to(dtype)
        self.matrices = matrices  # (m, n1, n2)
        self._flat = matrices.reshape(m, n1 * n2)
        self._chol: Tensor | None = None

    def forward(self, X: Tensor) -> Tensor:
        _check_input("GaussianSensing.forward", X, self.shape, "a matrix batch (..., n1, n2)")
        return X.reshape(*X.shape[:-2], -1) @ self._flat.T.to(X.dtype)

    def adjoint(self, y: Tensor) -> Tensor:
        _check_input("GaussianSensing.adjoint", y, (self.m,), "measurements (..., m)")
        return (y @ self._flat.to(y.dtype)).reshape(*y.shape[:-1], *self.shape)

    def to_dense(self, dtype: torch.dtype = torch.float64) -> Tensor:
        return self._flat.to(dtype).clone()

    def gram_solve(self, z: Tensor) -> Tensor:
        if self._chol is None:
            flat = self._flat.double()
            gram = flat @ flat.T
            chol, info = torch.linalg.cholesky_ex(gram)
            if int(info) != 0:
                raise ValueError(f"GaussianSensing: the {self.m} measurement matrices are linearly dependent "
                                 f"(m={self.m} > n1*n2={self.shape[0] * self.shape[1]}?); A A* is singular")
            self._chol = chol
        sol = torch.cholesky_solve(z.double().reshape(-1, self.m).T, self._chol).T
        return sol.reshape(z.shape).to(z.dtype)

    def to(self, device=None, dtype=None) -> GaussianSensing:
        return GaussianSensing(*self.shape, self.m, seed=self.seed, symmetric=self.symmetric, scale=self.scale,
                               matrices=self.matrices.to(device=device, dtype=dtype or self.matrices.dtype))

    def __repr__(self) -> str:
        return (f"GaussianSensing({self.shape[0]}x{self.shape[1]}, m={self.m}, symmetric={self.symmetric}, "
                f"scale={self.scale:g}, seed={self.seed})")


class Completion(MeasurementOperator):
    """Matrix completion: ``A(X) = (X[j_i, k_i])_i`` for the observed entries.

    Args:
        n1, n2: matrix shape.
        rows, cols: integer tensors of length m, the observed entries (no duplicates).

    Raises:
        ValueError: on out-of-range or duplicated indices.
    """

    def __init__(self, n1: int, n2: int, rows: Tensor, cols: Tensor) -> None:
        _sizes("Completion", n1=n1, n2=n2)
        rows, cols = torch.as_tensor(rows, dtype=torch.long).flatten(), torch.as_tensor(cols, dtype=torch.long).flatten()
        if min(n1, n2) < 1 or rows.numel() < 1 or rows.shape != cols.shape:
            raise ValueError(f"Completion: need n1, n2 >= 1 and equally long non-empty rows/cols, got n1={n1}, "
                             f"n2={n2}, rows {tuple(rows.shape)}, cols {tuple(cols.shape)}")
        if rows.min() < 0 or rows.max() >= n1 or cols.min() < 0 or cols.max() >= n2:
            raise ValueError(f"Completion: observed indices out of range for a {n1} x {n2} matrix")
        flat = rows * n2 + cols
        if torch.unique(flat).numel() != flat.numel():
            raise ValueError("Completion: duplicated observed entries")
        self.shape, self.m, self.rows, self.cols, self._flat_idx = (n1, n2), int(rows.numel()), rows, cols, flat

    @classmethod
    def random(cls, n1: int, n2: int, m: int, *, seed: int = 0, symmetric: bool = False) -> Completion:
        """``m`` entries drawn uniformly without replacement.

        With ``symmetric`` (square, for PSD problems) the set is closed under transposition: entries of the
        upper triangle (diagonal included) are drawn and mirrored, so the count is about ``m``.
        """
        _sizes("Completion.random", n1=n1, n2=n2)
        check_int("Completion.random", "m", m, low=1, high=n1 * n2)
        g = _generator("Completion.random", seed)
        if not symmetric:
            flat = torch.randperm(n1 * n2, generator=g)[:m]
            return cls(n1, n2, flat // n2, flat % n2)
        if n1 != n2:
            raise ValueError(f"Completion.random: symmetric=True needs a square matrix, got {n1} x {n2}")
        iu = torch.triu_indices(n1, n1)
        # each off-diagonal pick observes two entries: choose k picks so the total is close to m
        perm = torch.randperm(iu.shape[1], generator=g)
        r, c = iu[0][perm], iu[1][perm]
        counts = torch.where(r == c, 1, 2).cumsum(0)
        k = int(torch.searchsorted(counts, torch.tensor(m), right=True).clamp(min=1))
        r, c = r[:k], c[:k]
        off = r != c
        return cls(n1, n1, torch.cat([r, c[off]]), torch.cat([c, r[off]]))

    def mask(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """The ``(n1, n2)`` 0/1 matrix of observed entries."""
        out = torch.zeros(self.shape[0] * self.shape[1], dtype=dtype)
        out[self._flat_idx] = 1
        return out.reshape(self.shape)

    def forward(self, X: Tensor) -> Tensor:
        _check_input("Completion.forward", X, self.shape, "a matrix batch (..., n1, n2)")
        return X.reshape(*X.shape[:-2], -1)[..., self._flat_idx.to(X.device)]

    def adjoint(self, y: Tensor) -> Tensor:
        _check_input("Completion.adjoint", y, (self.m,), "measurements (..., m)")
        out = y.new_zeros(*y.shape[:-1], self.shape[0] * self.shape[1])
        out[..., self._flat_idx.to(y.device)] = y
        return out.reshape(*y.shape[:-1], *self.shape)

    def gram_solve(self, z: Tensor) -> Tensor:
        return z  # A A* = I: distinct entries

    def to(self, device=None, dtype=None) -> Completion:
        op = Completion(*self.shape, self.rows, self.cols)
        op.rows, op.cols, op._flat_idx = (t.to(device) for t in (self.rows, self.cols, self._flat_idx))
        return op

    def __repr__(self) -> str:
        return f"Completion({self.shape[0]}x{self.shape[1]}, m={self.m})"


def random_psd(n: int, rank: int, *, seed: int = 0, fro_norm: float | None = None,
               dtype: torch.dtype = torch.float64) -> Tensor:
    """A random PSD ``n x n`` matrix of rank ``rank``: ``U U^T`` with U ``N(0, 1/n)`` (or rescaled to ``fro_norm``)."""
    _sizes("random_psd", n=n)
    check_int("random_psd", "rank", rank, low=1, high=n)
    u = torch.randn(n, rank, generator=_generator("random_psd", seed), dtype=torch.float64) / n ** 0.5
    x = u @ u.T
    if fro_norm is not None:
        check_number("random_psd", "fro_norm", fro_norm, low=0, low_open=True)
        x = x * (fro_norm / torch.linalg.matrix_norm(x))
    return x.to(dtype)


def random_low_rank(n1: int, n2: int, rank: int, *, seed: int = 0, fro_norm: float | None = None,
                    dtype: torch.dtype = torch.float64) -> Tensor:
    """A random ``n1 x n2`` matrix of rank ``rank``: ``U V^T / sqrt(rank)``, U, V ``N(0, 1)``.

    With ``fro_norm`` the matrix is rescaled to that Frobenius norm (Arora et al. 2019 use
    ``||W*||_F = n`` for ``n = 100``).
    """
    _sizes("random_low_rank", n1=n1, n2=n2)
    check_int("random_low_rank", "rank", rank, low=1, high=min(n1, n2))
    g = _generator("random_low_rank", seed)
    u = torch.randn(n1, rank, generator=g, dtype=torch.float64)
    v = torch.randn(n2, rank, generator=g, dtype=torch.float64)
    x = u @ v.T / rank ** 0.5
    if fro_norm is not None:
        check_number("random_low_rank", "fro_norm", fro_norm, low=0, low_open=True)
        x = x * (fro_norm / torch.linalg.matrix_norm(x))
    return x.to(dtype)
