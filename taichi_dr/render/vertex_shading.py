"""Per-vertex shading (the soft rasterizer shades at the vertices): the radiance leaving
each vertex towards its view's eye, with the same models, material and lights as the
per-pixel shading (``shading.shade_point``: two-sided, albedo = base colour × vertex
colour).

For a batch of B views: world positions and normals (B·V,) vec3 (the vertex stage's
outputs), albedo (V,) shared or (B·V,) per view, eye (B,) vec3, out (B·V,) vec3.
Differentiated by Taichi (``ti.ad.Tape`` or ``backward=True``); inputs passed without
gradients get none.
"""

import taichi as ti

from ..errors import UserError
from .arrays import Int, Real, Vec3
from .lights import LIGHTS_SIZE
from .shading import MODELS, shade_point


@ti.func
def unit(v):
    """v / |v|, and 0 for v = 0 with a finite gradient there (``normalized`` divides by
    |v| + ε, whose gradient is 0/0 at v = 0: a vertex at the camera centre, a zero
    normal)."""
    n2 = v.dot(v)
    return v / ti.sqrt(ti.select(n2 > 0.0, n2, 1.0))


@ti.kernel
def _shade_vertices(
    model: ti.template(),
    vertices: ti.i32,
    world: Vec3,
    normal: Vec3,
    albedo: Vec3,
    albedo_stride: ti.i32,
    eye: Vec3,
    material: Real,
    lights: Real,
    counts: Int,
    lights_batched: ti.template(),
    out: Vec3,
):
    for i in range(world.shape[0]):
        b = i // vertices
        p = world[i]
        v = unit(eye[b] - p)
        s = b if ti.static(lights_batched) else 0
        color = albedo[i - b * vertices + b * albedo_stride]
        out[i] = shade_point(model, color, unit(normal[i]), v, p, material, lights, counts, s)


def shade_vertices(
    model: str, world, normal, albedo, eye, material, lights, counts, out, backward=False
) -> None:
    """Shade every vertex of every view into ``out`` (B·V,) vec3: ``model`` as in
    ``shading.MODELS``; ``world``, ``normal`` (B·V,) vec3; ``albedo`` (V,) or (B·V,)
    vec3; ``eye`` (B,) vec3 camera positions; packed ``material`` and ``lights`` (one set
    or one per view) with ``counts`` (see ``shading.shade``). ``backward=True`` runs the
    reverse pass."""
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
    kernel = _shade_vertices.grad if backward else _shade_vertices
    kernel(
        MODELS[model],
        vertices,
        world,
        normal,
        albedo,
        0 if int(albedo.shape[0]) == vertices else vertices,
        eye,
        material,
        lights,
        counts,
        int(lights.shape[0]) != LIGHTS_SIZE,
        out,
    )
