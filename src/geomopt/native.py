"""C kernels compiled at run time and loaded with ctypes: the one place that finds a compiler.

:func:`compile_c` compiles a C source with the system's C compiler (``$CC``, ``cc`` or ``gcc`` on the
path; ``-O3 -march=native``, OpenMP SIMD pragmas; a caller may add ``-fopenmp``) into a shared library in a
temporary folder, loads it and removes the folder (the loaded library stays mapped). The result is
cached per source and libraries for the life of the process. Without a compiler, or when compiling or
loading fails (another compiler, a missing library, a ``noexec`` temporary folder), it returns None
and the caller runs its ATen path: every kernel here has an eager reference it is tested against.

Used by the BN-LSTM gate kernels (:mod:`geomopt.nn._gate_kernels`) and Path-SGD's fused update
(:mod:`geomopt.optim._path_sgd_kernels`, with ``-fopenmp``: the kernel then runs in torch's own
OpenMP thread pool, since the ``libgomp.so.1`` that torch has loaded is the one the library binds to).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence

_LOADED: dict[tuple[str, tuple[str, ...], tuple[str, ...]], ctypes.CDLL | None] = {}

FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd", "-shared", "-fPIC")


def _build(source: str, libs: tuple[str, ...], flags: tuple[str, ...]) -> ctypes.CDLL | None:
    compiler = next((c for c in (os.environ.get("CC"), "cc", "gcc") if c and shutil.which(c)), None)
    if compiler is None:
        return None
    try:
        folder = tempfile.mkdtemp(prefix="geomopt-native-")
    except OSError:  # no writable temporary directory
        return None
    path, library = os.path.join(folder, "kernels.c"), os.path.join(folder, "kernels.so")
    command = [compiler, *FLAGS, *flags, path, "-o", library, *(f"-l{lib}" for lib in libs)]
    try:
        with open(path, "w") as f:
            f.write(source)
        done = subprocess.run(command, capture_output=True, timeout=120)
        return ctypes.CDLL(library) if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):  # also a library that cannot be loaded (noexec)
        return None
    finally:  # the loaded library stays mapped
        shutil.rmtree(folder, ignore_errors=True)


def compile_c(source: str, libs: Sequence[str] = ("m",), flags: Sequence[str] = ()) -> ctypes.CDLL | None:
    """The library compiled from ``source`` with :data:`FLAGS` and ``flags`` (e.g. ``-fopenmp``) and linked
    with ``-l<lib>`` for each of ``libs``, compiled on the first call in this process (later calls with the
    same arguments return the same object); None when there is no C compiler or compiling or loading fails."""
    key = (source, tuple(libs), tuple(flags))
    if key not in _LOADED:
        _LOADED[key] = _build(source, key[1], key[2])
    return _LOADED[key]
