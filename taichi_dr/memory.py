"""Memory estimates, checked before allocating: work that cannot fit is refused with the
estimate, instead of failing deep inside Taichi ("Virtual memory allocation failed").

A :class:`~taichi_dr.render.pipeline.Renderer`'s arrays are linear in pixels (B·H·W),
depth-peeling layers, soft candidates K, faces and vertices; the coefficients below bound
the bytes of every array it allocates (values and gradients), measured by summing them
(``tests/test_bad_input.py`` checks that they still bound what it allocates).
"""

from __future__ import annotations

import os

from . import backend
from .errors import UserError


def available_bytes() -> int | None:
    """Memory the system can still hand out (Linux MemAvailable, else physical memory;
    None when unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def render_bytes(
    pixels: int,
    faces: int,
    vertices: int,
    mode: str = "hard",
    layers: int = 1,
    soft_k: int = 50,
    views: int = 1,
) -> int:
    """Bytes of a renderer's arrays for ``pixels`` = B·H·W pixels of ``views`` views, a mesh
    of ``faces`` and ``vertices``, ``mode`` ("hard", "antialias", "nmr", "soft"),
    ``layers`` depth-peeling layers and, in mode "soft", ``soft_k`` candidates per pixel,
    at the current precision."""
    r = 8 if backend.precision() == "f64" else 4
    per_pixel = 20 * r + 24 + (layers - 1) * 6 * r
    per_face, per_vertex = 72 + 4 * r, 16 * r * views
    if mode in ("antialias", "nmr"):
        per_pixel += 2 * r + 8
    if mode == "soft":
        per_pixel += int(soft_k) * (2 * r + 8)
        per_face += 32 + 12 * r
    return 100_000 + int(pixels) * per_pixel + int(faces) * per_face + int(vertices) * per_vertex


def check(need: int, what: str, fix: str) -> None:
    """Raise :class:`UserError` when ``need`` bytes exceed the memory available now (on the
    CPU: GPU arrays live in device memory)."""
    if backend.current_arch() != "cpu":
        return
    have = available_bytes()
    if have is not None and need > have:
        raise UserError(
            f"{what} needs about {need / 2**30:.1f} GiB of memory but {have / 2**30:.1f} GiB "
            f"are available; {fix}"
        )
