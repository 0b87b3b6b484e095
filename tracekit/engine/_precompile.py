"""A first run's compilation shared with the idle core.

With an empty numba cache (the first run after installing or upgrading tracekit) every
kernel is compiled at its first call, one after another on one core: 8-10 s for 1 M events
on the benchmark machine, 4.1 s of them the scan's. numba compiles under a process-wide lock,
so a thread cannot help; another process can. When the scan's cache is cold, `start_if_cold`
(called while the trace is read) starts this file as a script, which compiles the scan into
the shared cache while this process reads, resolves and cuts (compiling those kernels
itself). When `fast.scan` comes to it, `wait` compiles the findings' kernel here if the
helper is still at work, then waits for it; the scan then loads from the cache. A helper
that fails or is not there costs nothing but the wait: the scan is then compiled here, as
before.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

_lock = threading.Lock()
_helper: subprocess.Popen | None = None
_looking: threading.Thread | None = None  # `look_meanwhile`'s thread
#: Helpers this process started (for tests and diagnostics).
helpers_started = 0
#: Longest wait for the helper (a first compile takes seconds; a stuck one is left behind).
_PATIENCE_S = 120


def compile_scan(kernels) -> None:
    """Compile (or load) the scan with the argument types ``fast.scan`` passes it: other
    types would be another signature, compiled again at the real call (a test checks that
    a first run's scan is loaded, not compiled)."""
    u64, i64 = np.zeros(0, np.uint64), np.zeros(0, np.int64)
    kernels.scan(u64, i64, u64, i64, i64, i64, 0, 64, False)


def compile_findings_kernel() -> None:
    """Compile (or load) the findings' kernel with the argument types ``fast.findings_frame`` passes it."""
    from . import _fast_kernel as K

    u64, i64 = np.zeros(0, np.uint64), np.zeros(0, np.int64)
    out = (*(np.zeros(0, np.int64) for _ in range(5)), *(np.zeros(0, np.uint64) for _ in range(3)),
           np.zeros(0, np.uint8), np.zeros(0, np.uint8))
    K.finding_columns(np.zeros((0, K.NCOL), np.int64), i64, u64, i64, u64, i64, 64, 0, 0, out)


def _cold(dispatcher) -> bool:
    """The dispatcher's on-disk cache holds nothing for this source (never compiled, or
    compiled from another version of the file); False when caching is off or unknown."""
    try:
        return not dispatcher._cache._cache_file._load_index()  # (numba's own index reader)
    except Exception:  # noqa: BLE001 - a numba without these internals: no helper, nothing lost
        return False


def start_if_cold() -> bool:
    """Start the helper process when the scan's compiled code is not cached (one at a time)."""
    global _helper, helpers_started
    from . import _fast_kernel as K

    with _lock:
        if _helper is not None or not _cold(K.scan):
            return False
        try:
            # this file as a script: it imports the kernels' module alone, without tracekit
            # (polars, pyarrow: 0.3 s of the helper's start); -P: not its folder on sys.path
            _helper = subprocess.Popen([sys.executable, "-P", str(Path(__file__).resolve())], stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError:
            return False
        helpers_started += 1
        return True


def look_meanwhile() -> None:
    """`start_if_cold` in a thread of its own, which nothing waits for but `wait`: importing the
    kernels to look at their cache costs a warm run nothing on the way (a trace being read)."""
    global _looking

    def look() -> None:
        try:
            start_if_cold()
        except Exception:  # noqa: BLE001 - the scan then compiles at its first call
            pass

    _looking = threading.Thread(target=look, name="tracekit-first-run", daemon=True)
    _looking.start()


def wait() -> None:
    """Wait for a helper this process started (a no-op without one)."""
    global _helper
    looking = _looking
    if looking is not None:
        looking.join()  # (it may be about to start one)
    if _helper is None:
        return
    with _lock:
        if _helper is None:
            return
        if _helper.poll() is None:
            try:  # the findings' kernel, needed next, compiled here meanwhile
                compile_findings_kernel()
            except Exception:  # noqa: BLE001 - its real call reports it
                pass
        try:
            _helper.wait(timeout=_PATIENCE_S)
        except subprocess.TimeoutExpired:
            pass  # compiled here instead
        _helper = None


if __name__ == "__main__":
    # The kernels' file loaded alone, under its own module name: numba's cache is keyed by the
    # source file's path and stamp and the function's name and bytecode, and the cached code
    # names its module, which the loading process imports (the real one there).
    import importlib.util

    name = "tracekit.engine._fast_kernel"
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("_fast_kernel.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    compile_scan(module)
