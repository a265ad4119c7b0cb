"""``taichi-dr smoke init-velocity|control``: optimise a smoke simulation to draw a target.

* ``init-velocity`` (DiffTaichi parity): a checkerboard of smoke on a periodic grid; optimise the
  initial velocity field so that the density after N steps matches the target image.
* ``control``: a blob of smoke in a closed box; optimise per-step control forces instead.

The target is the Taichi (yin-yang) logo drawn by code, or ``--target IMAGE`` (grey levels of
an image of exactly grid × grid pixels: a differently sized image is an error, never silently
resized). Writes metrics.json, loss.png, progress.gif, rollout_before.gif, rollout_after.gif,
rollout_after.mp4, target.png, final.png and checkpoint.npz to ``--out``.
"""

import numpy as np
import taichi as ti

from .. import backend, io
from ..errors import UserError
from ..runner import Runner
from ..sim import Smoke, SmokeConfig, grid_to_image, image_to_grid

TASKS = ("init-velocity", "control")


def add_arguments(parser):
    parser.add_argument("task", choices=TASKS, help="what to optimise")
    parser.add_argument("--grid", type=int, default=128, help="cells per side (default 128)")
    parser.add_argument("--steps", type=int, default=100, help="simulation steps (default 100)")
    parser.add_argument("--dt", type=float, default=1.0, help="time step (default 1)")
    parser.add_argument("--iters", type=int, default=0, help="optimisation iterations")
    parser.add_argument("--lr", type=float, default=0.0, help="Adam learning rate")
    parser.add_argument("--solver", choices=("jacobi", "cg"), default="jacobi")
    parser.add_argument("--jacobi-iters", type=int, default=10)
    parser.add_argument("--advection", choices=("semi-lagrangian", "maccormack"))
    parser.add_argument("--checkpoint", type=int, default=0, help="segment length (0: √steps)")
    parser.add_argument("--target", help="target image (grid × grid pixels)")
    parser.add_argument("--checkpoint-every", type=int, default=10, help="iterations")
    parser.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.npz")
    parser.add_argument("--frame-every", type=int, default=5, help="iterations per progress frame")


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
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return (((i // (n // 8)) + (j // (n // 8))) % 2).astype(np.float64)


def _blob(n: int) -> np.ndarray:
    i, j = np.meshgrid(np.arange(n) + 0.5, np.arange(n) + 0.5, indexing="ij")
    return np.exp(-((((i - n / 2) / (0.22 * n)) ** 2 + ((j - 0.25 * n) / (0.12 * n)) ** 2) ** 2))


@ti.kernel
def _mse(d: ti.template(), target: ti.template(), loss: ti.template()):
    for I in ti.grouped(d):
        loss[None] += (d[I] - target[I]) ** 2 / d.shape[0] / d.shape[1]


class Adam:
    """Adam on a list of Taichi fields (parameters) using their ``.grad``."""

    def __init__(self, fields, lr, b1=0.9, b2=0.999, eps=1e-8):
        self.fields, self.lr, self.b1, self.b2, self.eps = fields, lr, b1, b2, eps
        self.m = [np.zeros(f.shape) for f in fields]
        self.v = [np.zeros(f.shape) for f in fields]
        self.t = 0

    def step(self):
        self.t += 1
        for f, m, v in zip(self.fields, self.m, self.v):
            g = f.grad.to_numpy().astype(np.float64)
            m *= self.b1
            m += (1 - self.b1) * g
            v *= self.b2
            v += (1 - self.b2) * g * g
            mh, vh = m / (1 - self.b1**self.t), v / (1 - self.b2**self.t)
            new = f.to_numpy() - self.lr * mh / (np.sqrt(vh) + self.eps)
            f.from_numpy(new.astype(backend.np_real()))

    def get(self) -> dict:
        out = {f"param{i}": f.to_numpy() for i, f in enumerate(self.fields)}
        out.update({f"m{i}": m for i, m in enumerate(self.m)})
        out.update({f"v{i}": v for i, v in enumerate(self.v)})
        out["t"] = np.array(self.t)
        return out

    def set(self, arrays: dict):
        for i, f in enumerate(self.fields):
            if arrays[f"param{i}"].shape != f.shape:
                raise UserError("checkpoint does not match these settings (grid or steps differ)")
            f.from_numpy(arrays[f"param{i}"].astype(backend.np_real()))
            self.m[i][...], self.v[i][...] = arrays[f"m{i}"], arrays[f"v{i}"]
        self.t = int(arrays["t"])


def _gray(img):
    return np.repeat(np.clip(img, 0, None)[..., None], 3, axis=2)


def run(args):
    backend.init(args.arch)
    backend.require_autodiff()
    n = args.grid
    if n < 4 or n > 4096:
        raise UserError(f"--grid must lie in [4, 4096], got {n}")
    parity = args.task == "init-velocity"
    target_img = load_target(args.target, n) if args.target else taichi_logo(n)
    cfg = SmokeConfig(
        shape=(n, n),
        steps=args.steps,
        dt=args.dt,
        boundary="periodic" if parity else "closed",
        advection=args.advection or "semi-lagrangian",
        solver=args.solver,
        jacobi_iters=args.jacobi_iters,
        checkpoint=args.checkpoint,
        controls=not parity,
    )
    sim = Smoke(cfg)
    init = _checkerboard(n) if parity else _blob(n) * target_img.sum() / _blob(n).sum()
    sim.set_initial(init, [np.zeros(f.shape) for f in sim.init_velocity])
    params = sim.init_velocity if parity else sim.force
    iters = args.iters or (100 if parity else 150)
    lr = args.lr or (0.1 if parity else 0.05)
    opt = Adam(params, lr)
    real = backend.real()
    target = ti.field(real, (n, n))
    target.from_numpy(image_to_grid(target_img).astype(backend.np_real()))
    loss = ti.field(real, (), needs_grad=True)

    def evaluate():
        loss[None] = 0.0
        sim.forward()
        _mse(sim.out_density, target, loss)
        return loss[None]

    def rollout_frames():
        frames = []
        sim.forward(on_step=lambda t, s: frames.append(_gray(grid_to_image(sim.slot_density(s)))))
        return frames

    settings = {k: v for k, v in vars(args).items() if k != "func"}
    settings.update(iters=iters, lr=lr, boundary=cfg.boundary, checkpoint_segment=sim.k)
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
        sim.zero_grad()
        with ti.ad.Tape(loss, clear_gradients=False):
            loss[None] = 0.0
            sim.run()
            _mse(sim.out_density, target, loss)
        value = loss[None]
        opt.step()
        return {"loss": value, "mse": value, "reduction": 1 - value / mse0}

    def panels():
        cur = grid_to_image(sim.out_density.to_numpy())
        return [_gray(target_img), _gray(cur), _gray(np.abs(cur - target_img))]

    runner.run(step, iters, state=opt, panels=panels)
    mse = evaluate()
    frames = rollout_frames()
    io.write_video(runner.out / "rollout_after.gif", frames)
    io.write_video(runner.out / "rollout_after.mp4", frames)
    io.save_image(runner.out / "target.png", target_img, srgb=False)
    io.save_image(runner.out / "final.png", grid_to_image(sim.out_density.to_numpy()), srgb=False)
    reduction = 1 - mse / mse0
    runner.finish(
        {"mse_start": mse0, "mse": mse, "reduction": reduction, "goal_met": bool(reduction >= 0.9)}
    )
    print(f"smoke {args.task}: target MSE {mse0:.4g} -> {mse:.4g} ({100 * reduction:.1f} % lower)")
    return 0
