"""geomopt.native.compile_c: compiled once per source, None (no warning) without a compiler or on a bad source."""

from __future__ import annotations

import ctypes
import warnings

import pytest

from geomopt import native

SOURCE = "double axpy(double a, double x, double y) { return a * x + y; }\n"


def test_compiles_once_per_source_and_runs():
    lib = native.compile_c(SOURCE)
    if lib is None:
        pytest.skip("no C compiler here: callers run their ATen paths (tested with them)")
    assert native.compile_c(SOURCE) is lib
    lib.axpy.argtypes, lib.axpy.restype = [ctypes.c_double] * 3, ctypes.c_double
    assert lib.axpy(2.0, 3.0, 1.0) == 7.0  # closed form


def test_none_without_a_compiler_or_on_a_bad_source(monkeypatch):
    monkeypatch.setattr(native, "_LOADED", {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.compile_c("this is not C;") is None
        monkeypatch.setattr(native.shutil, "which", lambda name: None)
        assert native.compile_c(SOURCE) is None
