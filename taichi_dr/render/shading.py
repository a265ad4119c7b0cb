"""Shading: Lambert, Phong, Blinn-Phong and Cook-Torrance GGX; ambient, directional,
point and SH lights. Differentiable in every material and light parameter.

All models share one convention (see ``lights``): outgoing radiance is
``Σ_lights I · π f_r · cos θ``, so a white Lambertian surface lit head-on by intensity 1
has radiance 1. Per model, with albedo a (base colour × texture × vertex colour):

* lambert:      a · cos θ
* phong:        a · cos θ + ks · max(r·v, 0)^shininess   (r: l mirrored about n)
* blinn-phong:  a · cos θ + ks · max(n·h, 0)^shininess   (h: half vector)
* ggx:          (a(1−metallic) + π D F G / (4 cos θ cos θ_v)) · cos θ, with
  D = α² / (π((n·h)²(α²−1)+1)²), α = roughness², Smith–Schlick G (k = α/2),
  F Schlick with F0 = mix(0.08·specular, a, metallic).

ks is ``specular`` for Phong models. Ambient and the SH environment add a · (ambient +
E_sh/π) (diffuse only). Surfaces are two-sided: normals facing away from the viewer are
flipped. "normals" shows n·½+½ and "unlit" the albedo.
"""

import math

import numpy as np
import taichi as ti

from .. import backend
from ..errors import UserError
from .lights import MAX_DIRECTIONAL, MAX_POINT, sh_irradiance

MODELS = {"lambert": 0, "phong": 1, "blinn-phong": 2, "ggx": 3, "normals": 4, "unlit": 5}


@ti.data_oriented
class Material:
    """Uniform material parameters (fields with gradients)."""

    names = ("base_color", "specular", "shininess", "roughness", "metallic", "opacity")

    def __init__(self):
        real = backend.real()
        self.base_color = ti.Vector.field(3, real, shape=(), **backend.diff())
        self.specular = ti.field(real, shape=(), **backend.diff())
        self.shininess = ti.field(real, shape=(), **backend.diff())
        self.roughness = ti.field(real, shape=(), **backend.diff())
        self.metallic = ti.field(real, shape=(), **backend.diff())
        self.opacity = ti.field(real, shape=(), **backend.diff())
        self.set()

    def set(
        self,
        base_color=(0.8, 0.8, 0.8),
        specular=0.5,
        shininess=32.0,
        roughness=0.5,
        metallic=0.0,
        opacity=1.0,
    ) -> None:
        values = dict(
            base_color=base_color,
            specular=specular,
            shininess=shininess,
            roughness=roughness,
            metallic=metallic,
            opacity=opacity,
        )
        for name, value in values.items():
            if not np.all(np.isfinite(np.asarray(value, dtype=np.float64))):
                raise UserError(f"material {name} must be finite, got {value}")
            getattr(self, name)[None] = value

    def zero_grad(self) -> None:
        backend.zero_grads(*(getattr(self, name) for name in self.names))


@ti.func
def ggx_specular(n: ti.template(), l: ti.template(), v: ti.template(), rough, f0: ti.template()):
    """π · D F G / (4 n·l n·v) for unit n, l, v (n·l > 0, n·v > 0)."""
    h = (l + v).normalized(1e-12)
    nh = ti.max(n.dot(h), 0.0)
    nl = ti.max(n.dot(l), 1e-6)
    nv = ti.max(n.dot(v), 1e-6)
    a = rough * rough
    a2 = ti.max(a * a, 1e-8)
    denom = nh * nh * (a2 - 1.0) + 1.0
    D = a2 / (math.pi * denom * denom)
    k = a / 2.0
    G = nl / (nl * (1.0 - k) + k) * nv / (nv * (1.0 - k) + k)
    vh = ti.max(v.dot(h), 0.0)
    F = f0 + (1.0 - f0) * ti.pow(1.0 - vh, 5.0)
    return math.pi * D * G * F / (4.0 * nl * nv)


@ti.func
def surface_radiance(
    model: ti.template(), albedo, n, v, p, lights: ti.template(), mat: ti.template()
):
    """Radiance leaving point p with unit normal n towards unit view direction v (shared by
    the per-pixel ``Shader`` and the per-vertex shading of the soft rasterizer)."""
    c = albedo * (lights.ambient[None] + sh_irradiance(lights.sh, n))
    ks = mat.specular[None]
    shin = mat.shininess[None]
    rough = mat.roughness[None]
    metal = mat.metallic[None]
    f0 = (1.0 - metal) * 0.08 * ks + metal * albedo
    for i in ti.static(range(MAX_DIRECTIONAL + MAX_POINT)):
        # lights beyond the number set are skipped (a runtime branch: no recompilation)
        used = (
            lights.count[0] > i
            if ti.static(i < MAX_DIRECTIONAL)
            else (lights.count[1] > i - MAX_DIRECTIONAL)
        )
        if used:
            l = ti.Vector([0.0, 0.0, 1.0])
            light = ti.Vector([0.0, 0.0, 0.0])
            if ti.static(i < MAX_DIRECTIONAL):
                l = lights.dir_direction[i].normalized(1e-12)
                light = lights.dir_color[i]
            else:
                d = lights.point_position[i - MAX_DIRECTIONAL] - p
                dist2 = ti.max(d.dot(d), 1e-12)
                l = d / ti.sqrt(dist2)
                light = lights.point_color[i - MAX_DIRECTIONAL] / dist2
            nl = n.dot(l)
            if nl > 0.0:
                if ti.static(model == MODELS["ggx"]):
                    c += light * ((1.0 - metal) * albedo + ggx_specular(n, l, v, rough, f0)) * nl
                else:
                    c += light * albedo * nl
                if ti.static(model == MODELS["phong"]):
                    r = 2.0 * nl * n - l
                    c += light * ks * ti.pow(ti.max(r.dot(v), 1e-12), shin)
                if ti.static(model == MODELS["blinn-phong"]):
                    h = (l + v).normalized(1e-12)
                    c += light * ks * ti.pow(ti.max(n.dot(h), 1e-12), shin)
    return c


@ti.data_oriented
class Shader:
    """Owns ``image`` (H, W, 3) linear radiance, with gradients."""

    def __init__(self, width: int, height: int):
        self.width, self.height = int(width), int(height)
        self.image = ti.Vector.field(3, backend.real(), shape=(height, width), **backend.diff())

    @ti.kernel
    def _shade(
        self,
        model: ti.template(),
        tri: ti.template(),
        position: ti.template(),
        normal: ti.template(),
        color: ti.template(),
        uv: ti.template(),
        footprint: ti.template(),
        textured: ti.template(),
        texture: ti.template(),
        eye: ti.template(),
        lights: ti.template(),
        mat: ti.template(),
        stop: ti.template(),
    ):
        for y, x in self.image:
            for field in ti.static(stop):
                ti.stop_grad(field)
            out = ti.Vector([0.0, 0.0, 0.0])
            if tri[y, x] >= 0:
                p = position[y, x]
                v = (eye[None] - p).normalized(1e-12)
                n0 = normal[y, x].normalized(1e-12)
                n = n0 * ti.select(n0.dot(v) < 0.0, -1.0, 1.0)  # two-sided
                albedo = mat.base_color[None] * color[y, x]
                if ti.static(textured):
                    albedo *= texture.sample(uv[y, x], footprint[y, x])
                if ti.static(model == MODELS["normals"]):
                    out = n * 0.5 + 0.5
                elif ti.static(model == MODELS["unlit"]):
                    out = albedo
                else:
                    out = surface_radiance(model, albedo, n, v, p, lights, mat)
            self.image[y, x] = out

    def forward(
        self,
        model: str,
        tri,
        position,
        normal,
        color,
        uv,
        footprint,
        texture,
        eye,
        lights,
        material,
        stop=(),
    ) -> None:
        """Shade every covered pixel; ``stop``: input fields that get no gradient."""
        if model not in MODELS:
            raise UserError(f"unknown shading {model!r}; choose one of {', '.join(MODELS)}")
        textured = texture is not None
        self._shade(
            MODELS[model],
            tri,
            position,
            normal,
            color,
            uv,
            footprint,
            textured,
            texture if textured else 0,
            eye,
            lights,
            material,
            stop,
        )

    def zero_grad(self) -> None:
        self.image.grad.fill(0)
