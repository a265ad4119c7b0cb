"""Lights: ambient, up to 4 directional, up to 4 point lights and an order-2 spherical-
harmonics environment. Every parameter is a field with gradients.

Units: a light's ``color`` (intensity) is the radiance a white Lambertian surface facing
it reflects (so intensity 1 lights a white surface to 1). A directional light's
``direction`` points from the surface *towards* the light. Point lights fall off with
1 / distance². ``sh`` holds 9 RGB coefficients of the environment radiance, in the real
SH basis order (l, m) = (0,0), (1,−1), (1,0), (1,1), (2,−2), (2,−1), (2,0), (2,1), (2,2).
"""

import numpy as np
import taichi as ti

from .. import backend
from ..errors import UserError

MAX_DIRECTIONAL = 4
MAX_POINT = 4


@ti.data_oriented
class Lights:
    def __init__(self):
        real = backend.real()
        self.ambient = ti.Vector.field(3, real, shape=(), **backend.diff())
        self.dir_direction = ti.Vector.field(3, real, shape=MAX_DIRECTIONAL, **backend.diff())
        self.dir_color = ti.Vector.field(3, real, shape=MAX_DIRECTIONAL, **backend.diff())
        self.point_position = ti.Vector.field(3, real, shape=MAX_POINT, **backend.diff())
        self.point_color = ti.Vector.field(3, real, shape=MAX_POINT, **backend.diff())
        self.sh = ti.Vector.field(3, real, shape=9, **backend.diff())
        self.count = ti.field(ti.i32, shape=2)  # directional and point lights in use
        self.fields = (
            self.ambient,
            self.dir_direction,
            self.dir_color,
            self.point_position,
            self.point_color,
            self.sh,
        )
        self.set()

    def set(
        self,
        ambient=(0.1, 0.1, 0.1),
        directional=(((0.3, 0.6, 1.0), (0.9, 0.9, 0.9)),),
        point=(),
        sh=None,
    ) -> None:
        """``directional``: sequence of (direction, color); ``point``: (position, color);
        ``sh``: (9, 3) coefficients or None. Unused slots are zero and skipped."""
        if len(directional) > MAX_DIRECTIONAL or len(point) > MAX_POINT:
            raise UserError(f"at most {MAX_DIRECTIONAL} directional and {MAX_POINT} point lights")
        d = np.zeros((2, MAX_DIRECTIONAL, 3))
        d[0, :, 2] = 1.0
        for i, (direction, color) in enumerate(directional):
            v = np.asarray(direction, dtype=np.float64)
            if not np.all(np.isfinite(v)) or np.linalg.norm(v) == 0:
                raise UserError(
                    f"light direction must be a finite non-zero vector, got {direction}"
                )
            d[0, i], d[1, i] = v / np.linalg.norm(v), color
        p = np.zeros((2, MAX_POINT, 3))
        for i, (position, color) in enumerate(point):
            p[0, i], p[1, i] = position, color
        s = np.zeros((9, 3)) if sh is None else np.asarray(sh, dtype=np.float64).reshape(9, 3)
        arrays = (np.asarray(ambient, dtype=np.float64).reshape(3), d[0], d[1], p[0], p[1], s)
        self.count.from_numpy(np.array([len(directional), len(point)], dtype=np.int32))
        for f, a in zip(self.fields, arrays):
            if not np.all(np.isfinite(a)):
                raise UserError("light parameters contain NaN or inf; pass finite numbers")
            f.from_numpy(a.astype(backend.np_real()))

    def zero_grad(self) -> None:
        backend.zero_grads(*self.fields)


@ti.func
def sh_irradiance(sh: ti.template(), n: ti.template()):
    """Irradiance / π for unit normal n from order-2 SH radiance (Ramamoorthi–Hanrahan)."""
    x, y, z = n[0], n[1], n[2]
    a0, a1, a2 = 1.0, 2.0 / 3.0, 0.25  # Â_l / π
    return (
        a0 * 0.282095 * sh[0]
        + a1 * 0.488603 * (y * sh[1] + z * sh[2] + x * sh[3])
        + a2
        * (
            1.092548 * (x * y * sh[4] + y * z * sh[5] + x * z * sh[7])
            + 0.315392 * (3.0 * z * z - 1.0) * sh[6]
            + 0.546274 * (x * x - y * y) * sh[8]
        )
    )
