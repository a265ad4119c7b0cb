"""Gradient checks of every differentiable op against float64 central differences.

Each case renders a small lit, textured scene, takes the scalar loss
``L = Σ w ⊙ image`` with fixed random weights, and compares the tape's ∂L/∂θ with
``(L(θ + h) − L(θ − h)) / 2h`` on a sample of the parameter's entries (the largest
gradients plus random ones). ``max rel err`` is the largest error divided by the largest
finite-difference magnitude. Smooth ops pass at ≤ 1e-4; ``antialias`` re-rasterizes in
the finite differences, so it checks the visibility gradient too (on configurations away
from topology changes).
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import taichi as ti

from . import backend
from .ad.gradcheck import central_difference
from .camera import Camera
from .errors import UserError
from .render import arrays
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
def _weighted_sum(image: arrays.Vec3, weights: arrays.Vec3, loss: ti.types.ndarray()):
    for i in range(image.shape[0]):
        loss[None] += (image[i] * weights[i]).sum()


@dataclass
class Parameter:
    """A renderer parameter for a check: read its value, write it, read its gradient
    (arrays as NumPy)."""

    get: Callable
    set: Callable
    grad: Callable


def array_parameter(a) -> Parameter:
    """A parameter that is a whole Taichi ndarray (e.g. ``r.mesh.positions``)."""
    return Parameter(
        a.to_numpy, lambda x: a.from_numpy(x.astype(backend.np_real())), lambda: a.grad.to_numpy()
    )


def packed_parameter(packed, name: str) -> Parameter:
    """Parameter ``name`` of a packed material or light array (written without the
    setters' validation: finite differences may step a zero colour below 0)."""
    span = packed.layout.span(name)

    def put(x):
        host = packed.values.to_numpy()
        host[span] = np.asarray(x).ravel()
        packed.values.from_numpy(host)

    return Parameter(
        lambda: packed.values.to_numpy()[span].copy(),
        put,
        lambda: packed.values.grad.to_numpy()[span],
    )


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
        self.r.lights.reset(
            ambient=(0.1, 0.1, 0.1),
            directional=[((0.4, 0.6, 1.0), (0.8, 0.8, 0.7)), ((-0.7, 0.2, 0.5), (0.3, 0.2, 0.4))],
            point=[((1.0, 1.2, 1.5), (2.0, 2.0, 2.0))],
            sh=rng.uniform(-0.1, 0.3, (9, 3)),
        )
        self.r.material.set(
            base_color=(0.9, 0.7, 0.5), specular=0.5, shininess=12.0, roughness=0.5, metallic=0.3
        )
        weights = rng.uniform(-1, 1, (self.size * self.size, 3))
        self.weights = arrays.from_numpy(weights)
        self.loss = ti.ndarray(backend.real(), shape=(), needs_grad=True)
        self.rng = rng

    def value(self, rasterize: bool) -> float:
        if rasterize:
            self.r.rasterize()
        self.r.shade()
        self.loss[None] = 0.0
        _weighted_sum(self.r.image, self.weights, self.loss)
        return float(self.loss[None])

    def gradient(self, parameter: Parameter) -> np.ndarray:
        self.r.rasterize()
        with backend.Tape(self.loss):
            self.r.shade()
            _weighted_sum(self.r.image, self.weights, self.loss)
        return parameter.grad().astype(np.float64)


def compare(
    scene: Scene, op: str, name: str, parameter: Parameter, rasterize: bool, n: int = 6,
    h: float = 1e-6,
) -> CheckResult:  # fmt: skip
    """Tape gradient of ``parameter`` vs central differences on ``n`` sampled entries."""
    base = parameter.get().astype(np.float64)
    grad = scene.gradient(parameter).reshape(-1)
    flat = base.reshape(-1)
    count = min(n, flat.size)
    top = np.argsort(-np.abs(grad))[: (count + 1) // 2]
    rest = np.setdiff1d(np.arange(flat.size), top)
    pick = np.concatenate([top, scene.rng.choice(rest, min(count // 2, len(rest)), False)])

    def loss_at(sample):
        x = flat.copy()
        x[pick] = sample
        parameter.set(x.reshape(base.shape))
        return scene.value(rasterize)

    fd = central_difference(loss_at, flat[pick], h)
    parameter.set(base)
    err = np.abs(grad[pick] - fd)
    rel = err.max() / max(np.abs(fd).max(), 1e-8)
    return CheckResult(op, name, float(err.max()), float(rel), bool(rel <= RTOL))


def _cases(scene: Scene):
    """(op, shading, mode, [(parameter name, Parameter)])."""
    r = scene.r
    mesh, v = r.mesh, r.vertex
    vertex = {
        n: array_parameter(getattr(mesh, n)) for n in ("positions", "normals", "colors", "uvs")
    }
    view = {n: packed_parameter(v.params, n) for n in v.params.layout.names}
    m = {n: packed_parameter(r.material, n) for n in r.material.layout.names}
    L = {n: packed_parameter(r.lights, n) for n in r.lights.layout.names}
    pick = lambda d, *names: [(n, d[n]) for n in names]  # noqa: E731
    return [
        (
            "interpolate",
            "blinn-phong",
            "hard",
            pick(vertex, "positions", "normals", "colors", "uvs"),
        ),
        ("texture", "lambert", "hard", [("texels", array_parameter(r.texture.texels))]),
        ("phong", "phong", "hard", pick(m, "base_color", "specular", "shininess")),
        ("blinn-phong", "blinn-phong", "hard", pick(m, "shininess")),
        ("ggx", "ggx", "hard", pick(m, "roughness", "metallic", "specular")),
        ("lights", "ggx", "hard", pick(L, *L)),
        (
            "camera",
            "blinn-phong",
            "hard",
            pick(view, "camera_rotation", "camera_translation", "fov"),
        ),
        ("pose", "blinn-phong", "hard", pick(view, "pose_rotation", "pose_translation")),
        (
            "antialias",
            "blinn-phong",
            "antialias",
            pick(vertex, "positions") + pick(view, "camera_translation") + pick(m, "base_color"),
        ),
        ("soft", "lambert", "soft", pick(vertex, "positions", "colors") + pick(L, "dir_direction")),
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
        for pname, parameter in params:
            results.append(compare(scene, name, pname, parameter, rasterize=mode == "antialias"))
    if op in (None, "nmr"):
        results.extend(nmr_downhill(scene))
    scene.r.configure(mode="hard")
    return results


@ti.kernel
def _squared_error(image: arrays.Vec3, target: arrays.Vec3, loss: ti.types.ndarray()):
    for i in range(image.shape[0]):
        loss[None] += (image[i] - target[i]).norm_sqr()


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
    target = arrays.empty(scene.size * scene.size, 3)
    results = []

    def loss_at(t):
        v.params.set(pose_translation=np.asarray(t, dtype=np.float64))
        r.rasterize()
        r.shade()
        scene.loss[None] = 0.0
        _squared_error(r.image, target, scene.loss)
        return float(scene.loss[None])

    for off in offsets:
        loss_at(off)
        target.copy_from(r.image)
        before = loss_at((0.0, 0.0, 0.0))
        with backend.Tape(scene.loss):
            r.shade()
            _squared_error(r.image, target, scene.loss)
        g = v.params.grad("pose_translation")
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
    v.params.set(pose_translation=np.zeros(3))
    return results
