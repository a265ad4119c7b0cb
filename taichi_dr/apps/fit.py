"""Inverse rendering: recover scene parameters from images (``taichi-dr fit APP``).

A fit is a :class:`Problem`: a renderer, a list of :class:`View` (camera, target image,
per-view overrides), the parameters to recover (:class:`Param`: a renderer parameter by
name, its start value, learning rate and projection) and fixed values. :class:`Fit` runs
one iteration at a time, on the device: every view is rendered in one batched call, under
one ``ti.ad.Tape`` with the image loss summed over the views (plus the soft-silhouette IoU
in mode "soft" and mesh regularizers), then one optimizer step (Adam, or large steps for
vertex positions). Nothing goes through the host inside an iteration but the loss value.

Parameters are named in the field's words: ``"vertices"`` (V, 3) and ``"texture"``
(H, W, 3) — optimised in place — and the packed ones: ``"material.roughness"`` (),
``"lights.sh"`` (9, 3) (the names of :class:`~taichi_dr.render.Material` and
:class:`~taichi_dr.render.Lights`), ``"pose.rotation"`` (3,) axis-angle radians,
``"pose.translation"``, ``"camera.rotation"``, ``"camera.translation"``, ``"camera.fov"``...
For a packed parameter the fit keeps a master copy on the device and writes it into every
view's set but where a view overrides it (views of one batch share the parameter; their
gradients add up). The applications themselves (what is fitted, from which wrong start, with
which metric) live in :mod:`taichi_dr.apps.inverse`."""

import math
from dataclasses import dataclass, field

import numpy as np
import taichi as ti

from .. import backend, losses, optim
from ..camera import Camera
from ..errors import UserError
from ..render import arrays
from ..render.arrays import Int, IVec3, Real, Vec3
from ..render.lights import MAX_DIRECTIONAL, MAX_POINT
from ..render.pipeline import GRAD_GROUPS, Renderer, RenderSettings
from ..scene import Mesh

ARRAYS = {"vertices": "positions", "texture": "texture"}  # optimised in place: name → group
VIEW = {  # the per-view parameters: name → ViewParameters field
    "pose.rotation": "pose_rotation",
    "pose.translation": "pose_translation",
    "camera.rotation": "camera_rotation",
    "camera.translation": "camera_translation",
    "camera.fov": "fov",
}
PACKED = {"material": "material", "lights": "lights", "pose": "camera", "camera": "camera"}


def shared_renderer(mesh: Mesh, cameras, settings: RenderSettings) -> Renderer:
    """A renderer for ``cameras`` (its kernels are compiled once per process: building one
    costs a few milliseconds)."""
    return Renderer(mesh, list(cameras), settings)


def grad_groups(names) -> tuple:
    """The ``RenderSettings.grads`` groups of the parameters ``names`` (a fit
    differentiates only what it optimizes: several times faster backward passes)."""
    groups = set()
    for name in names:
        stage = name.partition(".")[0]
        group = ARRAYS.get(name) or PACKED.get(stage)
        if group is None:
            return GRAD_GROUPS
        groups.add(group)
    return tuple(groups)


def packed_of(renderer: Renderer, name: str):
    """(packed parameter object, its field) of a packed parameter's name."""
    if name in VIEW:
        return renderer.vertex.params, VIEW[name]
    stage, _, attr = name.partition(".")
    owner = {"material": renderer.material, "lights": renderer.lights}.get(stage)
    if owner is None or attr not in owner.layout.names:
        raise UserError(
            f"unknown parameter {name!r}; fit vertices, texture, material.*, lights.*, "
            f"{', '.join(VIEW)}"
        )
    return owner, attr


# --------------------------------------------------------------------------- kernels


@ti.kernel
def _scatter(master: Real, source: Int, target: Int, log: ti.i32, values: Real):
    for j in range(target.shape[0]):
        m = master[source[j]]
        values[target[j]] = ti.select(log != 0, ti.exp(m), m)


@ti.kernel
def _gather(master: Real, source: Int, target: Int, log: ti.i32, values_grad: Real, grad: Real):
    for j in range(target.shape[0]):
        m = master[source[j]]
        g = values_grad[target[j]]
        grad[source[j]] += ti.select(log != 0, g * ti.exp(m), g)  # d/d log x = x · d/dx


@ti.kernel
def _clamp(x: ti.types.ndarray(), lo: float, hi: float):
    for I in ti.grouped(x):
        x[I] = ti.min(ti.max(x[I], lo), hi)


@ti.kernel
def _normalise_rows(x: Real, rows: ti.i32):
    for r in range(rows):
        v = ti.Vector([x[3 * r], x[3 * r + 1], x[3 * r + 2]])
        v = v / ti.max(v.norm(), 1e-12)
        for k in ti.static(range(3)):
            x[3 * r + k] = v[k]


@ti.kernel
def _clear_vectors(a: Vec3):
    for i in range(a.shape[0]):
        a[i] = ti.Vector([0.0, 0.0, 0.0])


@ti.kernel
def _accumulate_normals(positions: Vec3, faces: IVec3, normals: Vec3):
    for f in range(faces.shape[0]):
        a, b, c = faces[f][0], faces[f][1], faces[f][2]
        fn = (positions[b] - positions[a]).cross(positions[c] - positions[a])
        normals[a] += fn
        normals[b] += fn
        normals[c] += fn


def recompute_normals(mesh) -> None:
    """Area-weighted vertex normals of the renderer's ``mesh`` (MeshBuffers) written into
    ``mesh.normals`` from ``mesh.positions``, differentiably (call inside the tape before
    ``shade``; the vertex stage normalises them)."""
    _clear_vectors(mesh.normals)
    _accumulate_normals(mesh.positions, mesh.distinct, mesh.normals)


@ti.kernel
def _blur_pass(
    src: Vec3, weights: Real, taps: ti.i32, height: ti.i32, width: ti.i32, axis: ti.i32, dst: Vec3
):
    # taps as a top-level loop dimension with atomic adds (safe under reverse mode)
    for i, k in ti.ndrange(src.shape[0], taps):
        b, y, x = arrays.pixel(i, height, width)
        d = k - taps // 2
        yy = ti.select(axis == 0, ti.min(ti.max(y + d, 0), height - 1), y)
        xx = ti.select(axis == 1, ti.min(ti.max(x + d, 0), width - 1), x)
        dst[i] += weights[k] * src[(b * height + yy) * width + xx]


class GaussianBlur:
    """Separable Gaussian blur of flat (B·H·W,) vec3 images of a frame, differentiable,
    borders clamped; ``sigma`` in pixels (taps out to 3σ, at most ``max_radius``).
    Owns ``out``."""

    def __init__(self, frame, max_radius: int = 64):
        self.frame, self.max_radius = frame, int(max_radius)
        self.tmp = arrays.empty(frame.pixels, 3, grad=True)
        self.out = arrays.empty(frame.pixels, 3, grad=True)
        self.weights = arrays.empty(2 * self.max_radius + 1)
        self.taps = 1

    def set_sigma(self, sigma: float) -> None:
        radius = min(self.max_radius, max(1, math.ceil(3 * sigma)))
        x = np.arange(-radius, radius + 1, dtype=np.float64)
        w = np.exp(-0.5 * (x / max(sigma, 1e-9)) ** 2)
        full = np.zeros(2 * self.max_radius + 1)
        full[: len(w)] = w / w.sum()
        self.weights.from_numpy(full.astype(backend.np_real()))
        self.taps = len(w)

    def forward(self, image) -> None:
        f = self.frame
        _clear_vectors(self.tmp)
        _clear_vectors(self.out)
        _blur_pass(image, self.weights, self.taps, f.height, f.width, 1, self.tmp)
        _blur_pass(self.tmp, self.weights, self.taps, f.height, f.width, 0, self.out)


# --------------------------------------------------------------------------- problem


@dataclass
class View:
    """One target picture: ``camera``, ``target`` (H, W, 3) linear RGB over the renderer's
    background, ``alpha`` (H, W) coverage, and ``overrides`` {parameter name: value}
    written for this view only (such a parameter gets no gradient from this view)."""

    camera: Camera
    target: np.ndarray | None = None
    alpha: np.ndarray | None = None
    overrides: dict = field(default_factory=dict)


@dataclass
class Param:
    """A fitted renderer parameter: ``start`` value, Adam rate ``lr``, optional
    ``project`` (applied on the device after each step: ``("clip", lo, hi)`` with None for
    no bound, or ``("normalise",)`` for rows of unit 3-vectors), ``truth`` (for metrics),
    ``rows``: the first-axis entries that are fitted (default all; e.g. ``[0]`` for light
    slot 0), and ``log``: store and step log(value) instead (a positive parameter such as
    Phong shininess stays positive and Adam's steps become relative)."""

    name: str
    start: np.ndarray
    lr: float
    project: tuple | None = None
    truth: np.ndarray | None = None
    rows: list | None = None
    log: bool = False


@dataclass
class Problem:
    """Everything a fit needs; ``fixed`` {parameter name: value} is written first (it may
    hold the same names as ``truth`` values used to render the targets)."""

    renderer: Renderer
    views: list
    params: list
    fixed: dict = field(default_factory=dict)
    precondition: bool = False  # large steps on the vertices
    large_steps_lambda: float = 20.0
    regularize: dict = field(default_factory=dict)  # {"laplacian": w, "normal": w, "edge": w}
    recompute_normals: bool = False
    blur_sigma: float = 0.0  # coarse-to-fine: start σ in pixels (0: off)
    blur_until: float = 0.5  # fraction of the iterations over which σ falls to 0
    silhouette_weight: float = 1.0  # soft IoU weight (mode "soft" only)
    sigma_anneal: tuple | None = None  # (σ start, σ end) for mode "soft"
    lr_decay: float = 1.0  # learning-rate factor per iteration


def _write(renderer: Renderer, name: str, value, view=None) -> None:
    """Set parameter ``name`` of the renderer (in every view's set, or in ``view``'s)."""
    value = np.asarray(value, dtype=np.float64)
    if name == "vertices":
        renderer.mesh.positions.from_numpy(value.reshape(-1, 3).astype(backend.np_real()))
    elif name == "texture":
        renderer.texture.upload(value)
    else:
        owner, attr = packed_of(renderer, name)
        host = owner.values.to_numpy().reshape(owner.sets, -1)
        for s in range(owner.sets) if view is None or owner.sets == 1 else [view]:
            host[s, owner.layout.span(attr)] = value.ravel()
        owner.values.from_numpy(host.ravel())


def setup(problem: Problem, values: dict) -> None:
    """Cameras of every view, then ``fixed``, ``values`` and each view's overrides. Light
    slots are written as arrays (every slot is shaded: unused slots are black)."""
    r = problem.renderer
    r.set_camera([v.camera for v in problem.views])
    if any(v.overrides for v in problem.views):
        r.set_lights_per_view()
    for d in (problem.fixed, values):
        for name, value in d.items():
            _write(r, name, value)
    for b, view in enumerate(problem.views):
        for name, value in view.overrides.items():
            _write(r, name, value, view=b)
    r.lights.set(count=(MAX_DIRECTIONAL, MAX_POINT))


def render_targets(problem: Problem, values: dict) -> None:
    """Fill each view's ``target`` and ``alpha`` by rendering with ``values`` (e.g. the
    ground truth), for synthetic fits: one batched call."""
    r = problem.renderer
    setup(problem, values)
    if problem.recompute_normals:
        recompute_normals(r.mesh)
    out = r.render()
    for b, view in enumerate(problem.views):
        view.target = out.image[b].astype(np.float64)
        view.alpha = out.alpha[b].astype(np.float64)


class _Master:
    """A packed parameter's fitted value on the device (``log`` space for log
    parameters) and where it goes: ``target`` indices into the packed array (every view's
    set but the overriding ones, only the fitted rows) fed by ``source`` master entries."""

    def __init__(self, problem: Problem, p: Param):
        owner, attr = packed_of(problem.renderer, p.name)
        shape = owner.layout.shapes[attr]
        start = np.broadcast_to(np.asarray(p.start, dtype=np.float64), shape).astype(np.float64)
        size = start.size
        entries = np.arange(size).reshape(shape) if shape else np.arange(1)
        if p.rows is not None:
            entries = entries[p.rows]
        entries = entries.ravel()
        span = owner.layout.span(attr).start
        sets = [
            s
            for s in range(owner.sets)
            if owner.sets == 1 or p.name not in problem.views[s].overrides
        ]
        self.owner, self.param, self.shape, self.log = owner, p, shape, bool(p.log)
        target = np.concatenate([s * owner.layout.size + span + entries for s in sets])
        self.source = arrays.from_numpy(np.tile(entries, len(sets)).astype(np.int32), ti.i32)
        self.target = arrays.from_numpy(target.astype(np.int32), ti.i32)
        self.value = arrays.from_numpy((np.log(start) if self.log else start).ravel(), grad=True)

    def scatter(self) -> None:
        _scatter(self.value, self.source, self.target, int(self.log), self.owner.values)

    def gather(self) -> None:
        arrays.clear_grads(self.value)
        _gather(
            self.value,
            self.source,
            self.target,
            int(self.log),
            self.owner.values.grad,
            self.value.grad,
        )

    def host(self) -> np.ndarray:
        v = self.value.to_numpy().astype(np.float64).reshape(self.shape)
        return np.exp(v) if self.log else v


class Fit:
    """Run a :class:`Problem`: ``step(it)`` is one iteration over all views; ``get`` /
    ``set`` are the checkpoint state (parameters and optimizer moments)."""

    def __init__(self, problem: Problem, iterations: int):
        self.problem, self.iterations = problem, int(iterations)
        r = self.r = problem.renderer
        r.configure(grads=grad_groups(p.name for p in problem.params))
        self.params = {p.name: p for p in problem.params}
        setup(problem, {p.name: p.start for p in problem.params if p.name in ARRAYS})
        frame = r.frame
        self.loss = losses.loss_array()
        self.target = arrays.from_numpy(
            np.concatenate([v.target.reshape(-1, 3) for v in problem.views])
        )
        self.target_alpha = arrays.from_numpy(
            np.concatenate([v.alpha.reshape(-1) for v in problem.views])
        )
        self.blurred_target = arrays.empty(frame.pixels, 3)
        self.blur = GaussianBlur(frame) if problem.blur_sigma > 0 else None
        self.iou = losses.SoftIoULoss() if r.settings.mode == "soft" else None
        self.masters = {p.name: _Master(problem, p) for p in problem.params if p.name not in ARRAYS}
        self.arrays = {name: self._array(name) for name in self.params if name in ARRAYS}
        self.regularizers = self._regularizers()
        schedule = optim.ExponentialDecay(problem.lr_decay) if problem.lr_decay < 1 else None
        groups = [(m.value, self.params[n].lr) for n, m in self.masters.items()] + [
            (a, self.params[n].lr)
            for n, a in self.arrays.items()
            if not (problem.precondition and n == "vertices")
        ]
        self.adam = optim.Adam(groups, schedule=schedule) if groups else None
        self.large_steps = None
        if problem.precondition:
            self.large_steps = optim.LargeSteps(
                r.mesh.positions,
                r.mesh.distinct.to_numpy(),
                lam=problem.large_steps_lambda,
                lr=self.params["vertices"].lr,
                schedule=schedule,
            )
        self._result = None  # host copy of the last rendering, made on demand

    def _array(self, name: str):
        if name == "vertices":
            return self.r.mesh.positions
        if self.r.texture is None:
            raise UserError("fitting the texture needs a textured mesh")
        return self.r.texture.texels

    def _regularizers(self):
        reg, r = self.problem.regularize, self.r
        if "vertices" not in self.arrays:
            return []
        kinds = {
            "laplacian": losses.LaplacianLoss,
            "normal": losses.NormalConsistencyLoss,
            "edge": losses.EdgeLengthLoss,
        }
        faces = r.mesh.distinct.to_numpy()  # each surface triangle once
        return [(kinds[k](r.mesh.positions, faces), w) for k, w in reg.items() if w]

    def values(self) -> dict:
        """Current parameter values {name: array} (host copies)."""
        out = {name: m.host() for name, m in self.masters.items()}
        if "vertices" in self.arrays:
            out["vertices"] = self.r.mesh.positions.to_numpy().astype(np.float64)
        if "texture" in self.arrays:
            out["texture"] = self.r.texture.image().astype(np.float64)
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

    def _project(self) -> None:
        for name, p in self.params.items():
            if p.project is None:
                continue
            a = self.masters[name].value if name in self.masters else self.arrays[name]
            if p.project[0] == "clip":
                lo, hi = p.project[1:]
                _clamp(a, -math.inf if lo is None else lo, math.inf if hi is None else hi)
            elif p.project[0] == "normalise":
                _normalise_rows(a, a.shape[0] // 3)
            else:
                raise UserError(f"unknown projection {p.project!r}; use ('clip', lo, hi)")

    def step(self, it: int) -> dict:
        """One iteration: :meth:`evaluate`, then one optimizer step and the projections;
        returns {"loss": the loss before the step}."""
        total = self.evaluate(it)
        if self.adam is not None:
            self.adam.step()
        if self.large_steps is not None:
            self.large_steps.step()
        self._project()
        return {"loss": total}

    def _write_parameters(self) -> None:
        for m in self.masters.values():
            m.scatter()

    def evaluate(self, it: int = 0) -> float:
        """The loss of all views at iteration ``it`` (blur and σ schedules) for the
        current parameters; their gradients go into the optimised arrays' ``.grad``."""
        p, r = self.problem, self.r
        self._soft_sigma(it)
        sigma = self.blur_sigma(it)
        target = self.target
        if sigma > 0:
            self.blur.set_sigma(sigma)
            self.blur.forward(self.target)
            self.blurred_target.copy_from(self.blur.out)
            target = self.blurred_target
        self._write_parameters()
        r.rasterize()
        with backend.Tape(self.loss):
            if p.recompute_normals:
                recompute_normals(r.mesh)
            r.shade()
            image = r.image
            if sigma > 0:
                self.blur.forward(r.image)
                image = self.blur.out
            losses.mse_loss(image, target, self.loss)
            if self.iou is not None:
                self.iou(r.alpha, self.target_alpha, self.loss, weight=p.silhouette_weight)
            for reg, weight in self.regularizers:
                reg(self.loss, weight)
        for m in self.masters.values():
            m.gather()
        self._result = None
        return float(self.loss[None])

    @property
    def last_images(self) -> list:
        """Each view's image of the last rendering (H, W, 3), read back on demand (None
        before the first)."""
        last = self._last()
        return [None] * len(self.problem.views) if last is None else list(last.image)

    @property
    def masks(self) -> list:
        """Each view's coverage mask of the last rendering (H, W)."""
        last = self._last()
        return [None] * len(self.problem.views) if last is None else list(last.mask)

    def _last(self):
        if self._result is None and self.r.pixels is not None:
            self._result = self.r.result()
        return self._result

    def render(self, view_index: int | None = None, values: dict | None = None) -> tuple:
        """Every view (or view ``view_index``) rendered with ``values`` (default: the
        current parameters), no gradients: (images (B, H, W, 3) linear, masks (B, H, W))."""
        r = self.r
        if values is not None:
            for name, value in values.items():
                _write(r, name, value)
        else:
            self._write_parameters()
        if self.problem.recompute_normals:
            recompute_normals(r.mesh)
        out = r.render()
        if view_index is None:
            return out.image, out.mask
        return out.image[view_index], out.mask[view_index]

    def preview(self, camera: Camera) -> np.ndarray:
        """The current model from another ``camera`` (H, W, 3), e.g. the live view's
        orbit: a second renderer (it compiles nothing) with the fit's current mesh,
        texture, material, the first view's lights and pose."""
        r = self.r
        self._write_parameters()
        p = getattr(self, "_preview", None)
        if p is None or (p.width, p.height) != (camera.width, camera.height):
            p = self._preview = Renderer(_mesh_of(r), camera, r.settings)
        p.set_camera(camera)
        p.configure(**{f: getattr(r.settings, f) for f in ("shading", "background")}, mode="hard")
        p.mesh.positions.copy_from(r.mesh.positions)
        p.mesh.normals.copy_from(r.mesh.normals)
        p.mesh.colors.copy_from(r.mesh.colors)
        if r.texture is not None:
            p.set_texture(r.texture.image())
        p.material.values.copy_from(r.material.values)
        first_set = r.lights.values.to_numpy().reshape(r.lights.sets, -1)[0]
        p.lights.values.from_numpy(np.ascontiguousarray(first_set))
        p.lights.set(count=(MAX_DIRECTIONAL, MAX_POINT))
        pose = r.vertex.params.values.to_numpy().reshape(r.views, -1)[0]
        p.vertex.params.set(pose_rotation=pose[0:3], pose_translation=pose[3:6])
        return p.render().image

    def render_current(self) -> None:
        """Render every view with the current parameters into ``last_images`` and
        ``masks``."""
        self.render()
        self._result = None

    # ---- checkpoint state ------------------------------------------------------------------
    def checkpoint(self) -> optim.Checkpoint:
        """The fitted parameters and the optimizers' states (see ``optim.Checkpoint``)."""
        params = {n: m.value for n, m in self.masters.items()}
        params.update(self.arrays)
        optimizers = {"adam": self.adam, "large_steps": self.large_steps}
        return optim.Checkpoint(
            params,
            {k: opt for k, opt in optimizers.items() if opt is not None},
            settings="mesh, texture, resolution or --precondition",
        )

    def get(self) -> dict:
        return self.checkpoint().get()

    def set(self, state: dict) -> None:
        self.checkpoint().set(state)


def _mesh_of(r: Renderer) -> Mesh:
    """The renderer's current mesh as a :class:`Mesh` (host copy)."""
    m = r.mesh
    return Mesh(
        m.positions.to_numpy()[: m.num_vertices].astype(np.float64),
        m.faces.to_numpy(),
        m.normals.to_numpy()[: m.num_vertices].astype(np.float64),
        m.uvs.to_numpy().astype(np.float64) if m.has_uvs else None,
    )
