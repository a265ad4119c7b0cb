"""``taichi-dr smoke init-velocity|control|volume``: optimise a smoke simulation to match targets.

* ``init-velocity`` (DiffTaichi parity): a checkerboard of smoke on a periodic grid; optimise the
  initial velocity field so that the density after N steps matches the target image.
* ``control``: a blob of smoke in a closed box; optimise per-step control forces instead.
* ``volume`` (3D): a ball of smoke rising by buoyancy in a closed box; optimise its initial
  density so that volume renderings of the density after N steps, from ``--views`` cameras on
  an orbit, match renderings of a hidden smoke ring's rollout (simulation → rendering → loss).

The 2D target is the Taichi (yin-yang) logo drawn by code, or ``--target IMAGE`` (grey levels
of an image of exactly grid × grid pixels: a differently sized image is an error, never
silently resized). Writes metrics.json, loss.png, progress.gif, rollout_before.gif,
rollout_after.gif, rollout_after.mp4, target.png, final.png and checkpoint.npz to ``--out``.
"""

import math

import numpy as np
import taichi as ti

from .. import backend, io
from ..apps.runner import Runner
from ..camera import orbit
from ..errors import UserError
from ..optim import Adam, Checkpoint
from ..sim import Smoke, SmokeConfig, VolumeRenderer, grid_to_image, image_to_grid

TASKS = ("init-velocity", "control", "volume")
# Per task: grid, steps, iterations, learning rate.
DEFAULTS = {
    "init-velocity": (128, 100, 100, 0.1),
    "control": (128, 100, 150, 0.002),
    "volume": (32, 24, 60, 0.05),
}


def add_arguments(parser):
    parser.add_argument("task", choices=TASKS, help="what to optimise")
    parser.add_argument("--grid", type=int, help="cells per side (default 128; volume 32)")
    parser.add_argument("--steps", type=int, help="simulation steps (default 100; volume 24)")
    parser.add_argument("--dt", type=float, default=1.0, help="time step (default 1)")
    parser.add_argument("--iters", type=int, help="optimisation iterations (default per task)")
    parser.add_argument("--lr", type=float, help="Adam learning rate (default per task)")
    parser.add_argument("--solver", choices=("jacobi", "cg"), default="jacobi")
    parser.add_argument("--jacobi-iters", type=int, default=10)
    parser.add_argument("--advection", choices=("semi-lagrangian", "maccormack"))
    parser.add_argument("--checkpoint", type=int, default=0, help="segment length (0: √steps)")
    parser.add_argument("--target", help="target image (grid × grid pixels)")
    parser.add_argument("--checkpoint-every", type=int, default=10, help="iterations")
    parser.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.npz")
    parser.add_argument("--frame-every", type=int, default=5, help="iterations per progress frame")
    volume = parser.add_argument_group("volume task")
    volume.add_argument("--views", type=int, default=3, help="cameras (default 3)")
    volume.add_argument("--resolution", type=int, default=48, help="image side in pixels")
    volume.add_argument("--ray-steps", type=int, default=0, help="march steps (0: 2 × grid)")
    volume.add_argument("--absorption", type=float, default=4.0, help="σ per density per unit")


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


class _ImageTask:
    """2D tasks: the final density (an image) against a target image."""

    def __init__(self, args, n, steps):
        parity = args.task == "init-velocity"
        self.target_img = load_target(args.target, n) if args.target else taichi_logo(n)
        self.cfg = SmokeConfig(
            shape=(n, n),
            steps=steps,
            dt=args.dt,
            boundary="periodic" if parity else "closed",
            advection=args.advection or "semi-lagrangian",
            solver=args.solver,
            jacobi_iters=args.jacobi_iters,
            checkpoint=args.checkpoint,
            controls=not parity,
        )
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


class _VolumeTask:
    """3D task: volume renderings of the final density against renderings of a hidden
    rollout from another initial density (a smoke ring instead of a ball)."""

    def __init__(self, args, n, steps):
        if args.target:
            raise UserError("--target is for the 2D tasks; volume targets are rendered")
        if not 1 <= args.views <= 8:
            raise UserError(f"--views must lie in [1, 8], got {args.views}")
        self.cfg = SmokeConfig(
            shape=(n, n, n),
            steps=steps,
            dt=args.dt,
            boundary="closed",
            advection=args.advection or "semi-lagrangian",
            solver=args.solver,
            jacobi_iters=args.jacobi_iters,
            checkpoint=args.checkpoint,
            buoyancy=0.15,
        )
        self.sim = sim = Smoke(self.cfg)
        res = args.resolution
        cams = orbit(args.views, radius=3.6, elevation=30.0, fov=40.0, width=res, height=res)
        self.renderer = VolumeRenderer(
            (n, n, n),
            cams,
            steps=args.ray_steps or 2 * n,
            absorption=args.absorption,
            emission=(0.9 * args.absorption, 0.85 * args.absorption, 0.8 * args.absorption),
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


def run(args):
    backend.init(args.arch)
    backend.require_autodiff()
    grid, steps, iters, lr = DEFAULTS[args.task]
    n = grid if args.grid is None else args.grid
    limit = 512 if args.task == "volume" else 4096
    if not 4 <= n <= limit:
        raise UserError(f"--grid must lie in [4, {limit}], got {n}")
    iters = iters if args.iters is None else args.iters
    lr = lr if args.lr is None else args.lr
    if iters < 1:
        raise UserError(f"--iters must be at least 1, got {iters}")
    if not (math.isfinite(lr) and lr > 0):
        raise UserError(f"--lr must be a positive number, got {lr}")
    if args.checkpoint_every < 0 or args.frame_every < 1:
        raise UserError("--checkpoint-every must be ≥ 0 (0: never) and --frame-every ≥ 1")
    task_cls = _VolumeTask if args.task == "volume" else _ImageTask
    task = task_cls(args, n, steps if args.steps is None else args.steps)
    sim = task.sim
    opt = Adam(task.params, lr)
    real = backend.real()
    loss = ti.field(real, (), needs_grad=True)

    def evaluate():
        loss[None] = 0.0
        task.objective(loss)
        return loss[None]

    def rollout_frames():
        frames = []
        sim.forward(on_step=lambda t, s: frames.append(task.frame(s)))
        return frames

    settings = {k: v for k, v in vars(args).items() if k != "func"}
    settings.update(grid=n, steps=sim.cfg.steps, iters=iters, lr=lr, boundary=sim.cfg.boundary)
    settings["checkpoint_segment"] = sim.k
    runner = Runner(
        args.out,
        f"smoke-{args.task}",
        settings,
        headless=args.headless,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        key_metric="mse",
        frame_every=args.frame_every,
    )
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
    runner.run(step, iters, state=state, panels=task.panels)
    mse = evaluate()
    frames = rollout_frames()
    io.write_video(runner.out / "rollout_after.gif", frames)
    io.write_video(runner.out / "rollout_after.mp4", frames)
    task.save(runner.out)
    reduction = 1 - mse / mse0
    runner.finish(
        {"mse_start": mse0, "mse": mse, "reduction": reduction, "goal_met": bool(reduction >= 0.9)}
    )
    print(f"smoke {args.task}: target MSE {mse0:.4g} -> {mse:.4g} ({100 * reduction:.1f} % lower)")
    return 130 if runner.interrupted else 0
