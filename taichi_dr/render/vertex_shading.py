"""Per-vertex shading (the soft rasterizer shades at the vertices): the radiance leaving
each vertex towards its view's eye, with the same models and lights as the per-pixel
``shading.Shader`` — two-sided, albedo = material base colour × vertex colour.

Array version (issue 13) of ``soft.VertexShader``, for a batch of B views: world
positions and normals (B·V,) vec3 (the vertex stage's outputs), albedo (V,) shared or
(B·V,) per view, eye (B,) vec3, out (B·V,) vec3. Differentiated by Taichi (``ti.ad.Tape``
or the kernel's ``.grad``); inputs passed without gradients get none.

For now the lights and material are the ``Lights`` and ``Material`` field objects that
``shading.surface_radiance`` reads (so the kernel compiles once per such pair).
"""

import taichi as ti

from ..errors import UserError
from .arrays import Vec3
from .shading import MODELS, surface_radiance


@ti.kernel
def _shade_vertices(
    model: ti.template(),
    n: ti.i32,
    vertices: ti.i32,
    world: Vec3,
    normal: Vec3,
    albedo: Vec3,
    batched: ti.template(),
    eye: Vec3,
    lights: ti.template(),
    mat: ti.template(),
    out: Vec3,
    stop: ti.template(),
):
    for i in range(n):
        for field in ti.static(stop):
            ti.stop_grad(field)
        b = i // vertices
        p = world[i]
        v = (eye[b] - p).normalized(1e-12)
        nrm = normal[i].normalized(1e-12)
        nrm = ti.select(nrm.dot(v) < 0.0, -nrm, nrm)
        a = mat.base_color[None] * albedo[i if ti.static(batched) else i - b * vertices]
        color = a
        if ti.static(model == MODELS["normals"]):
            color = nrm * 0.5 + 0.5
        elif ti.static(model != MODELS["unlit"]):
            color = surface_radiance(model, a, nrm, v, p, lights, mat)
        out[i] = color


def shade_vertices(model: str, world, normal, albedo, eye, lights, material, out, stop=()):
    """Shade every vertex of every view into ``out`` (B·V,) vec3: ``model`` as in
    ``shading.MODELS``; ``world``, ``normal`` (B·V,) vec3; ``albedo`` (V,) or (B·V,)
    vec3; ``eye`` (B,) vec3 camera positions; ``lights``/``material``: ``Lights`` and
    ``Material``; ``stop``: their fields that get no gradient."""
    if model not in MODELS:
        raise UserError(f"unknown shading {model!r}; choose one of {', '.join(MODELS)}")
    views, n = int(eye.shape[0]), int(world.shape[0])
    if views < 1 or n % views:
        raise UserError(f"{n} world positions do not split into {views} views of V vertices")
    vertices = n // views
    for name, a in (("normal", normal), ("out", out)):
        if int(a.shape[0]) != n:
            raise UserError(f"{name} has {a.shape[0]} entries; world has {n}")
    if int(albedo.shape[0]) not in (vertices, n):
        raise UserError(
            f"albedo has {albedo.shape[0]} entries; pass {vertices} (shared) or {n} (per view)"
        )
    batched = int(albedo.shape[0]) != vertices
    _shade_vertices(
        MODELS[model],
        n,
        vertices,
        world,
        normal,
        albedo,
        batched,
        eye,
        lights,
        material,
        out,
        tuple(stop),
    )
