r"""Path-SGD's rank-one update of a large weight and the next step's scale contractions in one pass,
a C kernel compiled at run time (:func:`geomopt.native.compile_c`).

For a Linear weight ``W`` (out, in) of a chain with scales ``gamma = gamma_out (x) gamma_in``
(Neyshabur, Salakhutdinov & Srebro 2015), row by row (``r_i = 1/gamma_out_i``, ``c_j = 1/gamma_in_j``,
each floored, with ``-lr`` folded into ``r`` without momentum):

    no momentum:   w_ij += (g_ij + wd w_ij) r_i c_j
    momentum:      buf_ij = m buf_ij + (g_ij + wd w_ij) r_i c_j   (buf_ij = ... at the first step),
                   w_ij -= lr buf_ij
    then, on the updated row:  fwd_i = sum_j w_ij^2 vin_j  and/or  bwd_j += w_ij^2 vout_i

(the squared network's contractions of :meth:`geomopt.geometry.PathScales.compute`, p = 2). One read
of ``W``, ``g`` (and ``buf``) and one write of ``W`` (and ``buf``): the memory traffic of SGD with
momentum plus nothing, where the eager row-block pass also writes and reads a scratch block three times.
With ``torch.get_num_threads() > 1`` the rows are split in as many chunks, one per thread of an OpenMP
parallel region: the kernel links the ``libgomp.so.1`` torch has loaded, so it runs in torch's own pool
(Python threads instead lost the second core to torch's worker, which spin-waits after each parallel
op: 9.6 ms instead of 5.5 ms for the 4000 x 4000 weight at 2 threads). float32 and float64,
contiguous CPU tensors; :func:`load` is None without a compiler and the caller runs the eager path
(:class:`geomopt.optim.path_sgd._RowBlockUpdate`), its float64 reference.
"""

from __future__ import annotations

import ctypes
import platform

import torch
from torch import Tensor

from geomopt import native

_SOURCE = r"""
#include <omp.h>
#define KERNEL(T, S)                                                                                   \
static void rows_##S(long rows, long cols, T* restrict w, const T* restrict g, T* restrict buf,    \
                         const T* restrict r, const T* restrict c, double lr, double momentum,         \
                         double wd, int mode, const T* restrict vin, T* restrict fwd,                  \
                         const T* restrict vout, T* restrict bwd) {                                    \
  const T tl = (T)lr, tm = (T)momentum, tw = (T)wd;                                                    \
  for (long i = 0; i < rows; i++) {                                                                    \
    T* restrict wi = w + i * cols; const T* restrict gi = g + i * cols; const T ri = r[i];             \
    if (mode == 0) {                                                                                   \
      if (wd == 0) {                                                                                   \
        _Pragma("omp simd")                                                                            \
        for (long j = 0; j < cols; j++) wi[j] += gi[j] * (ri * c[j]);                                  \
      } else {                                                                                         \
        _Pragma("omp simd")                                                                            \
        for (long j = 0; j < cols; j++) wi[j] += (gi[j] + tw * wi[j]) * ri * c[j];                     \
      }                                                                                                \
    } else {                                                                                           \
      T* restrict bi = buf + i * cols;                                                                   \
      if (mode == 1) {                                                                                 \
        _Pragma("omp simd")                                                                            \
        for (long j = 0; j < cols; j++) {                                                              \
          T b = (gi[j] + tw * wi[j]) * ri * c[j]; bi[j] = b; wi[j] -= tl * b;                          \
        }                                                                                              \
      } else {                                                                                         \
        _Pragma("omp simd")                                                                            \
        for (long j = 0; j < cols; j++) {                                                              \
          T b = tm * bi[j] +   (gi[j] + tw * wi[j]) * ri * c[j]; bi[j] = b; wi[j] -= tl * b;           \
        }                                                                                              \
      }                                                                                                \
    }                                                                                                  \
    if (fwd && bwd) {                                                                                  \
      T acc = 0; const T u = vout[i];                                                                  \
      _Pragma("omp simd reduction(+:acc)")                                                             \
      for (long j = 0; j < cols; j++) { T s = wi[j] * wi[j]; acc += s * vin[j]; bwd[j] += s * u; }     \
      fwd[i] = acc;                                                                                    \
    } else if (fwd) {                                                                                  \
      T acc = 0;                                                                                       \
      _Pragma("omp simd reduction(+:acc)")                                                             \
      for (long j = 0; j < cols; j++) acc += wi[j] * wi[j] * vin[j];                                   \
      fwd[i] = acc;                                                                                    \
    } else if (bwd) {                                                                                  \
      const T u = vout[i];                                                                             \
      _Pragma("omp simd")                                                                              \
      for (long j = 0; j < cols; j++) bwd[j] += wi[j] * wi[j] * u;                                     \
    }                                                                                                  \
  }                                                                                                    \
}                                                                                                      \
void update_contract_##S(int threads, long rows, long cols, T* restrict w, const T* restrict g,        \
                         T* restrict buf, const T* restrict r, const T* restrict c, double lr,         \
                         double momentum, double wd, int mode, const T* restrict vin, T* restrict fwd,  \
                         const T* restrict vout, T* restrict bwd) {                                    \
  _Pragma("omp parallel num_threads(threads)")                                                         \
  {                                                                                                    \
    long k = omp_get_thread_num(), n = omp_get_num_threads(), r0 = k * rows / n, r1 = (k + 1) * rows / n; \
    long o = r0 * cols;                                                                                \
    rows_##S(r1 - r0, cols, w + o, g + o, buf ? buf + o : 0, r + r0, c, lr, momentum, wd, mode, vin,   \
             fwd ? fwd + r0 : 0, vout ? vout + r0 : 0, bwd ? bwd + k * cols : 0);                      \
  }                                                                                                    \
}

KERNEL(float, f32)
KERNEL(double, f64)
"""

# -fopenmp: torch's pool (see above). On x86, 256-bit vectors: with AVX-512 (AMD EPYC, gcc 12) the
# 512-bit loop took 8.3 ms on the 4000 x 4000 update against 7.4 ms (torch's add_ 6.1 ms).
_FLAGS = ("-fopenmp",) + (("-mprefer-vector-width=256",) if platform.machine().lower() in ("x86_64", "amd64") else ())


def load(dtype: torch.dtype) -> ctypes._CFuncPtr | None:
    """The kernel for ``dtype`` (float32 or float64), compiled on first use in this process; None for
    other dtypes or without a C compiler."""
    if dtype not in (torch.float32, torch.float64):
        return None
    lib = native.compile_c(_SOURCE, flags=_FLAGS)
    if lib is None:
        return None
    fn = getattr(lib, "update_contract_f32" if dtype == torch.float32 else "update_contract_f64")
    p, i, d, n = ctypes.c_void_p, ctypes.c_int, ctypes.c_double, ctypes.c_long
    fn.argtypes, fn.restype = [i, n, n, p, p, p, p, p, d, d, d, i, p, p, p, p], None
    return fn


def supports(*tensors: Tensor) -> bool:
    """Whether the kernel can take these tensors: contiguous, on CPU, one dtype."""
    return all(t.device.type == "cpu" and t.is_contiguous() and t.dtype == tensors[0].dtype for t in tensors)


def update_contract(kernel: ctypes._CFuncPtr, weight: Tensor, grad: Tensor, buf: Tensor | None, rows: Tensor,
                    cols: Tensor, *, lr: float, momentum: float, weight_decay: float, first: bool,
                    vin: Tensor | None, vout: Tensor | None, chunks: int | None = None
                    ) -> tuple[Tensor | None, Tensor | None]:
    """Apply the update to ``weight`` (out, in) (and ``buf``) in place and return ``(W^2 @ vin, (W^2)^T @ vout)``
    of the updated weight (None where ``vin`` / ``vout`` is None).

    Args:
        rows, cols: ``(out,)`` and ``(in,)``: the floored ``1/gamma_out`` (times ``-lr`` when ``buf`` is
            None) and ``1/gamma_in``.
        buf: the momentum buffer (written, not read, when ``first``); None without momentum.
        chunks: row chunks run in parallel, one per OpenMP thread, each with its own ``bwd`` accumulator,
            summed after (default ``torch.get_num_threads()``; 1 where torch does not use OpenMP).
    """
    out, width = weight.shape
    fwd = torch.empty(out, dtype=weight.dtype) if vin is not None else None
    if chunks is None:  # torch's pool is the one the kernel runs in only where torch uses OpenMP
        chunks = torch.get_num_threads() if torch.backends.openmp.is_available() else 1
    chunks = max(1, min(out, chunks))
    bwds = torch.zeros(chunks, width, dtype=weight.dtype) if vout is not None else None

    def ptr(t: Tensor | None) -> int | None:
        return None if t is None else t.data_ptr()

    kernel(chunks, out, width, ptr(weight), ptr(grad), ptr(buf), ptr(rows), ptr(cols), lr, momentum, weight_decay,
           0 if buf is None else 1 if first else 2, ptr(vin), ptr(fwd), ptr(vout), ptr(bwds))
    for written in (weight, buf):  # as an in-place torch op would: autograd and version caches see the write
        if written is not None:
            torch.autograd.graph.increment_version(written)
    bwd = None if bwds is None else bwds[0] if chunks == 1 else bwds.sum(0)
    return fwd, bwd
