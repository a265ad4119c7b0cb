"""``taichi-dr smoke init-velocity|control|volume``: optimise a smoke simulation to match
targets (the applications: :mod:`taichi_dr.apps.smoke`). Writes metrics.json, loss.png,
progress.gif, rollout_before.gif, rollout_after.gif, rollout_after.mp4, target.png,
final.png and checkpoint.npz to ``--out``.
"""

import math
from dataclasses import fields

from .. import backend
from ..apps import smoke
from ..apps.runner import Runner
from ..errors import UserError


def add_arguments(parser):
    parser.add_argument("task", choices=tuple(smoke.DEFAULTS), help="what to optimise")
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


def run(args):
    backend.init(args.arch)
    backend.require_autodiff()
    options = smoke.SmokeOptions(
        **{f.name: getattr(args, f.name) for f in fields(smoke.SmokeOptions)}
    )
    iters, lr = smoke.DEFAULTS[args.task][2:]
    iters = iters if args.iters is None else args.iters
    lr = lr if args.lr is None else args.lr
    if iters < 1:
        raise UserError(f"--iters must be at least 1, got {iters}")
    if not (math.isfinite(lr) and lr > 0):
        raise UserError(f"--lr must be a positive number, got {lr}")
    if args.checkpoint_every < 0 or args.frame_every < 1:
        raise UserError("--checkpoint-every must be ≥ 0 (0: never) and --frame-every ≥ 1")
    task = smoke.build(options)
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    settings.update(grid=options.grid, steps=options.steps, iters=iters, lr=lr)
    settings.update(boundary=task.cfg.boundary, checkpoint_segment=task.sim.k)
    runner = Runner.from_args(args, f"smoke-{args.task}", settings, key_metric="mse")
    final = smoke.optimise(task, runner, iters, lr)
    mse0, mse, reduction = final["mse_start"], final["mse"], final["reduction"]
    print(f"smoke {args.task}: target MSE {mse0:.4g} -> {mse:.4g} ({100 * reduction:.1f} % lower)")
    return 130 if runner.interrupted else 0
