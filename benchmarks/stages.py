"""Per-kernel profile of a frame: time, bytes moved and the floor those bytes imply.

``profile(step, repeats)`` runs ``step`` (one frame: forward, or forward + backward under
a tape) ``repeats`` times with every Taichi kernel launch timed on its own (a sync before
and after) and returns one row per kernel: median time per frame, the bytes of the
arrays passed to it (each element read or written once — the compulsory traffic of a
kernel that touches each of its arrays once; reverse passes also count the gradients of
the arrays that have them) and ``bytes / bandwidth``, the time those bytes need at the
memory bandwidth ``stream_bandwidth()`` measures. A stage far above its floor is
compute- or latency-bound; one near it is done.
"""

import statistics
import time
from collections import defaultdict

import numpy as np
import taichi as ti
from taichi.lang.enums import AutodiffMode
from taichi.lang.kernel_impl import Kernel
from taichi.lang.util import to_numpy_type


def _nbytes(a) -> int:
    if isinstance(a, ti.lang._ndarray.Ndarray):
        n = int(np.prod(a.shape)) * int(np.prod(a.element_shape or (1,)))
        return n * np.dtype(to_numpy_type(a.dtype)).itemsize
    return int(getattr(a, "nbytes", 0))  # NumPy array or torch tensor; scalars: 0


def _traffic(kernel, args) -> int:
    """Bytes of ``args``' arrays (and of their gradients in a reverse pass)."""
    total = 0
    reverse = kernel.autodiff_mode == AutodiffMode.REVERSE
    for a in args:
        total += _nbytes(a)
        grad = getattr(a, "grad", None)
        if reverse and grad is not None and not callable(grad):
            total += _nbytes(grad)
    return total


def _name(kernel) -> str:
    module = kernel.func.__module__.rsplit(".", 1)[-1]
    suffix = " (reverse)" if kernel.autodiff_mode == AutodiffMode.REVERSE else ""
    return f"{module}.{kernel.func.__name__.lstrip('_')}{suffix}"


def profile(step, repeats: int, clock=time.perf_counter) -> list[dict]:
    """Rows (in launch order) of name, calls per frame, ``t`` (s per frame, median over
    ``repeats`` frames) and ``bytes`` per frame, for every kernel ``step`` launches."""
    step()  # compile
    ti.sync()
    original = Kernel.__call__
    frames: list[dict] = []

    def timed_call(self, *args, **kwargs):
        ti.sync()
        start = clock()
        out = original(self, *args, **kwargs)
        ti.sync()
        row = frames[-1][_name(self)]
        row["t"] += clock() - start
        row["calls"] += 1
        row["bytes"] += _traffic(self, args)
        return out

    Kernel.__call__ = timed_call
    try:
        for _ in range(repeats):
            frames.append(defaultdict(lambda: dict(t=0.0, calls=0, bytes=0)))
            step()
            ti.sync()
    finally:
        Kernel.__call__ = original
    rows = []
    for name, first in frames[0].items():
        times = [f[name]["t"] for f in frames]
        rows.append(dict(name=name, calls=first["calls"], bytes=first["bytes"]))
        rows[-1]["t"] = statistics.median(times)
    return rows


def stream_bandwidth(megabytes: int = 128) -> float:
    """Bytes per second of a large NumPy copy on one thread (read + write counted; the
    best of 20: the least disturbed by other work on the machine)."""
    src = np.ones(megabytes * 2**20 // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(20):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best


def print_table(
    rows: list[dict], pixels: int, frame_time: float | None = None, fixed: float | None = None
) -> None:
    """The profile as a table: ms, ns per pixel, MB moved, floor ms, time / floor; then the
    whole frame timed without per-kernel syncs and ``fixed``, the same frame's time at
    8×8 pixels and 20 faces (Python and kernel launches: the cost no kernel speed-up cuts)."""
    bandwidth = stream_bandwidth()
    print(f"  (floor: bytes at {bandwidth / 1e9:.1f} GB/s, a one-thread NumPy copy)")
    head = f"  {'kernel':<42} {'calls':>5} {'ms':>7} {'ns/px':>6} {'MB':>7} {'floor ms':>8}"
    print(head + f" {'÷ floor':>7}")
    total_t = total_b = 0.0
    for r in rows:
        floor = r["bytes"] / bandwidth
        total_t, total_b = total_t + r["t"], total_b + r["bytes"]
        print(
            f"  {r['name']:<42} {r['calls']:>5} {r['t'] * 1e3:>7.2f} {r['t'] / pixels * 1e9:>6.1f}"
            f" {r['bytes'] / 1e6:>7.2f} {floor * 1e3:>8.2f} {r['t'] / max(floor, 1e-12):>7.1f}"
        )
    floor = total_b / bandwidth
    print(
        f"  {'sum':<42} {'':>5} {total_t * 1e3:>7.2f} {total_t / pixels * 1e9:>6.1f}"
        f" {total_b / 1e6:>7.2f} {floor * 1e3:>8.2f} {total_t / floor:>7.1f}"
    )
    if frame_time is not None:
        print(f"  {'whole frame (no per-kernel syncs)':<42} {'':>5} {frame_time * 1e3:>7.2f}")
    if fixed is not None:
        launches = sum(r["calls"] for r in rows)
        label = f"fixed cost: 8×8, 20 faces ({launches} launches)"
        print(f"  {label:<42} {'':>5} {fixed * 1e3:>7.2f}")
