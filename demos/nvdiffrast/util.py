"""Small helpers shared by the nvdiffrast-style demos: camera matrices, meshes, images.

Everything here is plain NumPy / torch, written for these demos (OpenGL conventions: the
camera looks down −z, clip space as ``glFrustum``)."""

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from taichi_dr.io import save_image

ROOT = Path(__file__).resolve().parents[2]


def parser(description: str, **defaults) -> argparse.ArgumentParser:
    """The demos' common options (``defaults`` overrides their values)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--iters", type=int, default=defaults.get("iters", 500))
    p.add_argument("--resolution", type=int, default=defaults.get("resolution", 64))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", type=Path, default=None, help="folder for the pictures (none: no files)"
    )
    p.add_argument("--quiet", action="store_true")
    return p


def projection(fov_x: float = 1.0, near: float = 0.1, far: float = 50.0) -> np.ndarray:
    """A symmetric perspective projection with horizontal tangent ``fov_x`` (square images)."""
    return np.array(
        [
            [1 / fov_x, 0, 0, 0],
            [0, 1 / fov_x, 0, 0],
            [0, 0, -(far + near) / (far - near), -2 * far * near / (far - near)],
            [0, 0, -1, 0],
        ],
        dtype=np.float32,
    )


def translate(x: float, y: float, z: float) -> np.ndarray:
    m = np.eye(4, dtype=np.float32)
    m[:3, 3] = x, y, z
    return m


def rotation(axis, angle: float) -> np.ndarray:
    """4×4 rotation by ``angle`` radians about ``axis``."""
    a = np.asarray(axis, np.float64)
    a = a / np.linalg.norm(a)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    m = np.eye(4)
    m[:3, :3] = np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K
    return m.astype(np.float32)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 4×4 rotation."""
    q = rng.normal(size=4)
    return quaternion_matrix(q / np.linalg.norm(q)).astype(np.float32)


def quaternion_matrix(q):
    """4×4 rotation of unit quaternion q = (w, x, y, z); works on numpy arrays and torch
    tensors (differentiably)."""
    lib = torch if isinstance(q, torch.Tensor) else np
    w, x, y, z = q[0], q[1], q[2], q[3]
    zero, one = 0 * w, 0 * w + 1
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y), zero],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x), zero],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y), zero],
        [zero, zero, zero, one],
    ]
    return lib.stack([lib.stack(r) for r in rows])


def to_clip(vertices: torch.Tensor, mvp) -> torch.Tensor:
    """(V, 3) → (1, V, 4) clip coordinates under the 4×4 ``mvp`` (array or tensor)."""
    m = torch.as_tensor(mvp, dtype=vertices.dtype)
    hom = torch.cat([vertices, torch.ones_like(vertices[:, :1])], 1)
    return (hom @ m.T)[None]


def cube():
    """Unit cube: 8 corner positions (±1), 12 triangles (outward, counter-clockwise) and
    per-face colour indices (24 colour slots: each face has its own 4 corner colours)."""
    pos = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float32)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    pos_idx, col_idx = [], []
    for f, (a, b, c, d) in enumerate(quads):
        pos_idx += [(a, b, c), (a, c, d)]
        col_idx += [(4 * f, 4 * f + 1, 4 * f + 2), (4 * f, 4 * f + 2, 4 * f + 3)]
    return pos, np.array(pos_idx, np.int32), np.array(col_idx, np.int32)


def uv_sphere(rings: int = 24, segments: int = 48):
    """A unit sphere with longitude/latitude uv (the seam's vertices duplicated):
    (positions (V, 3), uv (V, 2), triangles (T, 3))."""
    theta = np.linspace(0, np.pi, rings + 1)  # from the north pole
    phi = np.linspace(0, 2 * np.pi, segments + 1)
    T, P = np.meshgrid(theta, phi, indexing="ij")
    pos = np.stack([np.sin(T) * np.sin(P), np.cos(T), np.sin(T) * np.cos(P)], -1).reshape(-1, 3)
    uv = np.stack([P / (2 * np.pi), 1 - T / np.pi], -1).reshape(-1, 2)
    tri = []
    for r in range(rings):
        for s in range(segments):
            a, b = r * (segments + 1) + s, (r + 1) * (segments + 1) + s
            tri += [(a, b, b + 1), (a, b + 1, a + 1)]
    return pos.astype(np.float32), uv.astype(np.float32), np.array(tri, np.int32)


def save(out: Path | None, name: str, image) -> None:
    """Write an nvdiffrast-layout image (H, W, C), row 0 at the bottom, as a PNG."""
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    a = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image)
    a = np.clip(a[::-1, :, :3], 0, 1)  # row 0 at the top for the file
    save_image(out / name, a, srgb=False)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return 10 * math.log10(1 / max(mse, 1e-20))


def log(quiet: bool, *args) -> None:
    if not quiet:
        print(*args, flush=True)
