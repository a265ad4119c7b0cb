"""The orbit camera of the viewer and the live views: :class:`ViewState`, pure Python (no
Taichi, no window, no renderer), driven by GGUI key names and cursor positions, so the
runner and the live view can use it without importing the rasterizer."""

import dataclasses
import math

import numpy as np

from ..camera import Camera, check_fov, numbers
from ..errors import UserError
from ..scene import Mesh

SHADING_KEYS = {
    "l": "lambert",
    "p": "phong",
    "b": "blinn-phong",
    "g": "ggx",
    "n": "normals",
    "u": "unlit",
}
AOVS = ("image", "depth", "normal", "uv", "triangle_id", "mask")
ORBIT_STEP = 15.0  # degrees per arrow key press
ZOOM_STEP = 1.15  # distance factor per Up/Down press


@dataclasses.dataclass
class ViewState:
    """Orbit camera around ``center`` plus what to show; no Taichi, no window.

    The eye sits at ``center + distance · (cos el · sin az, sin el, cos el · cos az)``
    (degrees; azimuth 0 looks down −z, y is up). ``radius`` bounds the mesh around
    ``center`` and sets the default distance (framing it in a ``aspect`` = W / H view),
    the zoom limits and near/far.
    """

    center: np.ndarray
    radius: float
    fov: float = 45.0  # vertical, degrees
    aspect: float = 1.0  # width / height, for the default distance
    azimuth: float = 30.0
    elevation: float = 20.0
    distance: float = 0.0  # 0: frame the bounding sphere
    shading: str = "blinn-phong"
    aov: str = "image"
    running: bool = True
    screenshot: bool = False
    _cursor: tuple | None = dataclasses.field(default=None, init=False, repr=False)
    _home: tuple = dataclasses.field(default=(), init=False, repr=False)

    def __post_init__(self):
        self.center = np.asarray(self.center, dtype=np.float64)
        if not (self.radius > 0 and math.isfinite(self.radius)):
            raise UserError(f"view radius must be positive, got {self.radius}")
        if self.shading not in SHADING_KEYS.values():
            names = ", ".join(SHADING_KEYS.values())
            raise UserError(f"unknown shading {self.shading!r}; choose one of {names}")
        if self.aov not in AOVS:
            raise UserError(f"unknown AOV {self.aov!r}; choose one of {', '.join(AOVS)}")
        self.fov = check_fov(self.fov)
        for name in ("aspect", "azimuth", "elevation", "distance"):
            setattr(self, name, float(numbers(getattr(self, name), (), name)))
        if not self.aspect > 0:
            raise UserError(f"aspect must be positive, got {self.aspect}")
        if self.distance <= 0:  # fit the bounding sphere into the narrower field of view
            half = math.atan(math.tan(math.radians(self.fov) / 2) * min(self.aspect, 1.0))
            self.distance = self.radius / math.sin(half) * 1.1
        self.distance = self._clamp_distance(self.distance)
        self.elevation = float(np.clip(self.elevation, -89.0, 89.0))
        self._home = (self.azimuth, self.elevation, self.distance)

    @classmethod
    def framing(cls, mesh: Mesh, **kwargs) -> "ViewState":
        """A state looking at the bounding-box centre of ``mesh``, framing all of it."""
        if mesh.num_vertices == 0:
            raise UserError(f"mesh {mesh.name!r} has no vertices; nothing to view")
        lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
        center = (lo + hi) / 2
        radius = max(float(np.linalg.norm(mesh.vertices - center, axis=1).max()), 1e-6)
        return cls(center=center, radius=radius, **kwargs)

    # ----------------------------------------------------------------- camera
    def _clamp_distance(self, d: float) -> float:
        return float(np.clip(d, 0.25 * self.radius, 50.0 * self.radius))

    def eye(self) -> np.ndarray:
        az, el = math.radians(self.azimuth), math.radians(self.elevation)
        d = np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
        return self.center + self.distance * d

    def depth_range(self) -> tuple[float, float]:
        """(near, far) eye-space depths that contain the bounding sphere."""
        near = max(self.distance - 1.01 * self.radius, 1e-3 * self.distance)
        return near, self.distance + 1.01 * self.radius

    def camera(self, width: int, height: int) -> Camera:
        near, far = self.depth_range()
        return Camera.look_at(
            self.eye(), self.center, (0, 1, 0), self.fov, width, height, near, far
        )

    def lights(self) -> dict:
        """A headlight (from above-right of the eye) plus ambient, as ``Lights.set`` kwargs."""
        view = self.camera(2, 2).view
        right, up, back = view[0, :3], view[1, :3], view[2, :3]
        return dict(
            ambient=(0.08, 0.08, 0.08), directional=[(back + 0.4 * up + 0.3 * right, (1.0,) * 3)]
        )

    # ----------------------------------------------------------------- input
    def orbit(self, d_azimuth: float, d_elevation: float) -> None:
        self.azimuth = (self.azimuth + d_azimuth) % 360.0
        self.elevation = float(np.clip(self.elevation + d_elevation, -89.0, 89.0))

    def zoom(self, factor: float) -> None:
        """Multiply the distance by ``factor`` (< 1 moves closer), within the limits."""
        self.distance = self._clamp_distance(self.distance * factor)

    def press(self, key: str) -> None:
        """Handle one GGUI key name ("a", "Up", "Escape", ...); unknown keys are ignored."""
        if key in SHADING_KEYS:
            self.shading = SHADING_KEYS[key]
        elif key == "a":
            self.aov = AOVS[(AOVS.index(self.aov) + 1) % len(AOVS)]
        elif key in ("Left", "Right"):
            self.orbit(ORBIT_STEP if key == "Left" else -ORBIT_STEP, 0.0)
        elif key in ("Up", "Down"):
            self.zoom(1 / ZOOM_STEP if key == "Up" else ZOOM_STEP)
        elif key == "r":
            self.azimuth, self.elevation, self.distance = self._home
        elif key == "s":
            self.screenshot = True
        elif key in ("q", "Escape"):
            self.running = False

    def pointer(self, pos, left: bool, right: bool) -> None:
        """Cursor ``pos`` = (x, y) in [0, 1]² (y up) with the buttons held this frame.
        Left-drag across the window turns 180° in azimuth / elevation (the object follows
        the cursor); right-drag upwards by the window height zooms in e×."""
        if self._cursor is not None and (left or right):
            dx, dy = pos[0] - self._cursor[0], pos[1] - self._cursor[1]
            if left:
                self.orbit(-180.0 * dx, -180.0 * dy)
            else:
                self.zoom(math.exp(-dy))
        self._cursor = tuple(pos) if (left or right) else None

    def take_screenshot(self) -> bool:
        """True once per ``s`` press."""
        shot, self.screenshot = self.screenshot, False
        return shot

    def key(self) -> tuple:
        """Everything that changes the rendered picture (to skip redundant renders)."""
        return (self.azimuth, self.elevation, self.distance, self.shading, self.aov)
