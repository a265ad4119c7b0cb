"""Cameras between the mesh renderer's convention and the splatter's.

:class:`taichi_dr.Camera` is OpenGL-style (look-at view matrix, camera looking down −z,
projection matrix to NDC); the splatter takes gsplat's world→camera ``viewmat`` (OpenCV:
x right, y down, z forward) and a pinhole ``K`` in pixel units where pixel (row i, column j)
has its centre at (j + ½, i + ½) — the same pixel grid as the mesh renderer's, so a point
projects to the same place in both.
"""

import numpy as np

from ..camera import Camera
from ..errors import UserError

FLIP = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenGL eye axes ↔ OpenCV camera axes


def opencv(camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """(viewmat (4, 4), K (3, 3)) of a perspective :class:`~taichi_dr.Camera` (its
    ``model`` matrix included)."""
    P, W, H = np.asarray(camera.proj, np.float64), camera.width, camera.height
    if P[3, 2] != -1.0 or P[3, 3] != 0.0 or P[1, 0] != 0.0:
        raise UserError("only perspective cameras without y-skew convert to a pinhole K")
    K = np.array(
        [
            [P[0, 0] * W / 2, -P[0, 1] * W / 2, (1 - P[0, 2]) * W / 2],
            [0.0, P[1, 1] * H / 2, (1 + P[1, 2]) * H / 2],
            [0.0, 0.0, 1.0],
        ]
    )
    return FLIP @ camera.view @ camera.model, K


def stack(cameras) -> tuple[np.ndarray, np.ndarray]:
    """(viewmats (C, 4, 4), Ks (C, 3, 3)) of a list of cameras of one size."""
    pairs = [opencv(c) for c in cameras]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
