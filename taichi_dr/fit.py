"""Inverse rendering: recover scene parameters from images (``taichi-dr fit APP``).

A fit is a :class:`Problem`: a renderer, a list of :class:`View` (camera, target image,
per-view overrides), the parameters to recover (:class:`Param`: a renderer field by name,
its start value, learning rate and projection) and fixed values. :class:`Fit` runs one
iteration at a time: for each view it sets the camera, writes the current parameters into
the renderer, rasterizes, then under ``ti.ad.Tape`` shades, optionally blurs image and
target (coarse-to-fine) and adds the image loss (plus the soft-silhouette IoU in mode
"soft" and mesh regularizers); per-view parameter gradients are summed on the host and
one optimizer step follows (Adam, or large steps for vertex positions).

Parameters are named by their renderer field: ``"mesh.positions"`` (V, 3),
``"texture.texels"`` (H, W, 3), ``"material.roughness"`` (), ``"lights.sh"`` (9, 3),
``"vertex.pose_rotation"`` (3,) axis-angle radians, ... Every fit keeps a master copy of
each parameter (``set_camera`` resets pose parameters, and a view may override a value).
The applications themselves (what is fitted, from which wrong start, with which metric)
live in :mod:`taichi_dr.apps`.
"""

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import taichi as ti

from . import backend, losses, optim
from .camera import Camera
from .errors import UserError
from .render import arrays
from .render.lights import MAX_DIRECTIONAL, MAX_POINT
from .render.pipeline import GRAD_GROUPS, Renderer, RenderSettings
from .scene import Mesh

# --------------------------------------------------------------------------- shared renderer

_RENDERERS: dict = {}


def shared_renderer(mesh: Mesh, camera: Camera, settings: RenderSettings) -> Renderer:
    """One :class:`Renderer` per resolution and backend, reused by every fit in a process
    (each instance compiles its kernels once, which takes far longer than a fit step).
    Capacity grows (a new renderer) only for a mesh larger than the cached one holds."""
    key = (backend.current_arch(), backend.precision(), camera.width, camera.height)
    for k in [k for k in _RENDERERS if k[:2] != key[:2]]:
        del _RENDERERS[k]  # Taichi was restarted: those fields are gone
    r = _RENDERERS.get(key)
    V, F = mesh.num_vertices, mesh.num_faces
    if r is None or r.mesh.max_vertices < V or r.mesh.max_faces < F:
        cap = lambda n: max(8192, 1 << math.ceil(math.log2(n)))  # noqa: E731
        r = Renderer(mesh, camera, settings, max_vertices=cap(V), max_faces=cap(F))
        _RENDERERS[key] = r
    else:
        r.configure(**asdict(settings))
        r.set_mesh(mesh)
        r.set_camera(camera)
    return r


def resolve(renderer: Renderer, name: str):
    """The renderer field called ``name`` ("stage.field", e.g. "lights.sh")."""
    stage, _, attr = name.partition(".")
    try:
        return getattr(getattr(renderer, stage), attr)
    except AttributeError:
        raise UserError(f"unknown renderer field {name!r}") from None


def grad_groups(names) -> tuple:
    """The ``RenderSettings.grads`` groups that the renderer fields ``names`` belong to
    (a fit differentiates only what it optimizes: several times faster backward passes)."""
    mesh = {"positions": "positions", "normals": "positions", "colors": "colors", "uvs": "uvs"}
    stages = {"texture": "texture", "material": "material", "lights": "lights", "vertex": "camera"}
    groups = set()
    for name in names:
        stage, _, attr = name.partition(".")
        group = mesh.get(attr) if stage == "mesh" else stages.get(stage)
        if group is None:
            return GRAD_GROUPS
        groups.add(group)
    return tuple(groups)


# --------------------------------------------------------------------------- kernels


@ti.kernel
def _clear_normals(normals: ti.template(), n: ti.i32):
    for i in range(n):
        normals[i] = ti.Vector([0.0, 0.0, 0.0])


@ti.kernel
def _accumulate_normals(
    positions: ti.template(), faces: ti.template(), normals: ti.template(), n: ti.i32
):
    for f in range(n):
        a, b, c = faces[f][0], faces[f][1], faces[f][2]
        fn = (positions[b] - positions[a]).cross(positions[c] - positions[a])
        normals[a] += fn
        normals[b] += fn
        normals[c] += fn


def vertex_normals(mesh) -> None:
    """Area-weighted vertex normals of the renderer's ``mesh`` (MeshBuffers) written into
    ``mesh.normals`` from ``mesh.positions``, differentiably (call inside the Tape before
    ``shade``; the vertex stage normalises them)."""
    _clear_normals(mesh.normals, mesh.num_vertices)
    _accumulate_normals(mesh.positions, mesh.faces, mesh.normals, mesh.num_faces)


@ti.data_oriented
class GaussianBlur:
    """Separable Gaussian blur of an (H, W) 3-vector image, differentiable, borders
    clamped; ``sigma`` in pixels (taps out to 3σ, at most ``max_radius``). Owns ``out``."""

    def __init__(self, width: int, height: int, max_radius: int = 64):
        real = backend.real()
        self.width, self.height, self.max_radius = int(width), int(height), int(max_radius)
        self.weights = ti.field(real, shape=2 * self.max_radius + 1)
        self.tmp = ti.Vector.field(3, real, shape=(height, width), needs_grad=True)
        self.out = ti.Vector.field(3, real, shape=(height, width), needs_grad=True)
        self.taps = 1

    def set_sigma(self, sigma: float) -> None:
        radius = min(self.max_radius, max(1, math.ceil(3 * sigma)))
        x = np.arange(-radius, radius + 1, dtype=np.float64)
        w = np.exp(-0.5 * (x / max(sigma, 1e-9)) ** 2)
        full = np.zeros(2 * self.max_radius + 1)
        full[: len(w)] = w / w.sum()
        self.weights.from_numpy(full.astype(backend.np_real()))
        self.taps = len(w)

    @ti.kernel
    def _clear(self):
        for y, x in self.out:
            self.tmp[y, x] = ti.Vector([0.0, 0.0, 0.0])
            self.out[y, x] = ti.Vector([0.0, 0.0, 0.0])

    @ti.kernel
    def _pass(self, src: ti.template(), dst: ti.template(), taps: ti.i32, axis: ti.template()):
        # taps as a top-level loop dimension with atomic adds (safe under reverse mode)
        for y, x, k in ti.ndrange(self.height, self.width, taps):
            d = k - taps // 2
            yy, xx = y, x
            if ti.static(axis == 0):
                yy = ti.min(ti.max(y + d, 0), self.height - 1)
            else:
                xx = ti.min(ti.max(x + d, 0), self.width - 1)
            dst[y, x] += self.weights[k] * src[yy, xx]

    def forward(self, image) -> None:
        self._clear()
        self._pass(image, self.tmp, self.taps, 1)
        self._pass(self.tmp, self.out, self.taps, 0)


# --------------------------------------------------------------------------- problem


@dataclass
class View:
    """One target picture: ``camera``, ``target`` (H, W, 3) linear RGB over the renderer's
    background, ``alpha`` (H, W) coverage, and ``overrides`` {field name: value} written
    for this view only (such a parameter gets no gradient from this view)."""

    camera: Camera
    target: np.ndarray | None = None
    alpha: np.ndarray | None = None
    overrides: dict = field(default_factory=dict)


@dataclass
class Param:
    """A fitted renderer field: ``start`` value, Adam rate ``lr``, optional ``project``
    (array -> array, applied after each step to the stored value), ``truth`` (for metrics),
    ``rows``: the first-axis entries that are fitted (default all; e.g. ``[0]`` for light
    slot 0), and ``log``: store and step log(value) instead (a positive parameter such as
    Phong shininess stays positive and Adam's steps become relative)."""

    name: str
    start: np.ndarray
    lr: float
    project: object = None
    truth: np.ndarray | None = None
    rows: list | None = None
    log: bool = False


@dataclass
class Problem:
    """Everything a fit needs; ``fixed`` {field name: value} is written before every view
    (it may hold the same names as ``truth`` values used to render the targets)."""

    renderer: Renderer
    views: list
    params: list
    fixed: dict = field(default_factory=dict)
    precondition: bool = False  # large steps on "mesh.positions"
    large_steps_lambda: float = 20.0
    regularize: dict = field(default_factory=dict)  # {"laplacian": w, "normal": w, "edge": w}
    recompute_normals: bool = False
    blur_sigma: float = 0.0  # coarse-to-fine: start σ in pixels (0: off)
    blur_until: float = 0.5  # fraction of the iterations over which σ falls to 0
    silhouette_weight: float = 1.0  # soft IoU weight (mode "soft" only)
    sigma_anneal: tuple | None = None  # (σ start, σ end) for mode "soft"
    lr_decay: float = 1.0  # learning-rate factor per iteration


def _write(renderer, name, value) -> None:
    f = resolve(renderer, name)
    a = pad_to(f, value)
    if a.ndim == 0:
        f[None] = float(a)
    else:
        f.from_numpy(a.astype(backend.np_real()))


def pad_to(f, value) -> np.ndarray:
    """``value`` zero-padded along its first axis to the capacity of field ``f`` (meshes
    use the first V slots of the renderer's buffers)."""
    a = np.asarray(value, dtype=np.float64)
    shape = tuple(f.shape) + _elem(f)
    if a.shape != shape and a.ndim == len(shape) and a.shape[1:] == shape[1:]:
        a = np.concatenate([a, np.zeros((shape[0] - a.shape[0], *shape[1:]))])
    return a.reshape(shape)


def apply_values(renderer: Renderer, view: View, values: dict, fixed: dict) -> None:
    """Set the camera of ``view`` and write ``fixed``, ``values`` and the view's
    overrides into the renderer, in that order. Light slots are written field by field,
    not through ``Lights.set``, so every slot is shaded (unused slots are black)."""
    renderer.set_camera(view.camera)
    for d in (fixed, values, view.overrides):
        for name, value in d.items():
            _write(renderer, name, value)
    renderer.lights.count.from_numpy(np.array([MAX_DIRECTIONAL, MAX_POINT], dtype=np.int32))


def render_targets(problem: Problem, values: dict) -> None:
    """Fill each view's ``target`` and ``alpha`` by rendering with ``values`` (e.g. the
    ground truth), for synthetic fits."""
    r = problem.renderer
    for view in problem.views:
        apply_values(r, view, values, problem.fixed)
        if problem.recompute_normals:
            vertex_normals(r.mesh)
        r.rasterize()
        r.shade()
        view.target = r.image.to_numpy().astype(np.float64)
        view.alpha = r.alpha.to_numpy().astype(np.float64)


class Fit:
    """Run a :class:`Problem`: ``step(it)`` is one iteration over all views; ``get`` /
    ``set`` are the checkpoint state (parameters and optimizer moments)."""

    def __init__(self, problem: Problem, iterations: int):
        self.problem, self.iterations = problem, int(iterations)
        r = self.r = problem.renderer
        r.configure(grads=grad_groups(p.name for p in problem.params))
        real = backend.real()
        H, W = r.height, r.width
        self.loss = losses.loss_array()
        # Bridge (issue 13) until the renderer's outputs are arrays: the losses read flat
        # ndarray copies of the renderer's fields, made by differentiable copy kernels.
        self.image_array = arrays.empty(H * W, 3, grad=True)
        self.target_array = arrays.empty(H * W, 3)
        self.alpha_array = arrays.empty(H * W, grad=True)
        self.positions_array = arrays.empty(r.mesh.positions.shape[0], 3, grad=True)
        self.target = ti.Vector.field(3, real, shape=(H, W))
        self.blurred_target = ti.Vector.field(3, real, shape=(H, W))
        self.blur = GaussianBlur(W, H) if problem.blur_sigma > 0 else None
        self.iou = losses.SoftIoULoss() if r.settings.mode == "soft" else None
        self.masters = {}
        for p in problem.params:
            f = resolve(r, p.name)
            m = _zeros_like(f)
            backend.write(m, pad_to(f, np.log(p.start) if p.log else p.start))
            self.masters[p.name] = m
        self.params = {p.name: p for p in problem.params}
        self.regularizers = self._regularizers()
        schedule = optim.ExponentialDecay(problem.lr_decay) if problem.lr_decay < 1 else None
        groups = [
            (self.masters[p.name], p.lr)
            for p in problem.params
            if not (problem.precondition and p.name == "mesh.positions")
        ]
        self.adam = optim.Adam(groups, schedule=schedule) if groups else None
        self.large_steps = None
        if problem.precondition:
            p = self.params["mesh.positions"]
            self.large_steps = optim.LargeSteps(
                self.masters[p.name],
                r.mesh.faces,
                r.mesh.num_vertices,
                r.mesh.num_faces,
                lam=problem.large_steps_lambda,
                lr=p.lr,
                schedule=schedule,
            )
        self.last_images = [None] * len(problem.views)
        self.masks = [None] * len(problem.views)
        self.loss_start = None

    def _regularizers(self):
        reg, r = self.problem.regularize, self.r
        out = []
        if "mesh.positions" not in self.masters:
            return out
        args = (self.positions_array, r.mesh.faces, r.mesh.num_vertices, r.mesh.num_faces)
        kinds = {
            "laplacian": losses.LaplacianLoss,
            "normal": losses.NormalConsistencyLoss,
            "edge": losses.EdgeLengthLoss,
        }
        for name, weight in reg.items():
            if weight:
                out.append((kinds[name](*args), weight))
        return out

    def values(self) -> dict:
        """Current parameter values {name: array} (host copies; exp of the stored value
        for ``log`` parameters)."""
        out = {}
        for name, m in self.masters.items():
            a = m.to_numpy().astype(np.float64)
            out[name] = np.exp(a) if self.params[name].log else a
        return out

    def blur_sigma(self, it: int) -> float:
        p = self.problem
        if self.blur is None:
            return 0.0
        return p.blur_sigma * max(0.0, 1.0 - it / max(1.0, p.blur_until * self.iterations))

    def _soft_sigma(self, it: int) -> None:
        p = self.problem
        if p.sigma_anneal and self.r.settings.mode == "soft":
            s0, s1 = p.sigma_anneal
            t = min(1.0, it / max(1, 0.6 * self.iterations))
            self.r.configure(sigma=float(s0 * (s1 / s0) ** t))

    def step(self, it: int) -> dict:
        """One iteration: :meth:`evaluate`, then one optimizer step and the projections;
        returns {"loss": the loss before the step}."""
        total = self.evaluate(it)
        if self.adam is not None:
            self.adam.step()
        if self.large_steps is not None:
            self.large_steps.step()
        for name, param in self.params.items():
            if param.project is not None:
                m = self.masters[name]
                backend.write(m, param.project(m.to_numpy().astype(np.float64)))
        if self.loss_start is None:
            self.loss_start = total
        return {"loss": total}

    def evaluate(self, it: int = 0) -> float:
        """The loss summed over all views at iteration ``it`` (blur and σ schedules) for
        the current parameters; their gradients with respect to the stored values (log
        for ``log`` parameters) go into the masters' ``.grad`` (and ``self.grads``, host
        arrays)."""
        p, r = self.problem, self.r
        self._soft_sigma(it)
        sigma = self.blur_sigma(it)
        if sigma > 0:
            self.blur.set_sigma(sigma)
        values = self.values()
        grads = {name: np.zeros(m.shape + _elem(m)) for name, m in self.masters.items()}
        total = 0.0
        n = len(p.views)
        for k, view in enumerate(p.views):
            apply_values(r, view, values, p.fixed)
            r.rasterize()
            self.target.from_numpy(view.target.astype(backend.np_real()))
            target = self.target
            if sigma > 0:
                self.blur.forward(self.target)
                self.blurred_target.copy_from(self.blur.out)
                target = self.blurred_target
            arrays.copy_field(target, self.target_array)
            ti.ad.clear_all_gradients()  # a Tape with an array loss clears no field gradient
            with ti.ad.Tape(loss=self.loss):
                if p.recompute_normals:
                    vertex_normals(r.mesh)
                r.shade()
                image = r.image
                if sigma > 0:
                    self.blur.forward(r.image)
                    image = self.blur.out
                arrays.copy_field(image, self.image_array)
                losses.mse_loss(self.image_array, self.target_array, self.loss, weight=1.0 / n)
                if self.iou is not None:
                    arrays.copy_field(r.alpha, self.alpha_array)
                    alpha = view.alpha.astype(backend.np_real())
                    self.iou(self.alpha_array, alpha, self.loss, p.silhouette_weight / n)
                if k == 0 and self.regularizers:
                    arrays.copy_field(r.mesh.positions, self.positions_array)
                    for reg, weight in self.regularizers:
                        reg(self.loss, weight)
            total += self.loss[None]
            for name in self.masters:
                if name not in view.overrides:
                    grads[name] += resolve(r, name).grad.to_numpy()
            self.last_images[k] = r.image.to_numpy()
            self.masks[k] = r.raster.triangle_id.to_numpy() >= 0
        for name, m in self.masters.items():
            rows = self.params[name].rows
            if rows is not None:
                keep = np.zeros(len(grads[name]), bool)
                keep[rows] = True
                grads[name][~keep] = 0.0
            if self.params[name].log:  # d loss / d log x = x · d loss / d x
                grads[name] *= values[name]
            backend.write(m.grad, grads[name])
        self.grads = grads
        return total

    def render(self, view: View, values: dict | None = None) -> tuple:
        """``view`` rendered with ``values`` (default: the current parameters), no
        gradients: (image (H, W, 3) linear, mask (H, W) bool)."""
        p, r = self.problem, self.r
        apply_values(r, view, self.values() if values is None else values, p.fixed)
        if p.recompute_normals:
            vertex_normals(r.mesh)
        r.rasterize()
        r.shade()
        return r.image.to_numpy(), r.raster.triangle_id.to_numpy() >= 0

    def render_current(self) -> None:
        """Render every view with the current parameters into ``last_images`` and
        ``masks``."""
        values = self.values()
        for k, view in enumerate(self.problem.views):
            self.last_images[k], self.masks[k] = self.render(view, values)

    # ---- checkpoint state ------------------------------------------------------------------
    def _optimizers(self):
        out = []
        if self.adam is not None:
            out.append(("adam", self.adam))
        if self.large_steps is not None:
            out.append(("large_steps", self.large_steps))
        return out

    def get(self) -> dict:
        out = {f"param/{n}": m.to_numpy() for n, m in self.masters.items()}
        for prefix, opt in self._optimizers():
            out.update({f"{prefix}/{k}": a for k, a in opt.state_dict().items()})
        return out

    def set(self, state: dict) -> None:
        try:
            for n, m in self.masters.items():
                backend.write(m, _same_shape(state[f"param/{n}"], m))
            for prefix, opt in self._optimizers():
                start = f"{prefix}/"
                opt.load_state_dict(
                    {k[len(start) :]: a for k, a in state.items() if k.startswith(start)}
                )
        except KeyError as exc:
            raise UserError(
                f"--resume: the checkpoint lacks {exc.args[0]!r}; it was written with other "
                "settings (e.g. --precondition); use the same flags or another --out folder"
            ) from None


def _elem(f) -> tuple:
    if isinstance(f, ti.MatrixField):
        return (f.n,) if f.m == 1 else (f.n, f.m)
    return ()


def _zeros_like(f):
    real = backend.real()
    if isinstance(f, ti.MatrixField):
        return ti.Vector.field(f.n, real, shape=f.shape, needs_grad=True)
    return ti.field(real, shape=f.shape, needs_grad=True)


def _same_shape(a, f):
    a = np.asarray(a)
    if a.shape != tuple(f.shape) + _elem(f):
        raise UserError(
            "--resume: the checkpoint was written with other settings (mesh, texture or "
            "resolution differ); use the same flags or another --out folder"
        )
    return a
