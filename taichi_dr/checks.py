"""Gradient checks of every differentiable op against float64 central differences.

Each case renders a small lit, textured scene, takes the scalar loss
``L = Σ w ⊙ image`` with fixed random weights, and compares the tape's ∂L/∂θ with
``(L(θ + h) − L(θ − h)) / 2h`` on a sample of the parameter's entries (the largest
gradients plus random ones). ``max rel err`` is the largest error divided by the largest
finite-difference magnitude. Smooth ops pass at ≤ 1e-4; ``antialias`` re-rasterizes in
the finite differences, so it checks the visibility gradient too (on configurations away
from topology changes).
"""

from dataclasses import dataclass

import numpy as np
import taichi as ti

from . import backend
from .camera import Camera
from .errors import UserError
from .render.pipeline import Renderer
from .scene import textured_sphere

RTOL = 1e-4


@dataclass
class CheckResult:
    op: str
    parameter: str
    max_abs_err: float
    max_rel_err: float
    ok: bool

    def row(self) -> str:
        status = "pass" if self.ok else "FAIL"
        return (
            f"{self.op:<12} {self.parameter:<20} {self.max_abs_err:>12.3e} "
            f"{self.max_rel_err:>12.3e}  {status}"
        )


HEADER = f"{'op':<12} {'parameter':<20} {'max abs err':>12} {'max rel err':>12}  result"


@ti.kernel
def _weighted_sum(image: ti.template(), weights: ti.template(), loss: ti.template()):
    for y, x in image:
        loss[None] += (image[y, x] * weights[y, x]).sum()


class Scene:
    """The shared test scene: a textured sphere at 24×24 with ambient, SH, two
    directional and one point light."""

    size = 24

    def __init__(self, seed: int = 0):
        backend.require_autodiff()
        rng = np.random.default_rng(seed)
        self.mesh = textured_sphere(n_lat=8, n_lon=12, texture_size=16)
        cam = Camera.look_at(
            (0.6, 0.5, 2.6), (0, 0, 0), (0, 1, 0), 40.0, self.size, self.size, 0.5, 10.0
        )
        self.r = Renderer(self.mesh, cam)
        colors = rng.uniform(0.5, 1.0, (self.mesh.num_vertices, 3))
        self.r.set_mesh(self.mesh, colors)
        self.r.lights.set(
            ambient=(0.1, 0.1, 0.1),
            directional=[((0.4, 0.6, 1.0), (0.8, 0.8, 0.7)), ((-0.7, 0.2, 0.5), (0.3, 0.2, 0.4))],
            point=[((1.0, 1.2, 1.5), (2.0, 2.0, 2.0))],
            sh=rng.uniform(-0.1, 0.3, (9, 3)),
        )
        self.r.material.set(
            base_color=(0.9, 0.7, 0.5), specular=0.5, shininess=12.0, roughness=0.5, metallic=0.3
        )
        real = backend.real()
        self.weights = ti.Vector.field(3, real, shape=(self.size, self.size))
        self.weights.from_numpy(rng.uniform(-1, 1, (self.size, self.size, 3)))
        self.loss = ti.field(real, shape=(), needs_grad=True)
        self.rng = rng

    def value(self, rasterize: bool) -> float:
        if rasterize:
            self.r.rasterize()
        self.r.shade()
        self.loss[None] = 0.0
        _weighted_sum(self.r.image, self.weights, self.loss)
        return float(self.loss[None])

    def gradient(self, field) -> np.ndarray:
        self.r.rasterize()
        self.r.zero_grad()
        with ti.ad.Tape(self.loss):
            self.r.shade()
            _weighted_sum(self.r.image, self.weights, self.loss)
        return field.grad.to_numpy().astype(np.float64)


def compare(
    scene: Scene, op: str, name: str, field, rasterize: bool, n: int = 6, h: float = 1e-6
) -> CheckResult:
    """Tape gradient of ``field`` vs central differences on ``n`` sampled entries."""
    base = field.to_numpy().astype(np.float64)
    grad = scene.gradient(field).reshape(-1)
    flat = base.reshape(-1)
    count = min(n, flat.size)
    top = np.argsort(-np.abs(grad))[: (count + 1) // 2]
    rest = np.setdiff1d(np.arange(flat.size), top)
    pick = np.concatenate([top, scene.rng.choice(rest, min(count // 2, len(rest)), False)])
    fd = np.empty(len(pick))
    for j, i in enumerate(pick):
        values = []
        for step in (h, -h):
            x = flat.copy()
            x[i] += step
            backend.write(field, x.reshape(base.shape))
            values.append(scene.value(rasterize))
        fd[j] = (values[0] - values[1]) / (2 * h)
    backend.write(field, base)
    err = np.abs(grad[pick] - fd)
    rel = err.max() / max(np.abs(fd).max(), 1e-8)
    return CheckResult(op, name, float(err.max()), float(rel), bool(rel <= RTOL))


def _cases(scene: Scene):
    """(op, shading, mode, [(parameter name, field)])."""
    r = scene.r
    m, L, v = r.material, r.lights, r.vertex
    return [
        (
            "interpolate",
            "blinn-phong",
            "hard",
            [
                ("positions", r.mesh.positions),
                ("normals", r.mesh.normals),
                ("colors", r.mesh.colors),
                ("uvs", r.mesh.uvs),
            ],
        ),
        ("texture", "lambert", "hard", [("texels", r.texture.texels)]),
        (
            "phong",
            "phong",
            "hard",
            [("base_color", m.base_color), ("specular", m.specular), ("shininess", m.shininess)],
        ),
        ("blinn-phong", "blinn-phong", "hard", [("shininess", m.shininess)]),
        (
            "ggx",
            "ggx",
            "hard",
            [("roughness", m.roughness), ("metallic", m.metallic), ("specular", m.specular)],
        ),
        (
            "lights",
            "ggx",
            "hard",
            [
                ("ambient", L.ambient),
                ("dir_direction", L.dir_direction),
                ("dir_color", L.dir_color),
                ("point_position", L.point_position),
                ("point_color", L.point_color),
                ("sh", L.sh),
            ],
        ),
        (
            "camera",
            "blinn-phong",
            "hard",
            [
                ("camera_rotation", v.camera_rotation),
                ("camera_translation", v.camera_translation),
                ("fov", v.fov),
            ],
        ),
        (
            "pose",
            "blinn-phong",
            "hard",
            [("pose_rotation", v.pose_rotation), ("pose_translation", v.pose_translation)],
        ),
        (
            "antialias",
            "blinn-phong",
            "antialias",
            [
                ("positions", r.mesh.positions),
                ("camera_translation", v.camera_translation),
                ("base_color", m.base_color),
            ],
        ),
        (
            "soft",
            "lambert",
            "soft",
            [
                ("positions", r.mesh.positions),
                ("colors", r.mesh.colors),
                ("dir_direction", L.dir_direction),
            ],
        ),
    ]


OPS = (
    "interpolate",
    "texture",
    "phong",
    "blinn-phong",
    "ggx",
    "lights",
    "camera",
    "pose",
    "antialias",
    "soft",
    "nmr",
)


def run_checks(op: str | None = None, seed: int = 0, scene: Scene | None = None):
    """Run every case (or those of ``op``); returns a list of :class:`CheckResult`."""
    if op is not None and op not in OPS:
        raise UserError(f"unknown op {op!r}; choose one of {', '.join(OPS)}")
    scene = scene or Scene(seed)
    results = []
    for name, shading, mode, params in _cases(scene):
        if op is not None and name != op:
            continue
        scene.r.configure(shading=shading, mode=mode)
        for pname, field in params:
            results.append(compare(scene, name, pname, field, rasterize=mode == "antialias"))
    if op in (None, "nmr"):
        results.extend(nmr_downhill(scene))
    scene.r.configure(mode="hard")
    return results


@ti.kernel
def _squared_error(image: ti.template(), target: ti.template(), loss: ti.template()):
    for y, x in image:
        loss[None] += (image[y, x] - target[y, x]).norm_sqr()


def nmr_downhill(
    scene: Scene,
    mode: str = "nmr",
    direction: float = -1.0,
    offsets=((0.06, 0, 0), (-0.06, 0, 0), (0, 0.06, 0), (0, -0.06, 0), (0.04, -0.04, 0)),
):
    """NMR gradients are approximate, so the check is that they point downhill: for
    targets made by moving the object, a step of 0.02 along −∂L/∂translation (L: squared
    image error, hard images) lowers L. Reported errors: L after − L before, L after / L
    before."""
    r, v = scene.r, scene.r.vertex
    r.configure(shading="unlit", mode=mode)  # flat colour: only visibility gradients
    target = ti.Vector.field(3, backend.real(), shape=(scene.size, scene.size))
    results = []

    def loss_at(t):
        backend.write(v.pose_translation, np.asarray(t))
        r.rasterize()
        r.shade()
        scene.loss[None] = 0.0
        _squared_error(r.image, target, scene.loss)
        return float(scene.loss[None])

    for off in offsets:
        loss_at(off)
        target.copy_from(r.image)
        before = loss_at((0.0, 0.0, 0.0))
        with ti.ad.Tape(scene.loss):
            r.shade()
            _squared_error(r.image, target, scene.loss)
        g = v.pose_translation.grad.to_numpy()
        after = loss_at(direction * 0.02 * g / max(np.linalg.norm(g), 1e-30))
        results.append(
            CheckResult(
                "nmr",
                f"translation {off}",
                after - before,
                after / max(before, 1e-30),
                bool(after < before),
            )
        )
    backend.write(v.pose_translation, np.zeros(3))
    return results
