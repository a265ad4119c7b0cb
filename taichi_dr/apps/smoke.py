"""The smoke applications of ``taichi-dr smoke``: optimise a differentiable smoke
simulation (:mod:`taichi_dr.sim`) through time to match targets.

* ``init-velocity`` (DiffTaichi parity): a checkerboard of smoke on a periodic grid; optimise
  the initial velocity field so that the density after N steps matches the target image.
* ``control``: a blob of smoke in a closed box; optimise per-step control forces instead.
* ``volume`` (3D): a ball of smoke rising by buoyancy in a closed box; optimise its initial
  density so that volume renderings of the density after N steps, from ``views`` cameras on
  an orbit, match renderings of a hidden smoke ring's rollout (simulation → rendering → loss).

Each is built from :class:`SmokeOptions` (:func:`build`) and run by :func:`optimise` over the
shared :class:`~taichi_dr.apps.runner.Runner`. The 2D target is the Taichi (yin-yang) logo
drawn by code, or ``target``: grey levels of an image of exactly grid × grid pixels (a
differently sized image is an error, never silently resized). The loss is a mean squared
error over the simulation's Taichi fields (the library's losses take arrays).
"""

from dataclasses import dataclass

import numpy as np
import taichi as ti

from .. import backend, io
from ..camera import orbit
from ..errors import UserError
from ..optim import Adam, Checkpoint
from ..sim import Smoke, SmokeConfig, VolumeRenderer, grid_to_image, image_to_grid
from .runner import Runner

# Per task: grid, steps, iterations, learning rate.
DEFAULTS = {
    "init-velocity": (128, 100, 100, 0.1),
    "control": (128, 100, 150, 0.002),
    "volume": (32, 24, 60, 0.05),
}


@dataclass
class SmokeOptions:
    """What a smoke application is built from: ``task`` (a key of ``DEFAULTS``), ``grid``
    cells per side and ``steps`` (None: the task's default), the solver's ``dt``,
    ``solver``, ``jacobi_iters``, ``advection`` (None: semi-Lagrangian) and ``checkpoint``
    segment (0: √steps); ``target`` image path (2D tasks); the volume task's ``views``,
    image ``resolution``, ``ray_steps`` (0: 2 × grid) and ``absorption``."""

    task: str = "init-velocity"
    grid: int | None = None
    steps: int | None = None
    dt: float = 1.0
    solver: str = "jacobi"
    jacobi_iters: int = 10
    advection: str | None = None
    checkpoint: int = 0
    target: str | None = None
    views: int = 3
    resolution: int = 48
    ray_steps: int = 0
    absorption: float = 4.0

    def __post_init__(self):
        if self.task not in DEFAULTS:
            raise UserError(
                f"unknown smoke task {self.task!r}; choose one of {', '.join(DEFAULTS)}"
            )
        grid, steps = DEFAULTS[self.task][:2]
        self.grid = grid if self.grid is None else self.grid
        self.steps = steps if self.steps is None else self.steps
        limit = 512 if self.task == "volume" else 4096
        if not 4 <= self.grid <= limit:
            raise UserError(f"--grid must lie in [4, {limit}], got {self.grid}")

    def config(self, shape: tuple, **task) -> SmokeConfig:
        """The simulation's configuration on a grid of ``shape``, with the task's own
        settings (boundary, controls, buoyancy)."""
        return SmokeConfig(
            shape=shape,
            steps=self.steps,
            dt=self.dt,
            advection=self.advection or "semi-lagrangian",
            solver=self.solver,
            jacobi_iters=self.jacobi_iters,
            checkpoint=self.checkpoint,
            **task,
        )


def taichi_logo(n: int, blur: float = 1.5) -> np.ndarray:
    """The yin-yang logo as an (n, n) image in [0, 1] (smoke = 1), row 0 at the top."""
    from PIL import Image, ImageDraw, ImageFilter

    s = 4 * n  # supersample, then shrink
    img = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(img)
    r = 0.38 * s
    c = s / 2
    d.ellipse([c - r, c - r, c + r, c + r], fill=90)  # outline of the disc (dim)
    d.pieslice([c - r, c - r, c + r, c + r], 90, 270, fill=255)  # left half bright
    d.ellipse([c - r / 2, c - r, c + r / 2, c], fill=255)  # top small disc bright
    d.ellipse([c - r / 2, c, c + r / 2, c + r], fill=90)  # bottom small disc dim
    d.ellipse([c - r / 8, c - r / 2 - r / 8, c + r / 8, c - r / 2 + r / 8], fill=90)
    d.ellipse([c - r / 8, c + r / 2 - r / 8, c + r / 8, c + r / 2 + r / 8], fill=255)
    img = img.resize((n, n), Image.LANCZOS).filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(img, dtype=np.float64) / 255.0


def load_target(path, n: int) -> np.ndarray:
    """Grey levels of image ``path`` (must be n × n pixels) as an (n, n) image in [0, 1]."""
    img = io.load_image(path, srgb=False)
    if img.shape[:2] != (n, n):
        raise UserError(
            f"target {path} is {img.shape[1]}x{img.shape[0]} pixels but the grid is {n}x{n}; "
            f"resize the image to {n}x{n} or pass --grid {img.shape[0]} (square images only)"
        )
    return img[..., : min(3, img.shape[2])].mean(axis=2)


def _checkerboard(n: int) -> np.ndarray:
    """8 × 8 squares (1-cell squares on grids smaller than 8)."""
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    size = max(n // 8, 1)
    return (((i // size) + (j // size)) % 2).astype(np.float64)


def _blob(n: int) -> np.ndarray:
    i, j = np.meshgrid(np.arange(n) + 0.5, np.arange(n) + 0.5, indexing="ij")
    return np.exp(-((((i - n / 2) / (0.22 * n)) ** 2 + ((j - 0.25 * n) / (0.12 * n)) ** 2) ** 2))


def _ball(n: int, center, radius: float) -> np.ndarray:
    """Smooth ball of smoke on an (n, n, n) grid; ``center``, ``radius`` in units of n."""
    x = (np.arange(n) + 0.5) / n
    g = np.stack(np.meshgrid(x, x, x, indexing="ij"), axis=-1)
    r2 = np.sum((g - np.asarray(center)) ** 2, axis=-1) / radius**2
    return np.exp(-(r2**2))


def _ring(n: int, center, major: float, minor: float) -> np.ndarray:
    """Smooth horizontal (y-up) smoke ring on an (n, n, n) grid, in units of n."""
    x = (np.arange(n) + 0.5) / n
    gx, gy, gz = np.meshgrid(x, x, x, indexing="ij")
    cx, cy, cz = center
    rho = np.hypot(gx - cx, gz - cz) - major
    return np.exp(-(((rho**2 + (gy - cy) ** 2) / minor**2) ** 2))


@ti.kernel
def _mse(a: ti.template(), b: ti.template(), loss: ti.template(), inv_n: float):
    for I in ti.grouped(a):
        loss[None] += (a[I] - b[I]) ** 2 * inv_n


@ti.kernel
def _clamp_nonnegative(f: ti.template()):
    for I in ti.grouped(f):
        f[I] = ti.max(f[I], 0.0)


def _gray(img):
    return np.repeat(np.clip(img, 0, None)[..., None], 3, axis=2)


class ImageTask:
    """2D tasks: the final density (an image) against a target image."""

    def __init__(self, options: SmokeOptions):
        n, parity = options.grid, options.task == "init-velocity"
        self.target_img = load_target(options.target, n) if options.target else taichi_logo(n)
        boundary = "periodic" if parity else "closed"
        self.cfg = options.config((n, n), boundary=boundary, controls=not parity)
        self.sim = sim = Smoke(self.cfg)
        init = _checkerboard(n) if parity else _blob(n) * self.target_img.sum() / _blob(n).sum()
        sim.set_initial(init, [np.zeros(f.shape) for f in sim.init_velocity])
        self.params = sim.init_velocity if parity else sim.force
        self.target = ti.field(backend.real(), (n, n))
        self.target.from_numpy(image_to_grid(self.target_img).astype(backend.np_real()))

    def objective(self, loss):
        self.sim.run()
        _mse(self.sim.out_density, self.target, loss, 1 / self.target_img.size)

    def after_step(self):
        pass

    def frame(self, slot):
        return _gray(grid_to_image(self.sim.slot_density(slot)))

    def current(self):
        return grid_to_image(self.sim.out_density.to_numpy())

    def panels(self):
        cur = self.current()
        return [_gray(self.target_img), _gray(cur), _gray(np.abs(cur - self.target_img))]

    def save(self, out):
        io.save_image(out / "target.png", self.target_img, srgb=False)
        io.save_image(out / "final.png", self.current(), srgb=False)


class VolumeTask:
    """3D task: volume renderings of the final density against renderings of a hidden
    rollout from another initial density (a smoke ring instead of a ball)."""

    def __init__(self, options: SmokeOptions):
        n = options.grid
        if options.target:
            raise UserError("--target is for the 2D tasks; volume targets are rendered")
        if not 1 <= options.views <= 8:
            raise UserError(f"--views must lie in [1, 8], got {options.views}")
        self.cfg = options.config((n, n, n), boundary="closed", buoyancy=0.15)
        self.sim = sim = Smoke(self.cfg)
        res = options.resolution
        cams = orbit(options.views, radius=3.6, elevation=30.0, fov=40.0, width=res, height=res)
        self.renderer = VolumeRenderer(
            (n, n, n),
            cams,
            steps=options.ray_steps or 2 * n,
            absorption=options.absorption,
            emission=tuple(k * options.absorption for k in (0.9, 0.85, 0.8)),
            background=(0.02, 0.03, 0.08),
        )
        ring = _ring(n, (0.5, 0.3, 0.5), 0.2, 0.07)
        ball = _ball(n, (0.5, 0.3, 0.5), 0.2)
        zero_velocity = [np.zeros(f.shape) for f in sim.init_velocity]
        sim.set_initial(ring, zero_velocity)
        sim.forward()
        self.renderer.forward(sim.out_density)
        self.target_images = self.renderer.images()
        self.target = ti.field(backend.real(), self.target_images.shape)
        self.target.from_numpy(self.target_images)
        sim.set_initial(ball * ring.sum() / ball.sum(), zero_velocity)
        self.params = [sim.init_density]

    def objective(self, loss):
        self.sim.run()
        self.renderer.render(self.sim.out_density)
        _mse(self.renderer.image, self.target, loss, 1 / self.target_images.size)

    def after_step(self):
        _clamp_nonnegative(self.sim.init_density)  # projected Adam: density stays ≥ 0

    def frame(self, slot):
        # out_density is scratch here: forward() rewrites it after the last step.
        self.sim.out_density.from_numpy(self.sim.slot_density(slot))
        self.renderer.forward(self.sim.out_density)
        return np.concatenate(list(self.renderer.images()), axis=1)

    def panels(self):
        cur = self.renderer.images()
        tgt = self.target_images
        return [np.concatenate(list(a), axis=0) for a in (tgt, cur, np.abs(cur - tgt))]

    def save(self, out):
        io.save_image(out / "target.png", np.concatenate(list(self.target_images), axis=1))
        self.renderer.forward(self.sim.out_density)
        io.save_image(out / "final.png", np.concatenate(list(self.renderer.images()), axis=1))


def build(options: SmokeOptions):
    """The task object of ``options.task``: its simulation (``sim``), parameters
    (``params``), ``objective(loss)``, ``after_step()``, rollout ``frame(slot)``, live
    ``panels()`` and ``save(out)``."""
    return (VolumeTask if options.task == "volume" else ImageTask)(options)


def optimise(task, runner: Runner, iterations: int, lr: float) -> dict:
    """Adam on ``task.params`` for ``iterations`` under ``runner`` (checkpoints, metrics,
    live view), with rollout videos before and after; returns the final metrics (also in
    metrics.json)."""
    sim = task.sim
    opt = Adam(task.params, lr)
    loss = ti.field(backend.real(), (), needs_grad=True)

    def evaluate():
        loss[None] = 0.0
        task.objective(loss)
        return loss[None]

    def rollout_frames():
        frames = []
        sim.forward(on_step=lambda t, s: frames.append(task.frame(s)))
        return frames

    mse0 = evaluate()
    io.write_video(runner.out / "rollout_before.gif", rollout_frames())

    def step(it):
        opt.zero_grad()
        with backend.Tape(loss, clear_gradients=False):
            loss[None] = 0.0
            task.objective(loss)
        value = loss[None]
        opt.step()
        task.after_step()
        return {"loss": value, "mse": value, "reduction": 1 - value / mse0}

    state = Checkpoint(dict(enumerate(opt.params)), {"adam": opt}, settings="grid or steps")
    runner.run(step, iterations, state=state, panels=task.panels)
    mse = evaluate()
    frames = rollout_frames()
    io.write_video(runner.out / "rollout_after.gif", frames)
    io.write_video(runner.out / "rollout_after.mp4", frames)
    task.save(runner.out)
    reduction = 1 - mse / mse0
    final = dict(mse_start=mse0, mse=mse, reduction=reduction, goal_met=bool(reduction >= 0.9))
    return runner.finish(final)["final"]
