"""The live view of an optimisation (``taichi-dr fit`` without ``--headless``).

A *dashboard* picture (H_total, W_total, 3), linear RGB, row 0 at the top::

    +----------+----------+----------+
    |  target  | current  |  error   |   of the selected view
    +----------+----------+----------+
    |  orbit   |  loss (log scale)   |   orbit: the current model from a free camera
    +----------+---------------------+

:class:`LiveState` is the pure-Python part (pause, single steps, selected view, the orbit
camera as a :class:`~taichi_dr.apps.orbit.ViewState`), driven by GGUI key names and cursor
positions; :func:`loss_plot` rasterizes the loss curve with numpy; :func:`compose` lays
the panels out. The runner (:mod:`taichi_dr.apps.runner`) owns the window; headless runs write
the final dashboard as ``dashboard.png``.
"""

import dataclasses
import math

import numpy as np

from .orbit import ViewState

CONTROLS = """\
space  pause / resume       s, n  single step (pauses)      v, Right / Left  next / previous view
left-drag  orbit the model  right-drag, Up/Down  zoom        r  reset orbit      q, Esc  stop"""


@dataclasses.dataclass
class LiveState:
    """What the live window shows and whether the optimisation may take a step."""

    views: int = 1
    view: int = 0
    paused: bool = False
    pending: int = 0  # single steps asked for while paused
    running: bool = True
    orbit: ViewState | None = None

    def press(self, key: str) -> None:
        """Handle one GGUI key name (" ", "s", "Right", "Escape", ...); others are ignored."""
        if key == " ":
            self.paused, self.pending = not self.paused, 0
        elif key in ("s", "n"):
            self.paused = True
            self.pending += 1
        elif key in ("v", "Right", "Left"):
            d = -1 if key == "Left" else 1
            self.view = (self.view + d) % self.views
        elif key in ("q", "Escape"):
            self.running = False
        elif key in ("Up", "Down", "r") and self.orbit is not None:
            self.orbit.press(key)

    def pointer(self, pos, left: bool, right: bool) -> None:
        """Cursor ``pos`` in [0, 1]² of the window and the buttons held: orbit / zoom."""
        if self.orbit is not None:
            self.orbit.pointer(pos, left, right)

    def take_step(self) -> bool:
        """True when the optimisation may run one iteration now (consumes a single step)."""
        if not self.paused:
            return True
        if self.pending:
            self.pending -= 1
            return True
        return False

    def describe(self) -> str:
        state = "paused" if self.paused else "running"
        return f"{state}, view {self.view + 1} of {self.views}"


BACKGROUND = np.array([0.02, 0.02, 0.025])
GRID = np.array([0.08, 0.08, 0.09])
CURVE = np.array([1.0, 0.35, 0.05])


def loss_plot(losses, width: int, height: int, margin: int = 4) -> np.ndarray:
    """The loss curve as an (height, width, 3) linear-RGB image: iteration on x (0 at the
    left edge, the last at the right), log10(loss) on y (largest at the top), a grid line
    at every power of ten; non-positive losses are clipped to 1e-30. The ``margin`` (pixels)
    shrinks for tiny images."""
    margin = max(0, min(margin, (min(width, height) - 2) // 2))
    img = np.empty((height, width, 3))
    img[:] = BACKGROUND
    y = np.log10(np.maximum(np.asarray(losses, dtype=np.float64), 1e-30))
    if len(y) == 0:
        return img
    lo, hi = float(y.min()), float(y.max())
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    inner_w, inner_h = max(width - 2 * margin - 1, 1), max(height - 2 * margin - 1, 1)

    def row(v):
        return margin + (hi - v) / (hi - lo) * inner_h

    for decade in range(math.ceil(lo), math.floor(hi) + 1):
        img[int(round(row(decade)))] = GRID
    xs = margin + np.arange(len(y)) * inner_w / max(len(y) - 1, 1)
    ys = row(y)
    if len(y) == 1:
        xs, ys = np.array([xs[0], xs[0] + inner_w]), np.repeat(ys, 2)
    # every segment sampled at ≥ 1 point per pixel along its longer axis
    for x0, y0, x1, y1 in zip(xs[:-1], ys[:-1], xs[1:], ys[1:]):
        n = int(max(abs(x1 - x0), abs(y1 - y0))) + 2
        t = np.linspace(0.0, 1.0, n)
        c = np.clip(np.round(x0 + t * (x1 - x0)).astype(int), 0, width - 1)
        r = np.clip(np.round(y0 + t * (y1 - y0)).astype(int), 0, height - 1)
        img[r, c] = CURVE
    return img


def compose(panels, orbit=None, losses=()) -> np.ndarray:
    """The dashboard: ``panels`` (equal-size (H, W, 3) images, e.g. target | current |
    error) side by side above ``orbit`` (an (H, W, 3) image or None) and the loss plot
    filling the rest of the second row."""
    top = np.concatenate([np.asarray(p, np.float64) for p in panels], axis=1)
    h, total = panels[0].shape[0], top.shape[1]
    bottom = [] if orbit is None else [np.asarray(orbit, np.float64)]
    used = sum(b.shape[1] for b in bottom)
    bottom.append(loss_plot(losses, total - used, h))
    return np.concatenate([top, np.concatenate(bottom, axis=1)], axis=0)


def upscale(image: np.ndarray, width: int = 768) -> np.ndarray:
    """``image`` repeated by the integer factor that brings its width nearest ``width``
    (nearest neighbour; at least 1): small fits stay legible in the window."""
    k = max(1, round(width / image.shape[1]))
    return np.repeat(np.repeat(image, k, axis=0), k, axis=1) if k > 1 else image
