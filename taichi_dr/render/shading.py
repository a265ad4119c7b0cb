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

Array version (issue 13, compile once): ``Material`` (the material as one packed
array, ``MATERIAL_LAYOUT``), the ``ti.func`` s ``radiance`` and ``shade_point`` over
packed material and lights (per-pixel and per-vertex shading share them), and ``shade``,
one kernel over the B·H·W pixels of a batch. ``shade_surface`` is the renderer's fused
pass: interpolation, texture, shading and compositing over the background in one kernel
per pixel, from the triangle ids to the image (no per-pixel intermediates are stored;
the backward pass recomputes them).
"""

import math
import weakref

import numpy as np
import taichi as ti

from .. import backend
from ..errors import UserError
from . import arrays
from .arrays import Int, IVec3, Real, Vec2, Vec3, Vec4
from .interpolate import lerp, perspective_barycentrics, uv_footprint, vertex_stride
from .lights import (
    AMBIENT,
    DIR_COLOR,
    DIR_DIRECTION,
    LIGHTS_SIZE,
    MAX_DIRECTIONAL,
    MAX_POINT,
    POINT_COLOR,
    POINT_POSITION,
    SH,
    sh_irradiance_at,
)
from .packed import Layout, Packed
from .texture import FILTERS, WRAPS, Sampler, sample

MODELS = {"lambert": 0, "phong": 1, "blinn-phong": 2, "ggx": 3, "normals": 4, "unlit": 5}


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
def reflected(
    model: ti.template(), albedo, n, l, v, ks, shininess, rough, metal, f0: ti.template()
):
    """π f_r · cos θ of ``model`` for unit normal n, light direction l and view direction
    v; 0 when the light is behind the surface (shared by every shading kernel)."""
    nl = n.dot(l)
    out = albedo * nl
    if ti.static(model == MODELS["ggx"]):
        out = ((1.0 - metal) * albedo + ggx_specular(n, l, v, rough, f0)) * nl
    if ti.static(model == MODELS["phong"]):
        r = 2.0 * nl * n - l
        out += ks * ti.pow(ti.max(r.dot(v), 1e-12), shininess)
    if ti.static(model == MODELS["blinn-phong"]):
        h = (l + v).normalized(1e-12)
        out += ks * ti.pow(ti.max(n.dot(h), 1e-12), shininess)
    return ti.select(nl > 0.0, out, 0.0)


MATERIAL_LAYOUT = Layout(
    ("base_color", (3,)),
    ("specular", ()),
    ("shininess", ()),
    ("roughness", ()),
    ("metallic", ()),
    ("opacity", ()),
)
"""The packed material: 8 reals, base_color 0..2, specular 3, shininess 4, roughness 5,
metallic 6, opacity 7."""
MATERIAL_SIZE = MATERIAL_LAYOUT.size
BASE_COLOR, SPECULAR, SHININESS, ROUGHNESS, METALLIC, OPACITY = (
    MATERIAL_LAYOUT.offsets[n] for n in MATERIAL_LAYOUT.names
)
_UNIT = ("roughness", "metallic", "opacity")


class Material(Packed):
    """The uniform material as one packed array ``values`` (``MATERIAL_SIZE`` reals, with
    gradients; layout ``MATERIAL_LAYOUT``). Parameters: ``base_color`` (3,) ≥ 0 (a scalar
    means grey), ``specular`` ≥ 0 (Phong ks; GGX F0 = 0.08·specular for dielectrics),
    ``shininess`` ≥ 0 (Phong exponent), ``roughness``, ``metallic`` and ``opacity`` in
    [0, 1]. ``set`` changes the named ones; ``reset(**values)`` starts from the defaults
    (what ``Material.set`` did)."""

    layout = MATERIAL_LAYOUT
    defaults = dict(
        base_color=(0.8, 0.8, 0.8),
        specular=0.5,
        shininess=32.0,
        roughness=0.5,
        metallic=0.0,
        opacity=1.0,
    )
    kind = "material"

    def check(self, values: dict) -> dict:
        values = super().check(values)
        for name, v in values.items():
            if np.any(v < 0) or (name in _UNIT and np.any(v > 1)):
                bound = "in [0, 1]" if name in _UNIT else "≥ 0"
                raise UserError(f"material {name} must be {bound}, got {v.tolist()}")
        return values


@ti.func
def sh_in_use(lights: ti.template(), s):
    """1 when a coefficient of light set s's SH environment is not 0, else 0 (adding a
    zero environment changes no colour, but its coefficients' gradients need the term)."""
    o = s * LIGHTS_SIZE + SH
    used = 0
    for k in ti.static(range(27)):
        used |= ti.cast(lights[o + k] != 0.0, ti.i32)  # Python's ``or`` would branch
    return used


ALL_SLOTS = (MAX_DIRECTIONAL, MAX_POINT, False, True)
"""The lights a shading kernel compiles: (directional slots, point slots, exact, SH).
Every slot, each skipped at run time beyond the light set's count, and the SH environment
(compiled once); or with ``exact`` True exactly the first slots, which every set uses, and
the SH term only where ``SH`` is True (compiled per count: no branches, whose reverse pass
Taichi makes slow)."""


def light_slots(lights, light_counts) -> tuple:
    """The exact lights (see ``ALL_SLOTS``) of packed ``lights`` and ``light_counts``:
    the SH term where a coefficient is not 0 or ``lights`` has gradients; every slot when
    the sets' counts differ."""
    counts = arrays.read(light_counts).reshape(-1, 2)
    if (counts != counts[0]).any():
        return ALL_SLOTS
    sh = getattr(lights, "grad", None) is not None
    sh = sh or bool(arrays.read(lights).reshape(-1, LIGHTS_SIZE)[:, SH : SH + 27].any())
    return (int(counts[0, 0]), int(counts[0, 1]), True, sh)


def _slot(i: int) -> tuple:
    """Light slot i as (kind, index): (0, i) directional, then (1, i − 4) point."""
    return (0, i) if i < MAX_DIRECTIONAL else (1, i - MAX_DIRECTIONAL)


@ti.func
def _light(
    model: ti.template(),
    i: ti.template(),
    albedo,
    n,
    v,
    p,
    lights: ti.template(),
    o,
    f0,
    material: ti.template(),
):
    """The light reflected from light slot i (directional, then point) of the set at
    ``lights[o]``."""
    l = ti.Vector([0.0, 0.0, 1.0])
    light = ti.Vector([0.0, 0.0, 0.0])
    if ti.static(i < MAX_DIRECTIONAL):
        l = arrays.vec3_at(lights, o + DIR_DIRECTION + 3 * i).normalized(1e-12)
        light = arrays.vec3_at(lights, o + DIR_COLOR + 3 * i)
    else:
        j = 3 * (i - MAX_DIRECTIONAL)
        d = arrays.vec3_at(lights, o + POINT_POSITION + j) - p
        dist2 = ti.max(d.dot(d), 1e-12)
        l = d / ti.sqrt(dist2)
        light = arrays.vec3_at(lights, o + POINT_COLOR + j) / dist2
    ks, shin = material[SPECULAR], material[SHININESS]
    rough, metal = material[ROUGHNESS], material[METALLIC]
    return light * reflected(model, albedo, n, l, v, ks, shin, rough, metal, f0)


@ti.func
def _radiance(
    model: ti.template(),
    albedo,
    n,
    v,
    p,
    material: ti.template(),
    lights: ti.template(),
    counts: ti.template(),
    s,
    sh,
    slots: ti.template(),
):
    """``radiance``, with the SH environment only where ``sh`` is not 0, over the light
    ``slots`` (see ``ALL_SLOTS``)."""
    o = s * LIGHTS_SIZE
    ambient = arrays.vec3_at(lights, o + AMBIENT)
    if ti.static(slots[3]):
        if sh != 0:
            ambient = ambient + sh_irradiance_at(lights, o + SH, n)
    c = albedo * ambient
    metal = material[METALLIC]
    f0 = (1.0 - metal) * 0.08 * material[SPECULAR] + metal * albedo
    for i in ti.static(range(MAX_DIRECTIONAL + MAX_POINT)):
        kind, slot = ti.static(_slot(i))
        if ti.static(slot < slots[kind]):
            if ti.static(slots[2]):
                c += _light(model, i, albedo, n, v, p, lights, o, f0, material)
            elif counts[2 * s + kind] > slot:  # beyond the set's count: skipped at run time
                c += _light(model, i, albedo, n, v, p, lights, o, f0, material)
    return c


@ti.func
def radiance(
    model: ti.template(),
    albedo,
    n,
    v,
    p,
    material: ti.template(),
    lights: ti.template(),
    counts: ti.template(),
    s,
):
    """Radiance leaving point p with unit normal n towards unit view direction v under
    light set ``s`` (packed ``lights``, ``counts``) with the packed ``material``; albedo
    includes the base colour. Shared by the per-pixel and the per-vertex shading."""
    return _radiance(model, albedo, n, v, p, material, lights, counts, s, 1, ALL_SLOTS)


@ti.func
def _shade_point(
    model: ti.template(),
    color,
    n,
    v,
    p,
    material: ti.template(),
    lights: ti.template(),
    counts: ti.template(),
    s,
    sh,
    slots: ti.template(),
):
    """``shade_point``, with the SH environment only where ``sh`` is not 0, over the
    light ``slots`` (see ``ALL_SLOTS``)."""
    n = n * ti.select(n.dot(v) < 0.0, -1.0, 1.0)
    albedo = arrays.vec3_at(material, BASE_COLOR) * color
    out = albedo
    if ti.static(model == MODELS["normals"]):
        out = n * 0.5 + 0.5
    elif ti.static(model != MODELS["unlit"]):
        out = _radiance(model, albedo, n, v, p, material, lights, counts, s, sh, slots)
    return out


@ti.func
def shade_point(
    model: ti.template(),
    color,
    n,
    v,
    p,
    material: ti.template(),
    lights: ti.template(),
    counts: ti.template(),
    s,
):
    """The colour of ``model`` at point p: ``color`` (vertex colour × texture) times the
    base colour lit by ``radiance``, or the normal / albedo views; n is flipped towards
    v (two-sided)."""
    return _shade_point(model, color, n, v, p, material, lights, counts, s, 1, ALL_SLOTS)


@ti.kernel
def _shade(
    model: ti.template(),
    textured: ti.template(),
    filter: ti.template(),
    wrap: ti.template(),
    batched: ti.template(),
    pixels_per_view: ti.i32,
    tri: Int,
    position: Vec3,
    normal: Vec3,
    color: Vec3,
    uv: Vec2,
    footprint: Real,
    eye: Vec3,
    material: Real,
    lights: Real,
    counts: Int,
    texels: Vec3,
    levels: IVec3,
    image: Vec3,
):
    for i in range(image.shape[0]):
        out = ti.Vector([0.0, 0.0, 0.0])
        if tri[i] >= 0:
            b = i // pixels_per_view
            p = position[i]
            v = (eye[b] - p).normalized(1e-12)
            c = color[i]
            if ti.static(textured):
                c *= sample(texels, levels, filter, wrap, uv[i], footprint[i])
            s = 0
            if ti.static(batched):
                s = b
            n = normal[i].normalized(1e-12)
            out = shade_point(model, c, n, v, p, material, lights, counts, s)
        image[i] = out


_CACHE: dict = {}  # name → (weak reference to the Taichi program, arrays)


def _cached(name: str, make):
    """Arrays ``make()`` kept per Taichi program (made again when Taichi was restarted,
    which frees every ndarray)."""
    prog = ti.lang.impl.get_runtime().prog
    ref, value = _CACHE.get(name, (lambda: None, None))
    if ref() is not prog:
        value = make()
        _CACHE[name] = (weakref.ref(prog), value)
    return value


def _dummies():
    """Length-1 placeholders for the texture inputs of an untextured call."""
    return _cached(
        "dummies",
        lambda: (
            arrays.empty(1, 2),
            arrays.empty(1),
            arrays.empty(1, 3),
            arrays.from_numpy(np.ones((1, 3)), dtype=ti.i32),
        ),
    )


def _sh_used(sets: int):
    """Scratch for the pixel pass's per-light-set SH flags: (sets,) int32."""
    return _cached(f"sh_used{sets}", lambda: arrays.empty(sets, dtype=ti.i32))


def _require(name: str, array, n: int) -> None:
    if array.shape[0] != n:
        raise UserError(f"shade: {name} has {array.shape[0]} entries, expected {n}")


def _lights_batched(lights, light_counts, views: int) -> bool:
    """Whether ``lights`` holds one set per view (else one shared set); checks the sizes."""
    if lights.shape[0] not in (LIGHTS_SIZE, views * LIGHTS_SIZE):
        raise UserError(
            f"shade: lights has {lights.shape[0]} entries; pass one set ({LIGHTS_SIZE}) "
            f"or one per view ({views} × {LIGHTS_SIZE})"
        )
    batched = lights.shape[0] != LIGHTS_SIZE
    _require("light_counts", light_counts, 2 * (views if batched else 1))
    return batched


def shade(
    model: str,
    frame: arrays.Frame,
    triangle_id,
    position,
    normal,
    color,
    uv,
    footprint,
    eye,
    material,
    lights,
    light_counts,
    texture: Sampler | None,
    image,
    backward: bool = False,
) -> None:
    """Shade the N = B·H·W pixels of ``frame`` into ``image`` (N,) vec3 (0 where
    ``triangle_id`` (N,) is −1).

    Per pixel (N,): world ``position``, ``normal`` (any length), ``color`` (vertex
    colour) vec3, ``uv`` vec2 and ``footprint`` (uv units per pixel; both unused, may be
    None, without ``texture``). ``eye`` (B,) vec3: each view's camera position.
    ``material`` (MATERIAL_SIZE,) and ``lights`` (LIGHTS_SIZE,) shared or
    (B·LIGHTS_SIZE,) one set per view, with ``light_counts`` (2,) / (2B,) int32.
    ``texture``: a ``Sampler`` multiplying the albedo, or None. ``model`` ∈ MODELS.
    Differentiable in every real input that carries gradients: ``backward=True`` adds
    ``image.grad`` through the shading into their gradients (as ``ti.ad.Tape`` would)."""
    if model not in MODELS:
        raise UserError(f"unknown shading {model!r}; choose one of {', '.join(MODELS)}")
    n, views = frame.pixels, frame.views
    for name, a in (
        ("triangle_id", triangle_id),
        ("position", position),
        ("normal", normal),
        ("color", color),
        ("image", image),
    ):
        _require(name, a, n)
    _require("eye", eye, views)
    _require("material", material, MATERIAL_SIZE)
    batched = _lights_batched(lights, light_counts, views)
    if texture is None:
        uv_, footprint_, texels, levels = _dummies()
        uv, footprint = uv_ if uv is None else uv, footprint_ if footprint is None else footprint
        statics = (False, 0, 0)
    else:
        _require("uv", uv, n)
        _require("footprint", footprint, n)
        texels, levels = texture.texels, texture.levels
        statics = (True, FILTERS.index(texture.filter), WRAPS.index(texture.wrap))
    kernel = _shade.grad if backward else _shade
    kernel(
        MODELS[model],
        *statics,
        batched,
        frame.height * frame.width,
        triangle_id,
        position,
        normal,
        color,
        uv,
        footprint,
        eye,
        material,
        lights,
        light_counts,
        texels,
        levels,
        image,
    )


@ti.func
def _surface(
    model: ti.template(),
    textured: ti.template(),
    filter: ti.template(),
    wrap: ti.template(),
    t,
    b,
    ndc,
    height,
    width,
    n_vertices,
    colors_stride,
    uvs_stride,
    clip: ti.template(),
    faces: ti.template(),
    world: ti.template(),
    normal: ti.template(),
    colors: ti.template(),
    uvs: ti.template(),
    eye,
    material: ti.template(),
    lights: ti.template(),
    counts: ti.template(),
    s,
    sh,
    texels: ti.template(),
    levels: ti.template(),
    slots: ti.template(),
):
    """The shaded colour of face t ≥ 0 of view b at NDC point ``ndc`` (a pixel centre,
    ``height`` × ``width`` pixels): interpolation, texture and ``_shade_point`` with light
    set s (SH environment where ``sh`` is not 0)."""
    f = faces[t]
    base = b * n_vertices
    c0, c1, c2 = clip[base + f[0]], clip[base + f[1]], clip[base + f[2]]
    lam = perspective_barycentrics(c0, c1, c2, ndc)
    p = lerp(lam, world, base, f)
    c = lerp(lam, colors, b * colors_stride, f)
    if ti.static(textured):
        uv = lerp(lam, uvs, b * uvs_stride, f)
        size = uv_footprint(c0, c1, c2, ndc, uv, uvs, b * uvs_stride, f, height, width)
        c *= sample(texels, levels, filter, wrap, uv, size)
    v = (eye - p).normalized(1e-12)
    n = lerp(lam, normal, base, f).normalized(1e-12)
    return _shade_point(model, c, n, v, p, material, lights, counts, s, sh, slots)


@ti.kernel
def _shade_surface(
    model: ti.template(),
    textured: ti.template(),
    filter: ti.template(),
    wrap: ti.template(),
    batched: ti.template(),
    views: ti.i32,
    height: ti.i32,
    width: ti.i32,
    n_vertices: ti.i32,
    colors_stride: ti.i32,
    uvs_stride: ti.i32,
    tri: Int,
    clip: Vec4,
    faces: IVec3,
    world: Vec3,
    normal: Vec3,
    colors: Vec3,
    uvs: Vec2,
    eye: Vec3,
    material: Real,
    lights: Real,
    counts: Int,
    texels: Vec3,
    levels: IVec3,
    background: Vec3,
    image: Vec3,
    alpha: Real,
    sh_used: Int,
    forward: ti.template(),
    slots: ti.template(),
    serial: ti.template(),
):
    """One flat loop over the pixels; differentiable (Taichi's reverse mode) with
    ``forward`` False; ``serial``: on one thread (the reverse's gradient adds are then
    plain adds, not atomic). ``forward``: skip the SH term where its coefficients are all 0
    (``sh_used`` (sets,): scratch, filled first, one flag per light set; testing the 27
    coefficients at every pixel cost 10–15 % of the pass).
    No local is assigned on both sides of a runtime branch (nor in ``reflected``): Taichi's
    reverse pass keeps such locals on its autodiff stacks, which made it 1.4× slower."""
    if ti.static(forward):
        for s in range(sh_used.shape[0]):  # once per light set, not per pixel
            sh_used[s] = sh_in_use(lights, s)
    ti.loop_config(serialize=serial)
    for i in range(tri.shape[0]):
        t = tri[i]
        bg = background[ti.select(background.shape[0] == 1, 0, i)]
        if t >= 0:
            b, y, x = arrays.pixel(i, height, width)
            s = b if ti.static(batched) else 0
            sh = sh_used[s] if ti.static(forward) else 1
            out = _surface(
                model, textured, filter, wrap, t, b, arrays.pixel_ndc(y, x, height, width),
                height, width, n_vertices, colors_stride, uvs_stride, clip, faces, world,
                normal, colors, uvs, eye[b], material, lights, counts, s, sh, texels, levels,
                slots,
            )  # fmt: skip
            a = material[OPACITY]
            image[i] = a * out + (1.0 - a) * bg
            alpha[i] = a
        else:
            image[i] = bg
            alpha[i] = 0.0


@ti.ad.grad_replaced
def _shade_pixels(args: tuple, lights, light_counts) -> None:
    _shade_surface(*args, True, ALL_SLOTS, False)


@ti.ad.grad_for(_shade_pixels)
def _shade_pixels_grad(args: tuple, lights, light_counts) -> None:
    """The reverse pass, compiled for the lights in use (see ``ALL_SLOTS``); on one thread
    where the CPU has one, or where an input that every pixel reads (eye, material,
    lights, one background colour) has gradients: its ~30 gradient adds per pixel are
    then plain adds (an atomic add costs ~4.5 ns on the CPU; threads adding to the same
    few addresses contend). Measured at 512², 1 thread: −13 % (positions), −41 % (every
    group); 2 threads, every group: 80 → 53–64 ms an antialias step (81,920 faces)."""
    eye, material, background = args[18], args[19], args[24]
    shared = (eye, material, lights, *([background] if background.shape[0] == 1 else []))
    serial = backend.current_arch() == "cpu" and (
        ti.lang.impl.current_cfg().cpu_max_num_threads == 1
        or any(getattr(a, "grad", None) is not None for a in shared)
    )
    _shade_surface.grad(*args, False, light_slots(lights, light_counts), serial)


def shade_surface(
    model: str,
    frame: arrays.Frame,
    triangle_id,
    clip,
    faces,
    n_vertices: int,
    vertex,
    eye,
    material,
    lights,
    light_counts,
    texture: Sampler | None,
    background,
    image,
    alpha,
    backward: bool = False,
) -> None:
    """The renderer's pixel pass in one kernel: for the N = B·H·W pixels of ``frame``,
    interpolate the surface of face ``triangle_id`` (N,) (as ``interpolate.surface`` and
    ``interpolate.footprint``, from ``clip`` (B·V,) vec4, ``faces`` and ``vertex`` =
    (world (B·V,), normal (B·V,), colors, uvs), colours and uvs (V,) or (B·V,)), shade
    it (as :func:`shade`) and composite it over ``background`` (as
    ``blend.composite``): ``image`` (N,) vec3 and ``alpha`` (N,) = opacity where covered,
    else 0. ``background``: one colour (1,) vec3 or one per pixel (N,). Differentiable in
    every real input that carries gradients (``backward=True``: the reverse pass, which
    recomputes the interpolation instead of reading stored intermediates)."""
    if model not in MODELS:
        raise UserError(f"unknown shading {model!r}; choose one of {', '.join(MODELS)}")
    n, views = frame.pixels, frame.views
    for name, a in (("triangle_id", triangle_id), ("image", image), ("alpha", alpha)):
        _require(name, a, n)
    if background.shape[0] not in (1, n):
        raise UserError(
            f"shade_surface: background must be one colour (1,) or one per pixel ({n},), "
            f"got {background.shape[0]}"
        )
    _require("eye", eye, views)
    _require("material", material, MATERIAL_SIZE)
    batched = _lights_batched(lights, light_counts, views)
    world, normal, colors, uvs = vertex
    if texture is None:
        texels, levels = _dummies()[2:]
        statics = (False, 0, 0)
    else:
        texels, levels = texture.texels, texture.levels
        statics = (True, FILTERS.index(texture.filter), WRAPS.index(texture.wrap))
    args = (
        MODELS[model],
        *statics,
        batched,
        views,
        frame.height,
        frame.width,
        n_vertices,
        vertex_stride(colors, frame, n_vertices),
        vertex_stride(uvs, frame, n_vertices),
        triangle_id,
        clip,
        faces,
        world,
        normal,
        colors,
        uvs,
        eye,
        material,
        lights,
        light_counts,
        texels,
        levels,
        background,
        image,
        alpha,
        _sh_used(lights.shape[0] // LIGHTS_SIZE),
    )
    (_shade_pixels.grad if backward else _shade_pixels)(args, lights, light_counts)
