"""Pinhole cameras in OpenGL conventions (DESIGN §2).

World and eye space are right-handed, the camera looks down −z with y up; clip space is
``P · V · [x, y, z, 1]`` and NDC is clip / w in [−1, 1]³. Window x grows to the right,
image rows grow downwards (row 0 is the top). Matrices are NumPy float64 (4, 4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import UserError


def numbers(value, shape: tuple, name: str) -> np.ndarray:
    """``value`` as a finite float64 array of ``shape``, or a :class:`UserError` naming
    ``name`` (strings, wrong lengths, NaN and inf are refused)."""
    try:
        if isinstance(value, (str, bytes)):
            raise ValueError
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        a = None
    if a is None or a.shape != shape or not np.all(np.isfinite(a)):
        what = "a finite number" if shape == () else f"{'x'.join(map(str, shape))} finite numbers"
        shown = value.tolist() if isinstance(value, np.ndarray) else value
        raise UserError(f"{name} must be {what}, got {' '.join(repr(shown).split())[:120]}")
    return a


def _vec3(v, name):
    return numbers(np.ravel(v) if isinstance(v, np.ndarray) else v, (3,), name)


def check_fov(fov) -> float:
    """A vertical field of view in degrees, in (0, 180)."""
    fov = float(numbers(fov, (), "fov"))
    if not 0.0 < fov < 180.0:
        raise UserError(f"fov must lie in (0, 180) degrees, got {fov}")
    return fov


def look_at(eye, center, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """View matrix of gluLookAt: maps ``eye`` to the origin and ``center`` onto −z."""
    eye, center, up = _vec3(eye, "eye"), _vec3(center, "center"), _vec3(up, "up")
    f = center - eye
    if np.linalg.norm(f) == 0:
        raise UserError("eye and center coincide; move the camera away from its target")
    f /= np.linalg.norm(f)
    s = np.cross(f, up)
    if np.linalg.norm(s) < 1e-12:
        raise UserError("up is parallel to the viewing direction; pick another up vector")
    s /= np.linalg.norm(s)
    u = np.cross(s, f)
    view = np.eye(4)
    view[0, :3], view[1, :3], view[2, :3] = s, u, -f
    view[:3, 3] = -view[:3, :3] @ eye
    return view


def check_depth_range(near: float, far: float) -> None:
    if not (math.isfinite(near) and math.isfinite(far)) or near <= 0 or near >= far:
        raise UserError(f"need 0 < near < far, got near={near}, far={far}")


def perspective(fov_y: float, aspect: float, near: float, far: float) -> np.ndarray:
    """Projection matrix of gluPerspective; ``fov_y`` in degrees, ``aspect`` = W / H."""
    fov_y = check_fov(fov_y)
    if not aspect > 0:
        raise UserError(f"aspect must be positive, got {aspect}")
    check_depth_range(near, far)
    f = 1.0 / math.tan(math.radians(fov_y) / 2.0)
    proj = np.zeros((4, 4))
    proj[0, 0] = f / aspect
    proj[1, 1] = f
    proj[2, 2] = (far + near) / (near - far)
    proj[2, 3] = 2.0 * far * near / (near - far)
    proj[3, 2] = -1.0
    return proj


def check_resolution(width: int, height: int, max_pixels: int = 1 << 26) -> None:
    ok = all(
        isinstance(n, (int, np.integer, float, np.floating))
        and not isinstance(n, bool)
        and math.isfinite(n)
        and int(n) == n
        and n > 0
        for n in (width, height)
    )
    if not ok:
        raise UserError(f"resolution must be two positive integers, got {width!r}x{height!r}")
    if width * height > max_pixels or max(width, height) > 16384:
        raise UserError(
            f"resolution {width}x{height} is too large for memory "
            f"(at most {max_pixels} pixels and 16384 per side)"
        )


@dataclass
class Camera:
    """A camera: view and projection matrices plus the image size in pixels."""

    view: np.ndarray
    proj: np.ndarray
    width: int
    height: int
    near: float
    far: float
    model: np.ndarray = field(default_factory=lambda: np.eye(4))

    def __post_init__(self):
        """Validate: 4x4 finite matrices (an invertible view), integer size, 0 < near < far
        — for cameras built directly as for :meth:`look_at` and :func:`from_opencv`."""
        for name in ("view", "proj", "model"):
            setattr(self, name, numbers(getattr(self, name), (4, 4), f"camera {name} matrix"))
        if abs(np.linalg.det(self.view[:3, :3])) < 1e-12:
            raise UserError("camera view matrix is singular; build it with look_at or from_opencv")
        check_resolution(self.width, self.height)
        self.width, self.height = int(self.width), int(self.height)
        check_depth_range(self.near, self.far)

    @classmethod
    def look_at(
        cls,
        eye,
        center=(0, 0, 0),
        up=(0, 1, 0),
        fov=45.0,
        width=256,
        height=256,
        near=0.1,
        far=100.0,
    ) -> Camera:
        """Camera from gluLookAt + gluPerspective parameters (``fov`` vertical, degrees)."""
        check_resolution(width, height)
        return cls(
            look_at(eye, center, up),
            perspective(fov, width / height, near, far),
            int(width),
            int(height),
            float(near),
            float(far),
        )

    @property
    def mvp(self) -> np.ndarray:
        return self.proj @ self.view @ self.model

    @property
    def eye(self) -> np.ndarray:
        """Camera position in world space."""
        return np.linalg.inv(self.view)[:3, 3]


def framing(
    vertices, fov, width, height, eye=None, center=None, up=(0.0, 1.0, 0.0), near=None, far=None
) -> Camera:
    """A camera that shows all of ``vertices`` (N, 3): looking at ``center`` (default the
    bounding-box centre) from ``eye`` (default: from the front-right-top, far enough for
    the bounding sphere to fill ``fov`` degrees), with near/far around that sphere unless
    given."""
    lo, hi = vertices.min(0), vertices.max(0)
    center = np.asarray(center if center is not None else (lo + hi) / 2, dtype=np.float64)
    radius = max(np.linalg.norm(hi - lo) / 2, 1e-6)
    if eye is None:
        direction = np.array([0.45, 0.35, 0.82]) / np.linalg.norm([0.45, 0.35, 0.82])
        eye = center + radius / np.sin(np.radians(fov) / 2) * 1.1 * direction
    dist = np.linalg.norm(np.asarray(eye, dtype=np.float64) - center)
    near = near if near is not None else max(dist - 2 * radius, dist * 1e-3)
    far = far if far is not None else dist + 2 * radius
    return Camera.look_at(eye, center, up, fov, width, height, near, far)


def from_opencv(K, R, t, width, height, near=0.1, far=100.0) -> Camera:
    """Camera from OpenCV calibration: ``x_pix = K (R X + t)`` with x right, y down, z
    forward and pixel centres at integer coordinates (ours sit at +0.5)."""
    K, R, t = numbers(K, (3, 3), "K"), numbers(R, (3, 3), "R"), numbers(t, (3,), "t")
    if not (K[0, 0] > 0 and K[1, 1] > 0 and np.allclose(K[2], (0, 0, 1))):
        raise UserError(
            f"K must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0, got {K.tolist()}"
        )
    if not (np.allclose(R @ R.T, np.eye(3), atol=1e-5) and np.linalg.det(R) > 0):
        raise UserError(f"R must be a rotation matrix (orthonormal, det +1), got {R.tolist()}")
    check_resolution(width, height)
    check_depth_range(near, far)
    flip = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV camera axes -> OpenGL eye axes
    view = np.eye(4)
    view[:3, :3], view[:3, 3] = R, t
    view = flip @ view
    fx, s, cx, fy, cy = K[0, 0], K[0, 1], K[0, 2], K[1, 1], K[1, 2]
    proj = np.zeros((4, 4))
    proj[0, 0] = 2 * fx / width
    proj[0, 1] = -2 * s / width
    proj[0, 2] = 1 - 2 * (cx + 0.5) / width
    proj[1, 1] = 2 * fy / height
    proj[1, 2] = 2 * (cy + 0.5) / height - 1
    proj[2, 2] = (far + near) / (near - far)
    proj[2, 3] = 2 * far * near / (near - far)
    proj[3, 2] = -1.0
    return Camera(view, proj, int(width), int(height), float(near), float(far))


def orbit_eyes(
    n: int, radius: float = 3.0, elevation: float = 20.0, center=(0, 0, 0), azimuth0: float = 0.0
) -> np.ndarray:
    """``n`` eye positions evenly spaced in azimuth on a circle at ``elevation`` degrees."""
    if n < 1:
        raise UserError(f"need at least one view, got {n}")
    az = np.radians(azimuth0 + 360.0 * np.arange(n) / n)
    el = math.radians(elevation)
    c = np.asarray(center, dtype=np.float64)
    return c + radius * np.stack(
        [np.cos(el) * np.sin(az), np.full(n, np.sin(el)), np.cos(el) * np.cos(az)], axis=1
    )


def orbit(
    n: int,
    radius: float = 3.0,
    elevation: float = 20.0,
    center=(0, 0, 0),
    fov: float = 45.0,
    width: int = 256,
    height: int = 256,
    near: float = 0.1,
    far: float = 100.0,
) -> list[Camera]:
    """A multi-view rig: ``n`` cameras on an orbit, all looking at ``center``."""
    return [
        Camera.look_at(e, center, (0, 1, 0), fov, width, height, near, far)
        for e in orbit_eyes(n, radius, elevation, center)
    ]
