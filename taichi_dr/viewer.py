"""Interactive viewer: our renderer's image in a GGUI window, or headless to PNG.

:class:`ViewState` is the pure-Python part (orbit camera, shading model, AOV, pending
actions) and is driven by key names and cursor positions; :class:`Viewer` renders a state
with :class:`~taichi_dr.render.pipeline.Renderer` into a GGUI canvas image;
:func:`run_window` and :func:`run_headless` are the two frame loops.

Controls: see ``CONTROLS`` (GGUI 1.7.4 reports letters, arrows, Escape and mouse
buttons only — no digits, no scroll wheel, hence letter keys for the shading models).

GGUI needs a Vulkan driver whatever ``--arch`` is (lavapipe: Debian ``mesa-vulkan-drivers
libvulkan1``); a window also needs a display (``DISPLAY``; Xvfb works).
"""

import dataclasses
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import taichi as ti

from .camera import Camera, check_fov, numbers
from .errors import UserError
from .render import arrays
from .render.arrays import Int, Real, Vec2, Vec3
from .render.pipeline import Renderer, RenderSettings
from .render.shading import MODELS
from .scene import Mesh

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
TITLE = "taichi-dr view"
CONTROLS = """\
left-drag   orbit                 right-drag (vertical), Up/Down  zoom
Left/Right  orbit 15 degrees      l p b g n u  lambert phong blinn-phong ggx normals unlit
a           cycle AOV: image depth normal uv triangle_id mask (false colour)
r           reset view            s  screenshot          Esc, q  quit"""


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
        if self.shading not in MODELS:
            raise UserError(f"unknown shading {self.shading!r}; choose one of {', '.join(MODELS)}")
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


@ti.func
def _srgb(c):
    x = ti.math.clamp(c, 0.0, 1.0)
    return ti.select(x <= 0.0031308, 12.92 * x, 1.055 * ti.pow(x, 1.0 / 2.4) - 0.055)


@ti.func
def _turbo(t):
    """Google's polynomial fit of the Turbo colour map, t in [0, 1]."""
    t = ti.math.clamp(t, 0.0, 1.0)
    r = 0.13572138 + t * (
        4.6153926 + t * (-42.66032258 + t * (132.13108234 + t * (-152.94239396 + t * 59.28637943)))
    )
    g = 0.09140261 + t * (
        2.19418839 + t * (4.84296658 + t * (-14.18503333 + t * (4.27729857 + t * 2.82956604)))
    )
    b = 0.1066733 + t * (
        12.64194608 + t * (-60.58204836 + t * (110.36276771 + t * (-89.90310912 + t * 27.34824973)))
    )
    return ti.math.clamp(ti.Vector([r, g, b]), 0.0, 1.0)


@ti.kernel
def _compose(
    mode: ti.i32,
    height: ti.i32,
    width: ti.i32,
    image: Vec3,
    tri: Int,
    depth: Real,
    normal: Vec3,
    uv: Vec2,
    near: ti.f32,
    far: ti.f32,
    display: Vec3,
):
    """``display`` (W·H,) at x·H + y, y up (how GGUI canvases index pictures), from the
    renderer's flat (H·W,) outputs (row 0 at the top)."""
    for k in range(display.shape[0]):
        x, y = k // height, k % height
        i = (height - 1 - y) * width + x  # image row 0 is the top, canvas y grows upwards
        t = tri[i]
        c = ti.Vector([0.0, 0.0, 0.0])
        if mode == 0:
            c = _srgb(image[i])
        elif t >= 0:
            if mode == 1:  # near = warm, far = cold
                c = _turbo(1.0 - (depth[i] - near) / (far - near))
            elif mode == 2:
                c = normal[i].normalized(1e-12) * 0.5 + 0.5
            elif mode == 3:
                w = uv[i]
                c = ti.Vector([w[0] - ti.floor(w[0]), w[1] - ti.floor(w[1]), 0.0])
            elif mode == 4:
                h = ti.cast(t + 1, ti.u32) * ti.u32(2654435761)
                c = ti.Vector([(h >> 8) & 255, (h >> 16) & 255, (h >> 24) & 255]) / 255.0
            else:
                c = ti.Vector([1.0, 1.0, 1.0])
        display[k] = c


class Viewer:
    """Renders a :class:`ViewState` of ``mesh`` at ``width`` × ``height``.

    Owns ``display`` (W·H,) vec3, the picture as GGUI canvases index it ([x, y]
    with y up: :meth:`canvas_image` gives the (W, H, 3) array), display-ready
    (sRGB-encoded image, or an AOV in false colour).
    """

    def __init__(self, mesh: Mesh, state: ViewState, width: int, height: int):
        self.mesh, self.state = mesh, state
        self.width, self.height = int(width), int(height)
        self.renderer = Renderer(mesh, state.camera(width, height), RenderSettings(state.shading))
        self.display = arrays.empty(self.width * self.height, 3)
        self._drawn = None

    def draw(self) -> bool:
        """Render the current state into ``display``; False when nothing changed."""
        if self.state.key() == self._drawn:
            return False
        s, r = self.state, self.renderer
        if r.settings.shading != s.shading:
            r.configure(shading=s.shading)
        r.set_camera(s.camera(self.width, self.height))
        r.lights.reset(**s.lights())
        r.rasterize()
        r.shade()
        near, far = s.depth_range()
        p = r.pixels
        _compose(
            AOVS.index(s.aov),
            self.height,
            self.width,
            r.image,
            r.triangle_id,
            p.depth,
            p.normal,
            p.uv,
            near,
            far,
            self.display,
        )
        self._drawn = s.key()
        return True

    def canvas_image(self) -> np.ndarray:
        """``display`` as the (W, H, 3) float32 array GGUI's ``canvas.set_image`` takes."""
        return self.display.to_numpy().reshape(self.width, self.height, 3).astype(np.float32)

    def picture(self) -> np.ndarray:
        """``display`` as an (H, W, 3) array, row 0 at the top (what a screenshot holds)."""
        return np.ascontiguousarray(self.canvas_image().transpose(1, 0, 2)[::-1])


def open_window(width: int, height: int, show: bool):
    """A GGUI window; clear UserErrors instead of an exiting process or a Vulkan error."""
    if show and sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        raise UserError(
            "no display to open a window on (DISPLAY is not set); pass --headless to write "
            "the view to PNG files instead, or run under Xvfb"
        )
    try:
        return ti.ui.Window(TITLE, (width, height), vsync=show, show_window=show, fps_limit=60)
    except RuntimeError as exc:
        raise UserError(
            f"cannot open a GGUI window ({exc}); GGUI needs a Vulkan driver even with "
            "--arch cpu: install one (Debian: apt-get install mesa-vulkan-drivers libvulkan1)"
        ) from None


def _screenshot_path(folder: Path) -> Path:
    k = 0
    while (folder / f"screenshot_{k:04d}.png").exists():
        k += 1
    return folder / f"screenshot_{k:04d}.png"


def run_headless(viewer: Viewer, frames: int, out, spin: float = 0.0) -> Path:
    """Draw ``frames`` frames (turning ``spin`` degrees of azimuth between frames) into an
    invisible GGUI window and save the last one as ``out/view.png``."""
    window = open_window(viewer.width, viewer.height, show=False)
    canvas = window.get_canvas()
    start = time.perf_counter()
    for i in range(frames):
        if i:
            viewer.state.orbit(spin, 0.0)
        viewer.draw()
        canvas.set_image(viewer.canvas_image())
    ti.sync()
    seconds = time.perf_counter() - start
    path = Path(out) / "view.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    window.save_image(str(path))  # each headless frame can be read back once: save last
    window.destroy()
    print(f"{frames} frame(s) in {seconds:.3f} s (incl. compile) -> {path}")
    return path


def run_window(viewer: Viewer, out, frames: int | None = None) -> int:
    """The interactive loop. With ``frames`` it stops after that many frames and saves
    the last one as ``out/view.png``; ``s`` saves ``out/screenshot_NNNN.png``."""
    window = open_window(viewer.width, viewer.height, show=True)
    canvas = window.get_canvas()
    state, out = viewer.state, Path(out)
    print(CONTROLS, flush=True)
    i = 0
    while window.running and state.running and (frames is None or i < frames):
        for event in window.get_events(ti.ui.PRESS):
            before = (state.shading, state.aov)
            state.press(event.key)
            if (state.shading, state.aov) != before:
                print(f"shading: {state.shading}, aov: {state.aov}", flush=True)
        state.pointer(
            window.get_cursor_pos(), window.is_pressed(ti.ui.LMB), window.is_pressed(ti.ui.RMB)
        )
        viewer.draw()
        canvas.set_image(viewer.canvas_image())
        i += 1
        last = frames is not None and i == frames
        if state.take_screenshot() or last:
            out.mkdir(parents=True, exist_ok=True)
            path = out / "view.png" if last else _screenshot_path(out)
            window.save_image(str(path))
            print(f"saved {path}", flush=True)
        window.show()
    window.destroy()
    return 0
