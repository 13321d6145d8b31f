r"""Fused kernels of one BN-LSTM time step, compiled from C at run time (ctypes).

The fused BN-LSTM layer (:class:`geomopt.nn.bn_rnn.fused._FusedLSTMLayer`) spends most of a step at
hidden 100 in a dozen small ATen calls (each 3-20 us where it runs, for 16 x 400 numbers). These
three C loops do the elementwise part of a step and the batch norm of ``c_t`` in one call each
(Cooijmans et al. 2016, gate order i, f, g, o; ``a = pre + u``, ``pre = BN(W_h h)``):

    gates:    i, f, o = sigmoid(a_i, a_f, a_o),  g = tanh(a_g),  c_t = f c_{t-1} + i g
              (and, for the backward, the factors  P_i = g i (1 - i),  P_f = c_{t-1} f (1 - f),
              P_g = i (1 - g^2)  and  f)
    output:   cn_t = gamma_c (c_t - mu_t) / sqrt(var_t + eps) + beta_c  (batch statistics, which also
              update the step's running averages with the unbiased variance, as native_batch_norm;
              or the running ones),  h_t = o tanh(cn_t)  (and  P_o = tanh(cn_t) o (1 - o),
              k = d h_t / d cn_t = o (1 - tanh^2 cn_t))
    backward: d cn = dh k;  d c_t = gamma_c / std (d cn - mean_b(d cn) - x mean_b(d cn x)) with
              x = (c_t - mu_t) / std (batch statistics; else gamma_c d cn / std), the gradients of
              gamma_c and beta_c added up;  dc = dc_in + d c_t,  d a = (dc P_i, dc P_f, dc P_g, dh P_o),
              dc_{t-1} = g_c + dc f

``exp`` and ``tanh`` are glibc's vectorized ones (libmvec, glibc 2.35 or later). The matrix
products and the batch norm of ``W_h h`` stay ATen calls. :func:`load` compiles once per process with the C
compiler found on the path (:func:`geomopt.native.compile_c`); without one, or if compiling fails (no libmvec,
another compiler), it returns None and the caller runs its ATen path (same numbers; tested
against each other in float64).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch

from geomopt import native

_SOURCE = r"""
#include <math.h>
__attribute__((simd("notinbranch"))) float expf(float);
__attribute__((simd("notinbranch"))) double exp(double);
__attribute__((simd("notinbranch"))) float tanhf(float);
__attribute__((simd("notinbranch"))) double tanh(double);

#define KERNELS(T, EXP, TANH, SUFFIX)                                                                    \
static inline T sig_##SUFFIX(T x) { return (T)1 / ((T)1 + EXP(-x)); }                                  \
void gates_##SUFFIX(int B, int n, const T* restrict pre, const T* restrict u, long u_row,              \
                    const T* restrict c_prev, T* restrict c_out, T* restrict o_tmp, T* restrict P,     \
                    T* restrict f_out, int keep) {                                                     \
  for (int b = 0; b < B; b++) {                                                                        \
    const T* a = pre + (long)b * 4 * n; const T* v = u + (long)b * u_row;                              \
    const T* cp = c_prev + (long)b * n; T* c = c_out + (long)b * n; T* o = o_tmp + (long)b * n;        \
    T* p = P + (long)b * 4 * n; T* f = f_out + (long)b * n;                                            \
    _Pragma("omp simd")                                                                                \
    for (int j = 0; j < n; j++) {                                                                      \
      T si = sig_##SUFFIX(a[j] + v[j]), sf = sig_##SUFFIX(a[n + j] + v[n + j]);                        \
      T g = TANH(a[2 * n + j] + v[2 * n + j]);                                                         \
      o[j] = sig_##SUFFIX(a[3 * n + j] + v[3 * n + j]);                                                \
      c[j] = sf * cp[j] + si * g;                                                                      \
      if (keep) {                                                                                      \
        p[j] = g * si * ((T)1 - si); p[n + j] = cp[j] * sf * ((T)1 - sf);                              \
        p[2 * n + j] = si * ((T)1 - g * g); f[j] = sf;                                                 \
      }                                                                                                \
    }                                                                                                  \
  }                                                                                                    \
}                                                                                                      \
void output_##SUFFIX(int B, int n, const T* restrict c, const T* restrict gamma, const T* restrict beta,        \
                     T* restrict rm, T* restrict rv, int batch_stats, double momentum, double eps,             \
                     const T* restrict o_tmp, T* restrict h, T* restrict P, T* restrict coef,                  \
                     T* restrict mean, T* restrict invstd, int keep) {                                         \
  if (batch_stats) {                                                                                   \
    for (int j = 0; j < n; j++) { mean[j] = 0; invstd[j] = 0; }                                        \
    for (int b = 0; b < B; b++) {                                                                      \
      const T* x = c + (long)b * n;                                                                    \
      _Pragma("omp simd")                                                                              \
      for (int j = 0; j < n; j++) mean[j] += x[j];                                                     \
    }                                                                                                  \
    for (int j = 0; j < n; j++) mean[j] /= (T)B;                                                       \
    for (int b = 0; b < B; b++) {                                                                      \
      const T* x = c + (long)b * n;                                                                    \
      _Pragma("omp simd")                                                                              \
      for (int j = 0; j < n; j++) { T d = x[j] - mean[j]; invstd[j] += d * d; }                        \
    }                                                                                                  \
    T unbiased = B > 1 ? (T)B / (T)(B - 1) : (T)1;                                                     \
    for (int j = 0; j < n; j++) {                                                                      \
      T var = invstd[j] / (T)B;                                                                        \
      invstd[j] = (T)1 / sqrt(var + (T)eps);                                                           \
      if (rm) {                                                                                        \
        rm[j] = (T)(1 - momentum) * rm[j] + (T)momentum * mean[j];                                     \
        rv[j] = (T)(1 - momentum) * rv[j] + (T)momentum * var * unbiased;                              \
      }                                                                                                \
    }                                                                                                  \
  } else {                                                                                             \
    for (int j = 0; j < n; j++) { mean[j] = rm[j]; invstd[j] = (T)1 / sqrt(rv[j] + (T)eps); }          \
  }                                                                                                    \
  for (int b = 0; b < B; b++) {                                                                        \
    const T* x = c + (long)b * n; const T* o = o_tmp + (long)b * n; T* y = h + (long)b * n;            \
    T* p = P + (long)b * 4 * n + 3 * n; T* k = coef + (long)b * n;                                     \
    _Pragma("omp simd")                                                                                \
    for (int j = 0; j < n; j++) {                                                                      \
      T tc = TANH((x[j] - mean[j]) * invstd[j] * gamma[j] + beta[j]);                                  \
      y[j] = o[j] * tc;                                                                                \
      if (keep) { p[j] = tc * o[j] * ((T)1 - o[j]); k[j] = o[j] * ((T)1 - tc * tc); }                  \
    }                                                                                                  \
  }                                                                                                    \
}                                                                                                      \
void backward_##SUFFIX(int B, int n, const T* restrict dh, const T* restrict coef, const T* restrict c,   \
                       const T* restrict mean, const T* restrict invstd, const T* restrict gamma,        \
                       int batch_stats, const T* restrict dc_in, const T* restrict P,                    \
                       const T* restrict gc, const T* restrict f, T* restrict da, T* restrict dc_out,    \
                       T* restrict dgamma, T* restrict dbeta, T* restrict s1, T* restrict s2) {          \
  for (int j = 0; j < n; j++) { s1[j] = 0; s2[j] = 0; }                                                \
  for (int b = 0; b < B; b++) {                                                                        \
    const T* e = dh + (long)b * n; const T* k = coef + (long)b * n; const T* x = c + (long)b * n;      \
    _Pragma("omp simd")                                                                                \
    for (int j = 0; j < n; j++) {                                                                      \
      T d = e[j] * k[j];                                                                               \
      s1[j] += d; s2[j] += d * (x[j] - mean[j]) * invstd[j];                                           \
    }                                                                                                  \
  }                                                                                                    \
  for (int j = 0; j < n; j++) { dbeta[j] += s1[j]; dgamma[j] += s2[j]; s1[j] /= (T)B; s2[j] /= (T)B; }  \
  for (int b = 0; b < B; b++) {                                                                        \
    const T* e = dh + (long)b * n; const T* k = coef + (long)b * n; const T* x = c + (long)b * n;      \
    const T* d0 = dc_in + (long)b * n; const T* p = P + (long)b * 4 * n; const T* g = gc + (long)b * n; \
    const T* ff = f + (long)b * n; T* q = da + (long)b * 4 * n; T* r = dc_out + (long)b * n;           \
    _Pragma("omp simd")                                                                                \
    for (int j = 0; j < n; j++) {                                                                      \
      T d = e[j] * k[j];                                                                               \
      T dcn = batch_stats ? gamma[j] * invstd[j] * (d - s1[j] - (x[j] - mean[j]) * invstd[j] * s2[j])  \
                          : gamma[j] * invstd[j] * d;                                                  \
      T dc = d0[j] + dcn;                                                                              \
      q[j] = dc * p[j]; q[n + j] = dc * p[n + j]; q[2 * n + j] = dc * p[2 * n + j];                    \
      q[3 * n + j] = e[j] * p[3 * n + j];                                                              \
      r[j] = g[j] + dc * ff[j];                                                                        \
    }                                                                                                  \
  }                                                                                                    \
}

KERNELS(float, expf, tanhf, f32)
KERNELS(double, exp, tanh, f64)
"""


@dataclass(frozen=True)
class GateKernels:
    """The three kernels for one dtype (ctypes functions taking sizes, data pointers, flags, momentum, eps)."""

    gates: ctypes._CFuncPtr
    output: ctypes._CFuncPtr
    backward: ctypes._CFuncPtr


def load(dtype: torch.dtype) -> GateKernels | None:
    """The kernels for ``dtype`` (float32 or float64), compiled on first use in this process; None
    for other dtypes or when no C compiler (or libmvec) is available."""
    if dtype not in (torch.float32, torch.float64):
        return None
    lib = native.compile_c(_SOURCE, ("mvec", "m"))
    if lib is None:
        return None
    suffix = "f32" if dtype == torch.float32 else "f64"
    p, i = ctypes.c_void_p, ctypes.c_int
    d = ctypes.c_double
    signatures = {"gates": [i, i, p, p, ctypes.c_long, p, p, p, p, p, i],
                  "output": [i, i, p, p, p, p, p, i, d, d, p, p, p, p, p, p, i],
                  "backward": [i, i, p, p, p, p, p, p, i, p, p, p, p, p, p, p, p, p, p]}
    fns = {}
    for name, argtypes in signatures.items():
        fn = getattr(lib, f"{name}_{suffix}")
        fn.argtypes, fn.restype = argtypes, None
        fns[name] = fn
    return GateKernels(**fns)
