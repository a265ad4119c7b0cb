"""Forward-mode derivative images: ∂image/∂θ for one scalar parameter θ, by ``ti.ad.FwdMode``.

One forward pass gives the whole (H, W, 3) derivative image, where reverse mode would need
one pass per pixel. θ drives a renderer input through a small kernel (``apply``) that runs
inside the forward-mode context before ``Renderer.shade``:

* ``"translation"``: object-space vertex positions ``p = p₀ + θ·direction`` (θ₀ = 0);
* ``"light_angle"``: directional light ``light``'s direction rotated by θ radians about
  ``axis`` (right-handed, θ₀ = 0);
* a material scalar (``specular``, ``shininess``, ``roughness``, ``metallic``,
  ``opacity``): θ is its value.

Visibility is fixed: the renderer rasterizes first, outside the context (so in "hard" mode
the derivative ignores pixels changing triangle; "antialias" mode differentiates its edge
blend). The renderer's fields need duals: call ``taichi_dr.init(..., forward_mode=True)``
before building it. The same ``apply`` runs under ``ti.ad.Tape`` for reverse mode::

    p = scalar_parameter(r, "translation", direction=(1, 0, 0))
    r.rasterize()
    with ti.ad.Tape(loss):
        p.apply(); r.shade(); my_loss(r.image, loss)
    p.theta.grad[0]   # == Σ ∂loss/∂image · derivative_image(r, "translation", ...)
"""

import contextlib
import weakref

import numpy as np
import taichi as ti

from .. import backend
from ..errors import UserError
from .lights import MAX_DIRECTIONAL
from .shading import Material

MATERIAL_SCALARS = tuple(n for n in Material.names if n != "base_color")
PARAMETERS = ("translation", "light_angle", *MATERIAL_SCALARS)


@ti.kernel
def _copy_vectors(src: ti.template(), dst: ti.template()):
    for i in src:
        dst[i] = src[i]


@ti.kernel
def _translate(
    theta: ti.template(),
    base: ti.template(),
    direction: ti.template(),
    n: ti.i32,
    out: ti.template(),
):
    for i in range(n):
        out[i] = base[i] + theta[0] * direction[None]


@ti.kernel
def _rotate(theta: ti.template(), base: ti.template(), axis: ti.template(), out: ti.template()):
    # Rodrigues: d cos θ + (a × d) sin θ + a (a·d)(1 − cos θ); out is a 0-d slot.
    t, d, a = theta[0], base[None], axis[None]
    c, s = ti.cos(t), ti.sin(t)
    out[None] = d * c + a.cross(d) * s + a * a.dot(d) * (1.0 - c)


@ti.kernel
def _store_direction(src: ti.template(), k: ti.i32, out: ti.template()):
    out[k] = src[None]


@ti.kernel
def _copy_scalar(theta: ti.template(), out: ti.template()):
    out[None] = theta[0]


@ti.data_oriented
class ScalarParameter:
    """θ (a (1,) field with grad and dual) and the kernel ``apply`` writing a renderer
    input from it. Build with :func:`scalar_parameter`; ``reset`` sets θ₀ from the
    renderer's current state, so that ``apply`` at θ₀ changes nothing."""

    def __init__(self, renderer):
        real = backend.real()
        opts = dict(needs_grad=True, needs_dual=True)
        self.renderer = renderer
        self.kind = None
        self.theta = ti.field(real, shape=1, **opts)
        self.loss = ti.field(real, shape=(), **opts)  # FwdMode needs one; unused
        self.base_positions = ti.Vector.field(3, real, shape=renderer.mesh.max_vertices)
        self.direction = ti.Vector.field(3, real, shape=())
        self.base_direction = ti.Vector.field(3, real, shape=())
        self.axis = ti.Vector.field(3, real, shape=())
        self.rotated = ti.Vector.field(3, real, shape=(), **opts)
        self.light = 0

    def configure(self, kind: str, direction=(1.0, 0.0, 0.0), light: int = 0, axis=(0, 1, 0)):
        if kind not in PARAMETERS:
            raise UserError(f"unknown parameter {kind!r}; choose one of {', '.join(PARAMETERS)}")
        self.kind = kind
        if kind == "translation":
            self.direction[None] = _finite_vector(direction, "direction")
        elif kind == "light_angle":
            if int(light) != light or not 0 <= light < MAX_DIRECTIONAL:
                raise UserError(f"light must be a directional light index 0..{MAX_DIRECTIONAL - 1}")
            a = _finite_vector(axis, "axis")
            if np.linalg.norm(a) == 0:
                raise UserError("axis must be a non-zero vector")
            self.axis[None] = a / np.linalg.norm(a)
            self.light = int(light)
        self.reset()

    def reset(self) -> None:
        """θ₀ from the renderer: 0 for translation and light_angle (capturing the current
        positions / direction), the current value for a material scalar."""
        r = self.renderer
        if self.kind == "translation":
            _copy_vectors(r.mesh.positions, self.base_positions)
            self.theta[0] = 0.0
        elif self.kind == "light_angle":
            self.base_direction[None] = r.lights.dir_direction[self.light]
            self.theta[0] = 0.0
        else:
            self.theta[0] = getattr(r.material, self.kind)[None]

    def apply(self) -> None:
        """Write the renderer input from θ (differentiable in both modes)."""
        r = self.renderer
        if self.kind == "translation":
            _translate(
                self.theta,
                self.base_positions,
                self.direction,
                r.mesh.num_vertices,
                r.mesh.positions,
            )
        elif self.kind == "light_angle":
            _rotate(self.theta, self.base_direction, self.axis, self.rotated)
            _store_direction(self.rotated, self.light, r.lights.dir_direction)
        else:
            _copy_scalar(self.theta, getattr(r.material, self.kind))


def _finite_vector(v, name: str) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    if a.shape != (3,) or not np.all(np.isfinite(a)):
        raise UserError(f"{name} must be 3 finite numbers, got {v}")
    return a


_PARAMETERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def scalar_parameter(renderer, parameter: str = "translation", **options) -> ScalarParameter:
    """The renderer's :class:`ScalarParameter` set to ``parameter`` with ``options``
    (``direction`` for translation; ``light``, ``axis`` for light_angle) and reset to θ₀.
    One object per renderer is reused, so its kernels compile once."""
    _require_duals(renderer)
    p = _PARAMETERS.get(renderer)
    if p is None:
        p = _PARAMETERS[renderer] = ScalarParameter(renderer)
    p.configure(parameter, **options)
    return p


def _require_duals(renderer) -> None:
    if not renderer.image.snode.ptr.has_dual():
        raise UserError(
            "forward-mode derivatives need duals on the renderer's fields; call "
            "taichi_dr.init(..., forward_mode=True) before building the renderer"
        )
    if renderer.settings.layers != 1:
        raise UserError(
            "forward-mode derivatives render one layer; build the renderer with layers=1"
        )


def derivative_image(renderer, parameter: str = "translation", **options) -> np.ndarray:
    """∂image/∂θ (H, W, 3), row 0 at the top, for the scalar ``parameter`` (see module
    docstring and :func:`scalar_parameter` for ``options``), at the current state and
    visibility. Rasterizes, then runs ``apply`` + ``shade`` in one ``ti.ad.FwdMode`` pass;
    leaves the renderer's image and inputs as they were."""
    p = scalar_parameter(renderer, parameter, **options)
    renderer.rasterize()
    with forward_mode(p.loss, p.theta):
        p.apply()
        renderer.shade()
    return renderer.image.dual.to_numpy().astype(np.float64)


@contextlib.contextmanager
def forward_mode(loss, param):
    """``ti.ad.FwdMode(loss, param)`` (clearing every dual on entry, seed 1 on ``param``,
    a (1,) field) with two workarounds for Taichi 1.7.4:

    * its forward-mode pass cannot compile a vector built from computed values
      (``MatrixInitStmt`` of locals): matrices are scalarized first
      (``force_scalarize_matrix``, only while the context compiles kernels);
    * on exit it restores a kernel called twice inside to forward mode, so that a later
      ``ti.ad.Tape`` skips it (a silently missing gradient): every kernel gets back the
      mode it had before its first call."""
    cfg = ti.lang.impl.current_cfg()
    scalarize = cfg.force_scalarize_matrix
    fwd = ti.ad.FwdMode(loss=loss, param=param)
    cfg.force_scalarize_matrix = True
    try:
        with fwd:
            yield
    finally:
        cfg.force_scalarize_matrix = scalarize
        for kernel, mode in reversed(list(zip(fwd.calls, fwd.modes))):
            kernel.autodiff_mode = mode
