"""Lights: ambient, up to 4 directional, up to 4 point lights and an order-2 spherical-
harmonics environment. Every parameter is a field with gradients.

Units: a light's ``color`` (intensity) is the radiance a white Lambertian surface facing
it reflects (so intensity 1 lights a white surface to 1). A directional light's
``direction`` points from the surface *towards* the light. Point lights fall off with
1 / distance². ``sh`` holds 9 RGB coefficients of the environment radiance, in the real
SH basis order (l, m) = (0,0), (1,−1), (1,0), (1,1), (2,−2), (2,−1), (2,0), (2,1), (2,2).

Array version (issue 13, compile once): ``Lights``, the same parameters packed into
one array per light set (``LIGHT_LAYOUT``), one set shared by every view or one per view.
"""

import numpy as np
import taichi as ti

from ..errors import UserError
from . import arrays
from .packed import Layout, Packed

MAX_DIRECTIONAL = 4
MAX_POINT = 4


@ti.func
def sh_basis(n):
    """The 9 weights w with irradiance / π = Σ_k w_k · sh_k for unit normal n: the real SH
    basis at n times Â_l / π (Ramamoorthi–Hanrahan), in the order of ``sh``."""
    x, y, z = n[0], n[1], n[2]
    a0, a1, a2 = 1.0, 2.0 / 3.0, 0.25  # Â_l / π
    return ti.Vector(
        [
            a0 * 0.282095,
            a1 * 0.488603 * y,
            a1 * 0.488603 * z,
            a1 * 0.488603 * x,
            a2 * 1.092548 * x * y,
            a2 * 1.092548 * y * z,
            a2 * 0.315392 * (3.0 * z * z - 1.0),
            a2 * 1.092548 * x * z,
            a2 * 0.546274 * (x * x - y * y),
        ]
    )


LIGHT_LAYOUT = Layout(
    ("ambient", (3,)),
    ("dir_direction", (MAX_DIRECTIONAL, 3)),
    ("dir_color", (MAX_DIRECTIONAL, 3)),
    ("point_position", (MAX_POINT, 3)),
    ("point_color", (MAX_POINT, 3)),
    ("sh", (9, 3)),
)
"""One packed light set: 78 reals, ``LIGHT_LAYOUT.offsets`` = ambient 0, dir_direction 3,
dir_color 15, point_position 27, point_color 39, sh 51 (rows of 3: x y z or r g b)."""
LIGHTS_SIZE = LIGHT_LAYOUT.size
AMBIENT, DIR_DIRECTION, DIR_COLOR, POINT_POSITION, POINT_COLOR, SH = (
    LIGHT_LAYOUT.offsets[n] for n in LIGHT_LAYOUT.names
)
_COLOURS = ("ambient", "dir_color", "point_color")


class Lights(Packed):
    """Lights as packed arrays, one set shared by every view or one per view (``views``).

    ``values``: ``views · LIGHTS_SIZE`` reals with gradients (``LIGHT_LAYOUT``);
    ``counts``: ``views · 2`` int32, the directional and point lights in use per set
    (slots beyond them are skipped). ``set`` takes the packed names (``ambient`` (3,) or
    a scalar, ``dir_direction``, ``dir_color``, ``point_position``, ``point_color`` (4, 3),
    ``sh`` (9, 3) or None for 0) and three convenience keywords: ``directional`` — a
    sequence of (direction, color), filling the first slots (directions normalised, the
    rest dark) and the count; ``point`` — (position, color) likewise; ``count`` —
    (directional, point) explicitly (e.g. (4, 4) to fit dark slots). Colours must be
    ≥ 0. ``reset()`` (the defaults: ambient 0.1, one white-ish directional light) is what
    ``Lights.set`` did."""

    layout = LIGHT_LAYOUT
    defaults = dict(
        ambient=(0.1, 0.1, 0.1),
        directional=(((0.3, 0.6, 1.0), (0.9, 0.9, 0.9)),),
        point=(),
        sh=None,
    )
    kind = "light"
    extra = ("directional", "point", "count")

    def __init__(self, views: int = 1, **values):
        self.counts = arrays.empty(2 * max(int(views), 1), dtype=ti.i32)
        super().__init__(views, **values)

    @property
    def count(self) -> np.ndarray:
        """(directional, point) lights in use: (2,), or (sets, 2)."""
        c = arrays.read(self.counts).reshape(self.sets, 2)
        return c[0] if self.sets == 1 else c

    def _write(self, view, values: dict) -> None:
        values = dict(values)
        explicit = values.pop("count", None)
        count = [None, None]
        for index, (key, names, cap) in enumerate(
            (
                ("directional", ("dir_direction", "dir_color"), MAX_DIRECTIONAL),
                ("point", ("point_position", "point_color"), MAX_POINT),
            )
        ):
            if key in values:
                slots = values.pop(key)
                if len(slots) > cap:
                    raise UserError(
                        f"at most {MAX_DIRECTIONAL} directional and {MAX_POINT} point lights"
                    )
                where, colour = np.zeros((cap, 3)), np.zeros((cap, 3))
                if key == "directional":
                    where[:, 2] = 1.0
                for i, (x, c) in enumerate(slots):
                    where[i], colour[i] = self._unit(x) if key == "directional" else x, c
                values[names[0]], values[names[1]] = where, colour
                count[index] = len(slots)
        if "sh" in values and values["sh"] is None:
            values["sh"] = np.zeros((9, 3))
        if "sh" in values:
            values["sh"] = np.asarray(values["sh"], dtype=np.float64).reshape(9, 3)
        super()._write(view, values)
        count = count if explicit is None else list(explicit)  # an explicit count wins
        if count != [None, None]:
            self._write_count(view, count)

    @staticmethod
    def _unit(direction) -> np.ndarray:
        v = np.asarray(direction, dtype=np.float64)
        if v.shape != (3,) or not np.all(np.isfinite(v)) or np.linalg.norm(v) == 0:
            raise UserError(f"light direction must be a finite non-zero vector, got {direction}")
        return v / np.linalg.norm(v)

    def _write_count(self, view, count) -> None:
        host = arrays.read(self.counts).reshape(self.sets, 2)
        for k, (n, cap) in enumerate(zip(count, (MAX_DIRECTIONAL, MAX_POINT))):
            if n is not None and (int(n) != n or not 0 <= n <= cap):
                raise UserError(f"light count must be 0..{cap}, got {n}")
            for s in self._views(view):
                host[s, k] = host[s, k] if n is None else int(n)
        arrays.write(self.counts, host.ravel())

    def check(self, values: dict) -> dict:
        values = super().check(values)
        for name in _COLOURS:
            if name in values and np.any(values[name] < 0):
                raise UserError(f"light {name} must be ≥ 0, got {values[name].tolist()}")
        return values


@ti.func
def sh_irradiance_at(lights: ti.template(), o, n):
    """``sh_irradiance`` of the packed SH coefficients that start at ``lights[o]``."""
    w = sh_basis(n)
    out = ti.Vector([0.0, 0.0, 0.0])
    for k in ti.static(range(9)):
        out += w[k] * arrays.vec3_at(lights, o + 3 * k)
    return out
