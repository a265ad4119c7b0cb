"""Derivative images: ∂image/∂θ (H, W, 3) for one scalar parameter θ, at fixed visibility.

θ drives a renderer input through a small differentiable kernel (``apply``):

* ``"translation"``: vertex positions ``p = p₀ + θ·direction`` (θ₀ = 0);
* ``"light_angle"``: directional light ``light``'s direction rotated by θ radians about
  ``axis`` (right-handed, θ₀ = 0);
* a material scalar (``specular``, ``shininess``, ``roughness``, ``metallic``,
  ``opacity``): θ is its value.

:func:`derivative_image` rasterizes once (so in "hard" mode the derivative ignores pixels
changing triangle; "antialias" mode differentiates its edge blend) and differentiates the
shading by a central difference (I(h) − I(−h)) / 2h with a tiny step (h = 1e-6·max(1, |θ|)
in float64: within ~1e-9 of the exact derivative; 1e-3 in float32, noisier). A tiny step
matters: shading has kinks where a surface turns away from the eye or a light, and the
derivative image should be the derivative at θ, not a slope across a kink. (The renderer's
kernels work on ndarrays, which Taichi 1.7.4's forward mode, ``ti.ad.FwdMode``, cannot
differentiate: it seeds and propagates duals of fields only. The primer, ``taichi-dr ad``,
teaches forward mode itself.) The same ``apply`` runs under ``ti.ad.Tape``, giving the
reverse-mode contraction::

    p = scalar_parameter(r, "translation", direction=(1, 0, 0))
    r.rasterize()
    with ti.ad.Tape(loss):
        p.apply(); r.shade(); my_loss(r.image, loss)
    p.theta.grad[0]   # == Σ ∂loss/∂image · derivative_image(r, "translation", ...)
"""

import weakref

import numpy as np
import taichi as ti

from .. import backend
from ..errors import UserError
from . import arrays
from .arrays import Real, Vec3
from .lights import DIR_DIRECTION, MAX_DIRECTIONAL
from .shading import MATERIAL_LAYOUT

MATERIAL_SCALARS = tuple(n for n in MATERIAL_LAYOUT.names if n != "base_color")
PARAMETERS = ("translation", "light_angle", *MATERIAL_SCALARS)


@ti.kernel
def _translate(theta: Real, base: Vec3, direction: Vec3, out: Vec3):
    for i in range(out.shape[0]):
        out[i] = base[i] + theta[0] * direction[0]


@ti.kernel
def _rotate(theta: Real, base: Vec3, axis: Vec3, values: Real, offset: ti.i32):
    # Rodrigues: d cos θ + (a × d) sin θ + a (a·d)(1 − cos θ), into a packed light array
    for _ in range(1):
        t, d, a = theta[0], base[0], axis[0]
        c, s = ti.cos(t), ti.sin(t)
        r = d * c + a.cross(d) * s + a * a.dot(d) * (1.0 - c)
        for k in ti.static(range(3)):
            values[offset + k] = r[k]


@ti.kernel
def _set_scalar(theta: Real, values: Real, offset: ti.i32):
    for _ in range(1):
        values[offset] = theta[0]


class ScalarParameter:
    """θ (a (1,) ndarray with gradient) and ``apply``, which writes a renderer input from
    it. Build with :func:`scalar_parameter`; ``reset`` sets θ₀ from the renderer's state,
    so that ``apply`` at θ₀ changes nothing."""

    def __init__(self, renderer):
        self.renderer = renderer
        self.kind = None
        self.theta = arrays.empty(1, grad=True)
        self.vector = arrays.empty(1, 3)  # direction or axis
        self.base = None
        self.light = 0

    def configure(self, kind: str, direction=(1.0, 0.0, 0.0), light: int = 0, axis=(0, 1, 0)):
        if kind not in PARAMETERS:
            raise UserError(f"unknown parameter {kind!r}; choose one of {', '.join(PARAMETERS)}")
        self.kind = kind
        if kind == "translation":
            self.vector.from_numpy(_finite_vector(direction, "direction")[None])
        elif kind == "light_angle":
            if int(light) != light or not 0 <= light < MAX_DIRECTIONAL:
                raise UserError(f"light must be a directional light index 0..{MAX_DIRECTIONAL - 1}")
            a = _finite_vector(axis, "axis")
            if np.linalg.norm(a) == 0:
                raise UserError("axis must be a non-zero vector")
            self.vector.from_numpy((a / np.linalg.norm(a))[None])
            self.light = int(light)
        self.reset()

    def reset(self) -> None:
        """θ₀ from the renderer: 0 for translation and light_angle (capturing the current
        positions / direction), the current value for a material scalar."""
        r = self.renderer
        theta = 0.0
        if self.kind == "translation":
            self.base = arrays.from_numpy(r.mesh.positions.to_numpy())
        elif self.kind == "light_angle":
            self.base = arrays.from_numpy(r.lights.value("dir_direction")[self.light][None])
        else:
            theta = r.material.value(self.kind)
        self.theta.from_numpy(np.array([theta], dtype=backend.np_real()))

    def apply(self) -> None:
        """Write the renderer input from θ (differentiable; θ's gradient starts from zero
        in each new ``ti.ad.Tape``)."""
        if arrays.new_tape(self):
            arrays.clear_grads(self.theta)
        r = self.renderer
        if self.kind == "translation":
            _translate(self.theta, self.base, self.vector, r.mesh.positions)
        elif self.kind == "light_angle":
            offset = DIR_DIRECTION + 3 * self.light
            _rotate(self.theta, self.base, self.vector, r.lights.values, offset)
        else:
            _set_scalar(self.theta, r.material.values, MATERIAL_LAYOUT.offsets[self.kind])

    def set(self, theta: float) -> None:
        self.theta.from_numpy(np.array([theta], dtype=backend.np_real()))
        self.apply()


def _finite_vector(v, name: str) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    if a.shape != (3,) or not np.all(np.isfinite(a)):
        raise UserError(f"{name} must be 3 finite numbers, got {v}")
    return a


_PARAMETERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def scalar_parameter(renderer, parameter: str = "translation", **options) -> ScalarParameter:
    """The renderer's :class:`ScalarParameter` set to ``parameter`` with ``options``
    (``direction`` for translation; ``light``, ``axis`` for light_angle), reset to θ₀."""
    if renderer.settings.layers != 1:
        raise UserError("derivative images render one layer; build the renderer with layers=1")
    p = _PARAMETERS.get(renderer)
    if p is None:
        p = _PARAMETERS[renderer] = ScalarParameter(renderer)
    p.configure(parameter, **options)
    return p


def derivative_image(renderer, parameter: str = "translation", **options) -> np.ndarray:
    """∂image/∂θ — (H, W, 3), or (B, H, W, 3) for a batch — for the scalar ``parameter``
    (see the module docstring and :func:`scalar_parameter` for ``options``) at the current
    state and visibility. Leaves the renderer's image and inputs as they were."""
    p = scalar_parameter(renderer, parameter, **options)
    theta0 = float(p.theta.to_numpy()[0])
    h = (1e-6 if backend.precision() == "f64" else 1e-3) * max(1.0, abs(theta0))
    renderer.rasterize()
    images = []
    for step in (h, -h):
        p.set(theta0 + step)
        renderer.shade()
        images.append(renderer.result().image.astype(np.float64))
    p.set(theta0)
    renderer.shade()
    return (images[0] - images[1]) / (2.0 * h)
