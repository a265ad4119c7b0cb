"""``taichi-dr fit splats``: fit 3D Gaussians to multi-view images of a textured mesh.

Ground truth we control: the mesh (default ``assets/textured.obj``, else ``--target-mesh``)
is normalised to the unit ball and rendered by the mesh renderer (Lambert, two lights,
black background, 2×2 supersampled) from ``--views`` training cameras and ``TEST_VIEWS``
held-out cameras, all on a sphere of radius 3.2 around it (Fibonacci points; the held-out
ones interleaved, never trained on). The splats start from ``--gaussians`` random points in
the unit ball (random greys, opacity 0.5, a tenth of the neighbour distance wide: gsplat's
MCMC start) and are fitted one random training view per iteration with Adam (3DGS's
learning rates, higher SH degrees 20× slower; positions decayed 100× over the run) on the
L1 image loss plus MCMC's opacity and scale regularisers (0.01 · mean o, 0.01 · mean s).
SH degrees are switched on one per ``SH_EVERY`` iterations up to ``--sh-degree``; Gaussians
nearer than 0.5 to a camera are culled.

Density control — MCMC relocation (Kheradmand et al. 2024, as gsplat's ``MCMCStrategy``),
not 3DGS's clone/split/prune/reset. Every ``RELOCATE_EVERY`` iterations Gaussians with
opacity ≤ 0.005 are moved onto live ones drawn in proportion to opacity, the pair sharing
the opacity and scale so that the image barely changes; positions get noise scaled by
each Gaussian's covariance, gated on its transparency. Why: the budget is fixed, so every
iteration costs the same and the kernels, fields and optimiser state never change size (a
CPU run's time is predictable and one Adam compiles once); it needs no accumulated
screen-space gradients or thresholds tuned per scene; and it starts from random points
(there is no SfM here), where gsplat's ablation reports it beating adaptive density
control at equal or lower Gaussian counts.

Writes to ``--out``: metrics.json (per-iteration loss and training-view PSNR, held-out PSNR
every ``EVAL_EVERY`` iterations and at the end), loss.png, progress.gif (at most ~60
frames: each renders a held-out view) and dashboard.png (held-out target | current |
error), splats.ply (the 3DGS layout), target.png / final.png (first held-out view) and
checkpoint.npz (at least every tenth of the run: a state is megabytes; ``--resume``).
"""

import math
from pathlib import Path

import numpy as np
import taichi as ti

from .. import backend, io, optim, scene
from ..camera import Camera
from ..errors import UserError
from ..render.pipeline import RenderSettings
from ..splat import camera as cameras
from ..splat.pipeline import render
from ..splat.ply import SH_C0, Gaussians, write_gaussians
from . import inverse
from .orbit import ViewState
from .runner import Runner

DEFAULTS = {"iters": 2000, "resolution": 128, "views": 48, "gaussians": 20000}
TEST_VIEWS = 8
SH_EVERY = 1000
EVAL_EVERY = 500
RELOCATE_EVERY, RELOCATE_FROM = 100, 500
MIN_OPACITY = 0.005
NOISE_LR = 5e5
REG_OPACITY, REG_SCALE = 0.01, 0.01
LR = {
    "means": 1.6e-4,
    "quats": 1e-3,
    "log_scales": 5e-3,
    "logits": 0.05,
    "sh0": 2.5e-3,
    "shN": 2.5e-3 / 20,
}  # 3DGS's rates (gsplat's MCMC: opacity 0.05)
INIT_OPACITY, INIT_SCALE = 0.5, 0.1  # gsplat's MCMC start: o = 0.5, 0.1 × neighbour distance
DISTANCE, FOV, SUPERSAMPLE = 3.2, 45.0, 2
NEAR = 0.5  # Gaussians nearer a camera are culled: a splat grazing the camera plane gets
# gradients ~ 1/z³ that float32 Adam moments cannot hold
LIGHTS = dict(
    ambient=(0.3, 0.3, 0.3),
    directional=[((0.4, 0.8, 0.6), (0.75, 0.75, 0.75)), ((-0.7, -0.2, -0.4), (0.35, 0.35, 0.4))],
)
ASSET = Path(__file__).resolve().parents[2] / "assets" / "textured.obj"


# ------------------------------------------------------------------------ ground truth
def sphere_cameras(n: int, size: int, offset: float = 0.0) -> list:
    """``n`` cameras on a Fibonacci sphere of radius 3.2 looking at the origin (``offset``
    shifts the spiral: 0.5 interleaves a second set between the first)."""
    k = np.arange(n) + 0.5 + offset
    y = 1 - 2 * k / (n + 2 * offset)
    phi = k * math.pi * (3 - math.sqrt(5))
    r = np.sqrt(np.clip(1 - y * y, 0, 1))
    eyes = DISTANCE * np.stack([r * np.cos(phi), np.clip(y, -0.98, 0.98), r * np.sin(phi)], 1)
    return [Camera.look_at(e, fov=FOV, width=size, height=size, near=NEAR, far=10) for e in eyes]


def ground_truth(mesh: scene.Mesh, cams: list) -> np.ndarray:
    """(V, H, W, 3) renders of ``mesh`` by the mesh renderer, supersampled 2×2."""
    settings = RenderSettings(shading="lambert", background=(0, 0, 0), grads=("positions",))
    return inverse.supersampled(mesh, cams, settings, LIGHTS, {"base_color": (1.0, 1.0, 1.0)})


def target_mesh(path=None) -> scene.Mesh:
    if path is not None:
        return inverse.normalise(scene.load_mesh(path))
    mesh = scene.load_mesh(ASSET) if ASSET.is_file() else scene.textured_sphere()
    return inverse.normalise(mesh)


# ------------------------------------------------------------------------ the model
def sh(v: dict) -> np.ndarray:
    """All SH coefficients (N, K, 3) of the values ``v``."""
    return np.concatenate([v["sh0"], v["shN"]], axis=1) if "shN" in v else v["sh0"]


class SplatModel:
    """The fitted Gaussians as Taichi fields (what :class:`taichi_dr.optim.Adam` updates):
    means, quats, log-scales, opacity logits, SH degree 0 ``sh0`` (N, 1, 3) and the higher
    degrees ``shN`` (N, K − 1, 3; learnt 20× slower, as in 3DGS)."""

    def __init__(self, n: int, sh_degree: int, rng, extent: float, iters: int):
        real = backend.real()
        K = (sh_degree + 1) ** 2
        shapes = {"means": (n, 3), "quats": (n, 4), "log_scales": (n, 3), "logits": n,
                  "sh0": (n, 1, 3)}  # fmt: skip
        if K > 1:
            shapes["shN"] = (n, K - 1, 3)
        self.fields = {k: ti.field(real, shape=s, needs_grad=True) for k, s in shapes.items()}
        u = rng.standard_normal((n, 3))
        means = u / np.linalg.norm(u, axis=1, keepdims=True) * rng.random((n, 1)) ** (1 / 3)
        from scipy.spatial import cKDTree

        d, _ = cKDTree(means).query(means, k=4)
        values = {
            "means": means,
            "quats": np.tile([1.0, 0.0, 0.0, 0.0], (n, 1)) + 0.1 * rng.standard_normal((n, 4)),
            "log_scales": np.repeat(
                np.log(INIT_SCALE * np.sqrt((d[:, 1:] ** 2).mean(1)))[:, None], 3, 1
            ),
            "logits": np.full(n, math.log(INIT_OPACITY / (1 - INIT_OPACITY))),
            "sh0": ((rng.uniform(0.3, 0.7, (n, 3)) - 0.5) / SH_C0)[:, None, :],
        }
        if K > 1:
            values["shN"] = np.zeros((n, K - 1, 3))
        self.set(values)
        f = self.fields
        self.lr_means = LR["means"] * extent
        decay = optim.ExponentialDecay(0.01 ** (1 / max(iters, 1)))
        # no finite checks per step (two reductions per field): the runner stops on a NaN loss
        self.position = optim.Adam(
            [f["means"]], lr=self.lr_means, eps=1e-15, schedule=decay, check_finite=False
        )
        names = [k for k in f if k != "means"]
        self.others = optim.Adam([f[k] for k in names], lr=[LR[k] for k in names], eps=1e-15,
                                 check_finite=False)  # fmt: skip

    def get(self) -> dict:
        return {k: f.to_numpy().astype(np.float64) for k, f in self.fields.items()}

    def set(self, values: dict) -> None:
        for k, v in values.items():
            backend.write(self.fields[k], v)

    def gaussians(self, values=None) -> Gaussians:
        v = self.get() if values is None else values
        return Gaussians(
            means=v["means"], quats=v["quats"], scales=np.exp(v["log_scales"]),
            opacities=1 / (1 + np.exp(-v["logits"])), sh=sh(v),
        )  # fmt: skip

    def step(self, grads: dict) -> None:
        for k, g in grads.items():
            backend.write(self.fields[k].grad, g)
        self.position.step()
        self.others.step()

    def reset_moments(self, rows: np.ndarray) -> None:
        """Zero Adam's moments of Gaussians ``rows`` (after they were moved)."""
        for opt in (self.position, self.others):
            for m, v in opt.moments:
                for f in (m, v):
                    a = f.to_numpy()
                    a[rows] = 0
                    f.from_numpy(a)


def relocation(opacity: np.ndarray, scale: np.ndarray, count: np.ndarray):
    """MCMC's split of a Gaussian shared ``count`` ways: new opacity 1 − (1 − o)^(1/n) and
    scale s · o / Σ_{i=1}^{n} Σ_{k=0}^{i−1} C(i−1, k) (−1)^k ô^{k+1} / √(k + 1)."""
    new_o = 1 - (1 - opacity) ** (1 / count)
    denom = np.zeros_like(opacity)
    for i in range(1, int(count.max()) + 1):
        for k in range(i):
            term = math.comb(i - 1, k) * (-1) ** k / math.sqrt(k + 1) * new_o ** (k + 1)
            denom += np.where(i <= count, term, 0.0)
    return new_o, scale * (opacity / denom)[:, None]


def position_noise(v: dict, lr: float, rng) -> np.ndarray:
    """MCMC's position noise Σ ε · σ(100 (1 − o − 0.995)) · lr · 5·10⁵, ε ~ N(0, I),
    Σ = R diag(s)² Rᵀ: large for nearly transparent Gaussians, ~0 for opaque ones."""
    w, x, y, z = (v["quats"] / np.linalg.norm(v["quats"], axis=1, keepdims=True)).T
    R = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )  # (3, 3, N)
    o = 1 / (1 + np.exp(-v["logits"]))
    gate = 1 / (1 + np.exp(-100 * (1 - o - 0.995)))
    eps = rng.standard_normal((3, len(o))) * (gate * lr * NOISE_LR)
    local = (R * eps[:, None, :]).sum(axis=0) * np.exp(2 * v["log_scales"]).T  # s² Rᵀ ε
    return (R * local[None, :, :]).sum(axis=1).T  # R s² Rᵀ ε


def relocate(v: dict, rng) -> np.ndarray | None:
    """Move dead Gaussians (o ≤ 0.005) of the values ``v`` (in place) onto live ones drawn
    ∝ opacity, each pair sharing opacity and scale (:func:`relocation`); returns the rows
    changed (None when there is nothing to move)."""
    o = 1 / (1 + np.exp(-v["logits"]))
    dead = np.flatnonzero(o <= MIN_OPACITY)
    alive = np.flatnonzero(o > MIN_OPACITY)
    if len(dead) == 0 or len(alive) == 0:
        return None
    src = rng.choice(alive, size=len(dead), p=o[alive] / o[alive].sum())
    count = np.bincount(src, minlength=len(o))[src] + 1.0
    new_o, new_s = relocation(o[src], np.exp(v["log_scales"][src]), count)
    new_o = np.clip(new_o, MIN_OPACITY, 1 - 1e-6)
    for key in v:
        v[key][dead] = v[key][src]
    v["logits"][src] = v["logits"][dead] = np.log(new_o / (1 - new_o))
    v["log_scales"][src] = v["log_scales"][dead] = np.log(new_s)
    return np.concatenate([dead, src])


class SplatFit:
    """One fit: data, model, the MCMC moves and the step the runner drives."""

    def __init__(self, args, mesh: scene.Mesh):
        self.args = args
        self.rng = np.random.default_rng(args.seed)
        size = args.resolution
        self.train_cams = sphere_cameras(args.views, size)
        self.test_cams = sphere_cameras(TEST_VIEWS, size, offset=0.5)
        print(f"fit splats: rendering {args.views} + {TEST_VIEWS} ground-truth views", flush=True)
        self.train = ground_truth(mesh, self.train_cams)
        self.test = ground_truth(mesh, self.test_cams)
        self.train_view = [cameras.opencv(c) for c in self.train_cams]
        self.test_view = [cameras.opencv(c) for c in self.test_cams]
        extent = 1.1 * DISTANCE  # 3DGS: the radius of the camera positions, × 1.1
        self.model = SplatModel(args.gaussians, args.sh_degree, self.rng, extent, args.iters)
        self.values = self.model.get()  # the fields' values, kept in step with them

    def degree(self, it: int) -> int:
        return min(self.args.sh_degree, it // SH_EVERY)

    def render_view(self, viewmat, K, values=None, degree=None):
        v = self.model.get() if values is None else values
        size = self.args.resolution
        return render(
            v["means"], v["quats"], np.exp(v["log_scales"]), 1 / (1 + np.exp(-v["logits"])),
            sh(v), viewmat[None], K[None], size, size, near_plane=NEAR,
            sh_degree=self.args.sh_degree if degree is None else degree,
        )  # fmt: skip

    def step(self, it: int) -> dict:
        v = self.values
        k = int(self.rng.integers(len(self.train)))
        target = self.train[k]
        r = self.render_view(*self.train_view[k], v, self.degree(it))
        image = np.asarray(r.colors[0], np.float64)
        diff = image - target
        n = len(v["logits"])
        o, s = 1 / (1 + np.exp(-v["logits"])), np.exp(v["log_scales"])
        loss = np.abs(diff).mean() + REG_OPACITY * o.mean() + REG_SCALE * s.mean()
        g = r.backward(np.sign(diff)[None] / diff.size)
        self.model.step(
            {
                "means": g["means"],
                "quats": g["quats"],
                "log_scales": (g["scales"] + REG_SCALE / (3 * n)) * s,
                "logits": (g["opacities"] + REG_OPACITY / n) * o * (1 - o),
                "sh0": g["colors"][:, :1],
                **({"shN": g["colors"][:, 1:]} if "shN" in v else {}),
            }
        )
        v = self.model.get()
        v["means"] += position_noise(v, self.model.position.lr(), self.rng)
        self.model.set({"means": v["means"]})
        if it >= RELOCATE_FROM and (it + 1) % RELOCATE_EVERY == 0:
            self._relocate(v)
        self.values = v
        record = {"loss": loss, "psnr_train_view": inverse.psnr(image, target)}
        if (it + 1) % EVAL_EVERY == 0:
            record["psnr_test"] = self.test_psnr()[0]
        return record

    def get(self) -> dict:
        return self.model.get()

    def set(self, values: dict) -> None:
        """Restore a checkpoint (the runner's state protocol)."""
        self.model.set(values)
        self.values = self.model.get()

    def _relocate(self, v: dict) -> None:
        moved = relocate(v, self.rng)
        if moved is not None:
            self.model.set(v)
            self.model.reset_moments(moved)

    def test_psnr(self) -> tuple[float, list]:
        """Mean held-out PSNR (dB) and the per-view values."""
        v = self.model.get()
        values = [
            inverse.psnr(np.asarray(self.render_view(*vk, v).colors[0], np.float64), t)
            for vk, t in zip(self.test_view, self.test)
        ]
        return float(np.mean(values)), values


class Dashboard:
    """The live view (see :mod:`taichi_dr.apps.runner`): held-out target | current | error, and
    the current Gaussians from an orbit camera."""

    def __init__(self, fit: SplatFit):
        self.fit, self.views = fit, TEST_VIEWS
        self.orbit = ViewState(center=np.zeros(3), radius=1.0, fov=FOV)

    def panels(self, view: int = 0) -> list:
        current = np.asarray(self.fit.render_view(*self.fit.test_view[view]).colors[0])
        target = self.fit.test[view]
        return [target, current, np.abs(current - target)]

    def render(self, state: ViewState) -> np.ndarray:
        size = self.fit.args.resolution
        viewmat, K = cameras.opencv(state.camera(size, size))
        return np.asarray(self.fit.render_view(viewmat, K).colors[0])


def add_arguments(parser) -> None:
    """The options only ``fit splats`` reads (the shared ones live in commands/fit.py)."""
    parser.add_argument(
        "--gaussians", type=int, help=f"splats: Gaussians (default {DEFAULTS['gaussians']})"
    )
    parser.add_argument("--sh-degree", type=int, default=1, help="splats: SH degree (0-3)")


def run(args) -> int:
    backend.init(args.arch)
    backend.require_autodiff()
    for key, value in DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for name in ("iters", "views", "resolution", "gaussians", "checkpoint_every", "frame_every"):
        if getattr(args, name) < 1:
            raise UserError(
                f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}"
            )
    if not 0 <= args.sh_degree <= 3:
        raise UserError(f"--sh-degree must be 0, 1, 2 or 3, got {args.sh_degree}")
    if args.resolution > 1024:
        raise UserError(f"--resolution must be at most 1024 for splats, got {args.resolution}")
    if args.target:
        raise UserError("fit splats renders its own ground truth; use --target-mesh MESH")
    fit = SplatFit(args, target_mesh(args.target_mesh))
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    runner = Runner.from_args(
        args, "fit-splats", settings, key_metric="psnr_train_view",
        checkpoint_every=max(args.checkpoint_every, args.iters // 10),
        frame_every=max(args.frame_every, args.iters // 60),
    )  # fmt: skip
    dashboard = Dashboard(fit)
    runner.run(fit.step, args.iters, state=fit, panels=dashboard.panels, dashboard=dashboard)
    psnr, per_view = fit.test_psnr()
    g = fit.model.gaussians()
    final = {
        "psnr_test": psnr,
        "psnr_test_views": per_view,
        "gaussians": len(g),
        "alive": int((g.opacities > MIN_OPACITY).sum()),
        "goals": {"psnr_test": ">= 28"},
        "goal_met": psnr >= 28.0,
    }
    metrics = runner.finish(final)
    out = runner.out
    write_gaussians(out / "splats.ply", g)
    io.save_image(out / "target.png", fit.test[0])
    io.save_image(out / "final.png", dashboard.panels(0)[1])
    print(
        f"fit splats: held-out PSNR {psnr:.2f} dB over {TEST_VIEWS} views, {final['alive']} "
        f"live Gaussians, {metrics['wall_time_s']:.0f} s -> {out}/splats.ply"
    )
    return 0
