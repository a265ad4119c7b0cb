"""The splatting pipeline on host arrays: validate → project (+ SH) → bin → composite, and
its backward pass. Arrays are NumPy arrays or torch tensors (outputs and scratch of the
same kind and device, :mod:`taichi_dr.arrays`); no autograd here — :func:`render` returns a
:class:`Render` whose :meth:`Render.backward` maps output gradients to input gradients.
"""

from dataclasses import dataclass, field

import numpy as np
import taichi as ti

from .. import arrays, backend
from ..camera import check_resolution
from ..errors import UserError
from . import project, raster

MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
ED_EPS = 1e-10  # expected depth = accumulated depth / max(alpha, ED_EPS), as gsplat


# ------------------------------------------------------------------------ validation
@ti.kernel
def _count_bad(
    means: ti.types.ndarray(ndim=2),
    quats: ti.types.ndarray(ndim=2),
    scales: ti.types.ndarray(ndim=2),
    opacities: ti.types.ndarray(ndim=1),
    colors: ti.types.ndarray(ndim=2),
    viewmats: ti.types.ndarray(ndim=3),
    Ks: ti.types.ndarray(ndim=3),
    bad: ti.types.ndarray(dtype=ti.i32, ndim=1),
):
    """bad[:6] += (non-finite Gaussian values, zero quaternions, scales ≤ 0, opacities
    outside [0, 1], non-finite colours, non-finite cameras)."""
    for g in range(means.shape[0]):
        q2 = 0.0
        for k in ti.static(range(3)):
            x = means[g, k]
            s = scales[g, k]
            if ti.math.isnan(x) or ti.math.isinf(x) or ti.math.isnan(s) or ti.math.isinf(s):
                ti.atomic_add(bad[0], 1)
            if s <= 0:
                ti.atomic_add(bad[2], 1)
        for k in ti.static(range(4)):
            x = quats[g, k]
            if ti.math.isnan(x) or ti.math.isinf(x):
                ti.atomic_add(bad[0], 1)
            q2 += x * x
        if q2 == 0:
            ti.atomic_add(bad[1], 1)
        o = opacities[g]
        if ti.math.isnan(o) or not (0 <= o and o <= 1):
            ti.atomic_add(bad[3], 1)
    for r, k in ti.ndrange(colors.shape[0], colors.shape[1]):
        if ti.math.isnan(colors[r, k]) or ti.math.isinf(colors[r, k]):
            ti.atomic_add(bad[4], 1)
    for c, r, k in ti.ndrange(viewmats.shape[0], 4, 4):
        x = viewmats[c, r, k]
        if ti.math.isnan(x) or ti.math.isinf(x):
            ti.atomic_add(bad[5], 1)
    for c, r, k in ti.ndrange(Ks.shape[0], 3, 3):
        x = Ks[c, r, k]
        if ti.math.isnan(x) or ti.math.isinf(x):
            ti.atomic_add(bad[5], 1)


def _shape(a):
    return tuple(int(s) for s in a.shape)


def _cast(a, dtype, like):
    """``a`` as a contiguous array of ``dtype`` of the kind of ``like``."""
    if arrays.is_torch(like):
        torch = arrays._torch()
        a = a if arrays.is_torch(a) else torch.as_tensor(np.asarray(a))
        dtype = getattr(torch, np.dtype(dtype).name)
        return a.detach().to(device=like.device, dtype=dtype).contiguous()
    return np.ascontiguousarray(arrays.to_numpy(a), dtype=dtype)


def _rows(a):
    """``a`` (n, ...) as a 2-D (n, m) view."""
    shape = _shape(a)
    return a.reshape(shape[0], int(np.prod(shape[1:])))


def _contiguous(a):
    return a.contiguous() if arrays.is_torch(a) else np.ascontiguousarray(a)


@dataclass
class Inputs:
    """Validated inputs in the backend's float precision (see :func:`render`)."""

    means: object
    quats: object
    scales: object
    opacities: object
    colors: object  # (N, Dc), (C·N, Dc) or SH (N, K, 3)
    viewmats: object
    Ks: object
    backgrounds: object  # (C, D) incl. a 0 for the depth channel
    width: int
    height: int
    near_plane: float
    far_plane: float
    eps2d: float
    sh_degree: int | None
    render_mode: str
    colors_shape: tuple = ()
    per_camera_colors: bool = False
    dtype: object = None

    @property
    def N(self) -> int:
        return _shape(self.means)[0]

    @property
    def C(self) -> int:
        return _shape(self.viewmats)[0]

    @property
    def color_channels(self) -> int:
        """Colour channels composited (0 in the depth-only modes)."""
        if self.render_mode in ("D", "ED"):
            return 0
        return 3 if self.sh_degree is not None else self.colors_shape[-1]

    @property
    def with_depth(self) -> bool:
        return "D" in self.render_mode

    @property
    def D(self) -> int:
        return self.color_channels + int(self.with_depth)


def check_inputs(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height,
    near_plane=0.01, far_plane=1e10, eps2d=0.3, sh_degree=None, backgrounds=None,
    render_mode="RGB",
) -> Inputs:  # fmt: skip
    """Shapes, values and settings checked with one-line :class:`UserError`\\ s; arrays
    converted to the backend precision (kind and device kept)."""
    backend.ensure_init()
    dtype = backend.np_real()
    like = means
    if render_mode not in MODES:
        raise UserError(f"unknown render_mode {render_mode!r}; choose one of {', '.join(MODES)}")
    check_resolution(int(width), int(height))
    if not (near_plane > 0 and far_plane > near_plane):
        raise UserError(
            f"need 0 < near_plane < far_plane, got {near_plane} and {far_plane}"
        )  # fmt: skip
    if not (eps2d >= 0 and np.isfinite(eps2d)):
        raise UserError(f"eps2d must be a finite number ≥ 0, got {eps2d}")
    expect = {"means": 3, "quats": 4, "scales": 3}
    N = _shape(means)[0] if len(_shape(means)) == 2 else -1
    for name, a in (("means", means), ("quats", quats), ("scales", scales)):
        if _shape(a) != (N, expect[name]) or N < 0:
            raise UserError(
                f"{name} must have shape (N, {expect[name]}) with N = len(means); got "
                f"{_shape(a)} (means {_shape(means)})"
            )
    if _shape(opacities) != (N,):
        raise UserError(f"opacities must have shape (N,) = ({N},), got {_shape(opacities)}")
    if len(_shape(viewmats)) != 3 or _shape(viewmats)[1:] != (4, 4):
        raise UserError(f"viewmats must have shape (C, 4, 4), got {_shape(viewmats)}")
    C = _shape(viewmats)[0]
    if C < 1:
        raise UserError("viewmats holds no camera; pass at least one (C ≥ 1)")
    if _shape(Ks) != (C, 3, 3):
        raise UserError(f"Ks must have shape (C, 3, 3) = ({C}, 3, 3), got {_shape(Ks)}")
    cs = _shape(colors)
    per_camera = False
    if sh_degree is not None:
        if int(sh_degree) != sh_degree or not 0 <= sh_degree <= 3:
            raise UserError(f"sh_degree must be 0, 1, 2 or 3, got {sh_degree}")
        sh_degree = int(sh_degree)
        K = cs[1] if len(cs) == 3 else -1
        if len(cs) != 3 or cs[0] != N or cs[2] != 3 or round(K**0.5) ** 2 != K or K > 16:
            raise UserError(
                f"SH colors must have shape (N, K, 3) with K in 1, 4, 9, 16 coefficients; "
                f"got {cs} (N = {N})"
            )
        if K < (sh_degree + 1) ** 2:
            raise UserError(
                f"sh_degree {sh_degree} needs {(sh_degree + 1) ** 2} SH coefficients, colors "
                f"has {K}"
            )
    elif len(cs) == 2 and cs[0] == N and cs[1] >= 1:
        pass
    elif len(cs) == 3 and cs[:2] == (C, N) and cs[2] >= 1:
        per_camera = True
    else:
        raise UserError(
            f"colors must have shape (N, D) or (C, N, D) (or SH (N, K, 3) with sh_degree); "
            f"got {cs} with N = {N}, C = {C}"
        )
    inp = Inputs(
        *(_cast(a, dtype, like) for a in (means, quats, scales, opacities, colors, viewmats, Ks)),
        None, int(width), int(height), float(near_plane), float(far_plane), float(eps2d),
        sh_degree, render_mode, cs, per_camera, dtype,
    )  # fmt: skip
    if per_camera:
        inp.colors = inp.colors.reshape(C * N, cs[2])
    colors2d = _rows(inp.colors)
    bad = arrays.zeros(inp.means, (6,), "i32")
    _count_bad(inp.means, inp.quats, inp.scales, inp.opacities, colors2d, inp.viewmats, inp.Ks, bad)
    messages = (
        "means, quats or scales contain NaN or inf",
        "quaternions of zero length have no rotation; give every Gaussian a nonzero quat",
        "scales must be > 0 (linear, not log); exponentiate log-scales first",
        "opacities must lie in [0, 1] (not logits); apply a sigmoid first",
        "colors contain NaN or inf",
        "viewmats or Ks contain NaN or inf",
    )
    for count, message in zip((int(b) for b in arrays.to_numpy(bad)), messages):
        if count:
            raise UserError(f"{message} ({count} bad value{'s' * (count > 1)})")
    K = arrays.to_numpy(inp.Ks)
    if np.any(K[:, 0, 1] != 0) or np.any(K[:, 1, 0] != 0) or np.any(K[:, 2] != [0, 0, 1]):
        raise UserError("Ks must be pinhole matrices [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]")
    if np.any(K[:, 0, 0] <= 0) or np.any(K[:, 1, 1] <= 0):
        raise UserError("Ks must have positive focal lengths fx, fy")
    Dc = inp.color_channels
    bg = np.zeros((C, inp.D), dtype)
    if backgrounds is not None and Dc:  # depth-only modes have no background
        b = arrays.to_numpy(backgrounds)
        if b.shape != (C, Dc):
            raise UserError(f"backgrounds must have shape (C, D) = ({C}, {Dc}), got {b.shape}")
        if not np.all(np.isfinite(b)):
            raise UserError("backgrounds contain NaN or inf")
        bg[:, :Dc] = b[:, :Dc]
    inp.backgrounds = _cast(bg, dtype, like)
    return inp


# ------------------------------------------------------------------------ features
@ti.kernel
def _assemble(
    colors: ti.types.ndarray(ndim=2),
    per_camera: ti.i32,
    Dc: ti.i32,
    depths: ti.types.ndarray(ndim=1),
    with_depth: ti.i32,
    N: ti.i32,
    feats: ti.types.ndarray(ndim=2),
):
    """feats[i] = (colour of record i (Dc), its depth if ``with_depth``), every entry
    written (a GPU backend uploads no array a kernel only writes)."""
    for i in range(feats.shape[0]):
        row = i if per_camera else i % N
        for ch in range(Dc):
            feats[i, ch] = colors[row, ch]
        if with_depth:
            feats[i, Dc] = depths[i]


@ti.kernel
def _split_grads(
    g_feats: ti.types.ndarray(ndim=2),
    per_camera: ti.i32,
    Dc: ti.i32,
    with_colors: ti.i32,
    with_depth: ti.i32,
    C: ti.i32,
    g_colors: ti.types.ndarray(ndim=2),
    g_depths: ti.types.ndarray(ndim=1),
):
    """g_colors (rows of direct ``colors``; summed over cameras when shared; only
    ``with_colors``) and g_depths (channel Dc)."""
    N = g_feats.shape[0] // C
    for r in range(g_colors.shape[0]):
        for ch in range(Dc * with_colors):
            s = 0.0
            if per_camera:
                s = g_feats[r, ch]
            else:
                for c in range(C):
                    s += g_feats[c * N + r, ch]
            g_colors[r, ch] = s
    for i in range(g_feats.shape[0]):
        g_depths[i] = g_feats[i, Dc] if with_depth else 0.0


@ti.kernel
def _finish(
    out: ti.types.ndarray(ndim=1),
    trans: ti.types.ndarray(ndim=1),
    D: ti.i32,
    expected_depth: ti.i32,
    alphas: ti.types.ndarray(ndim=1),
):
    """alphas = 1 − T_final; with ``expected_depth`` the last channel ÷ max(alpha, ε)."""
    for p in range(trans.shape[0]):
        a = 1.0 - trans[p]
        alphas[p] = a
        if expected_depth:
            out[p * D + D - 1] = out[p * D + D - 1] / ti.max(a, ED_EPS)


@ti.kernel
def _finish_backward(
    out: ti.types.ndarray(ndim=1),
    alphas: ti.types.ndarray(ndim=1),
    g_out: ti.types.ndarray(ndim=1),
    g_alphas: ti.types.ndarray(ndim=1),
    D: ti.i32,
    expected_depth: ti.i32,
    g_raw: ti.types.ndarray(ndim=1),
    g_alpha_raw: ti.types.ndarray(ndim=1),
):
    """Output gradients → gradients of the composited channels and of alpha."""
    for p in range(alphas.shape[0]):
        ga = g_alphas[p]
        for ch in range(D):
            g_raw[p * D + ch] = g_out[p * D + ch]
        if expected_depth:
            a = alphas[p]
            j = p * D + D - 1
            g_raw[j] = g_out[j] / ti.max(a, ED_EPS)
            if a > ED_EPS:
                ga -= g_out[j] * out[j] / a
        g_alpha_raw[p] = ga


# ------------------------------------------------------------------------ forward/backward
@dataclass
class Render:
    """Output of :func:`render`: ``colors`` (C, H, W, X), ``alphas`` (C, H, W, 1) and
    ``meta`` (gsplat's names: ``radii`` (C, N, 2) int32, ``means2d`` (C, N, 2), ``depths``
    (C, N), ``conics`` (C, N, 3), ``opacities`` (C, N), ``tiles_per_gauss`` (C, N),
    ``isect_offsets`` (C·tiles + 1: tile b's records are ``flatten_ids[o[b]:o[b+1]]``),
    ``flatten_ids`` (record c·N + g, front to back per tile), ``width``, ``height``,
    ``tile_size``, ``tile_width``, ``tile_height``, ``n_cameras``)."""

    colors: object
    alphas: object
    meta: dict
    inputs: Inputs = field(repr=False)
    saved: dict = field(repr=False)
    points: bool = False  # rendered by render_points (gradients also for the radii)

    def backward(self, grad_colors, grad_alphas=None) -> dict:
        """Gradients of every input (same kinds, backend precision) from those of the
        outputs: keys ``means quats scales opacities colors viewmats backgrounds``
        (``colors``: the SH coefficients with ``sh_degree``; ``backgrounds`` (C, Dc)), and
        ``radii`` for :func:`render_points`."""
        grads = backward(self, grad_colors, grad_alphas)
        if self.points:
            grads["radii"] = grads["scales"].sum(1)
        return grads


def render(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height,
    near_plane=0.01, far_plane=1e10, eps2d=0.3, sh_degree=None, backgrounds=None,
    render_mode="RGB",
) -> Render:  # fmt: skip
    """Render N Gaussians into C cameras (the package docstring states the model). Shapes:
    means (N, 3), quats (N, 4) wxyz, scales (N, 3) linear, opacities (N,) in [0, 1], colors
    (N, D) or (C, N, D) — or SH coefficients (N, K, 3) with ``sh_degree`` —, viewmats
    (C, 4, 4) world→camera (OpenCV), Ks (C, 3, 3), backgrounds (C, D) or None."""
    inp = check_inputs(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane,
        far_plane, eps2d, sh_degree, backgrounds, render_mode,
    )  # fmt: skip
    return _forward(inp)


def render_points(points, colors, radii, viewmats, Ks, width, height, opacities=None,
                  **settings) -> Render:  # fmt: skip
    """A point cloud as isotropic Gaussians: point n is a Gaussian of standard deviation
    ``radii[n]`` (world units, > 0) with opacity ``opacities[n]`` (default 1). Settings as
    :func:`render`; ``Render.backward`` also returns ``radii``' gradient."""
    N = _shape(points)[0] if len(_shape(points)) == 2 else -1
    if _shape(radii) != (N,):
        raise UserError(f"radii must have shape (N,) = ({N},), got {_shape(radii)}")
    real = backend.np_real()
    ones = _cast(np.ones((N, 3)), real, points)
    quats = _cast(np.tile([1.0, 0.0, 0.0, 0.0], (N, 1)), real, points)
    scales = ones * _cast(radii, real, points)[:, None]
    opacities = ones[:, 0] if opacities is None else opacities
    r = render(points, quats, scales, opacities, colors,
               viewmats, Ks, width, height, **settings)  # fmt: skip
    r.points = True
    return r


def _real(dtype) -> str:
    return "f64" if dtype == np.float64 else "f32"


# ------------------------------------------------------------------------ stages
def project_gaussians(means, quats, scales, opacities, viewmats, Ks, width, height, near_plane,
                      far_plane, eps2d) -> dict:  # fmt: skip
    """Per record c·N + g: ``params`` (C·N, 6: mean2d, conic, opacity), ``depths``,
    ``radii`` (C·N, 2), ``boxes`` (C·N, 4), ``tiles`` (see :mod:`.project`)."""
    C, N = _shape(viewmats)[0], _shape(means)[0]
    real = arrays.dtype_name(means)
    out = {
        "params": arrays.empty(means, (C * N, 6), real),
        "depths": arrays.empty(means, (C * N,), real),
        "radii": arrays.empty(means, (C * N, 2), "i32"),
        "boxes": arrays.empty(means, (C * N, 4), "i32"),
        "spans": arrays.empty(means, (C * N, 3), real),
        "tiles": arrays.empty(means, (C * N,), "i32"),
    }
    if C * N:
        project.project_forward(
            means, quats, scales, opacities, viewmats, Ks, width, height, near_plane,
            far_plane, eps2d, *out.values(),
        )  # fmt: skip
    return out


def project_gaussians_grad(means, quats, scales, viewmats, Ks, eps2d, tiles, g_params,
                           g_depths, g_dirs=None) -> dict:  # fmt: skip
    """Gradients of means, quats, scales, opacities, viewmats from those of the records'
    ``params`` and ``depths`` (and of the SH directions ``g_dirs``, C·N × 3)."""
    C, N = _shape(viewmats)[0], _shape(means)[0]
    real = arrays.dtype_name(means)
    shapes = {"means": (N, 3), "quats": (N, 4), "scales": (N, 3), "opacities": (N,)}
    g = {k: arrays.empty(means, shape, real) for k, shape in shapes.items()}
    g["viewmats"] = arrays.empty(means, (C, 4, 4), real)
    if C * N == 0:
        for a in g.values():
            a[...] = 0
        return g
    g_view = arrays.empty(means, (C * N, 12), real)
    project.project_backward(
        means, quats, scales, viewmats, Ks, eps2d, tiles, g_params, g_depths,
        g_params if g_dirs is None else g_dirs, int(g_dirs is not None), g["means"],
        g["quats"], g["scales"], g["opacities"], g_view,
    )  # fmt: skip
    project.sum_view_grads(g_view, C, g["viewmats"])
    return g


def composite(params, feats, depths, boxes, spans, tiles, backgrounds, C, N, width, height):
    """Bin, sort and composite: ``out`` (C·H·W·D flat), ``trans`` (T_final), ``last``,
    ``tile_start``, ``ids`` (see :mod:`.raster`)."""
    D = _shape(feats)[1]
    P = C * width * height
    real = arrays.dtype_name(feats)
    tile_start, ids = raster.bin_tiles(depths, tiles, boxes, C, N, width, height)
    out = {
        "out": arrays.empty(feats, (P * D,), real),
        "trans": arrays.empty(feats, (P,), real),
        "last": arrays.empty(feats, (P,), "i32"),
        "tile_start": tile_start,
        "ids": ids,
    }
    raster.composite_forward(
        tile_start, ids, params, feats, boxes, spans, backgrounds, width, height, D, out["out"],
        out["trans"], out["last"],
    )  # fmt: skip
    return out


def composite_grad(c, params, feats, boxes, spans, backgrounds, width, height, g_out, g_alpha):
    """(g_params, g_feats, g_backgrounds) from the gradients of the composited channels
    ``g_out`` (flat) and of alpha = 1 − T_final ``g_alpha`` (flat); ``c`` from
    :func:`composite`."""
    D = _shape(feats)[1]
    P = _shape(c["trans"])[0]
    real = arrays.dtype_name(feats)
    g_params = arrays.zeros(feats, _shape(params), real)
    g_feats = arrays.zeros(feats, _shape(feats), real)
    g_bg = arrays.zeros(feats, _shape(backgrounds), real)
    raster.composite_backward(
        c["tile_start"], c["ids"], params, feats, boxes, spans, backgrounds, width, height, D,
        c["trans"], c["last"], g_out, g_alpha, arrays.empty(feats, (P,), real),
        arrays.empty(feats, (P * D,), real), g_params, g_feats, g_bg,
    )  # fmt: skip
    return g_params, g_feats, g_bg


# ------------------------------------------------------------------------ Taichi-native
def _forward(inp: Inputs) -> Render:
    like, C, N, W, H, D = inp.means, inp.C, inp.N, inp.width, inp.height, inp.D
    real = _real(inp.dtype)
    CN, P = C * N, C * W * H
    pr = project_gaussians(
        inp.means, inp.quats, inp.scales, inp.opacities, inp.viewmats, inp.Ks, W, H,
        inp.near_plane, inp.far_plane, inp.eps2d,
    )  # fmt: skip
    feats = arrays.empty(like, (CN, D), real)
    dirs = sh_colors = None
    if CN:
        Dc, colors, per_camera = inp.color_channels, _rows(inp.colors), inp.per_camera_colors
        if inp.sh_degree is not None and Dc:
            dirs = arrays.empty(like, (CN, 3), real)
            sh_colors = arrays.empty(like, (CN, 3), real)
            project.directions(inp.means, inp.viewmats, dirs)
            project.sh_forward(inp.colors, inp.sh_degree, dirs, pr["tiles"], sh_colors)
            colors, per_camera = sh_colors, True
        _assemble(colors, int(per_camera), Dc, pr["depths"], int(inp.with_depth), N, feats)
    c = composite(
        pr["params"], feats, pr["depths"], pr["boxes"], pr["spans"], pr["tiles"],
        inp.backgrounds, C, N, W, H,
    )  # fmt: skip
    alphas = arrays.empty(like, (P,), real)
    _finish(c["out"], c["trans"], D, int(inp.render_mode.endswith("ED")), alphas)
    params = pr["params"]
    meta = {
        "radii": pr["radii"].reshape(C, N, 2),
        "means2d": params[:, :2].reshape(C, N, 2),
        "depths": pr["depths"].reshape(C, N),
        "conics": params[:, 2:5].reshape(C, N, 3),
        "opacities": params[:, 5].reshape(C, N),
        "tiles_per_gauss": pr["tiles"].reshape(C, N),
        "isect_offsets": c["tile_start"],
        "flatten_ids": c["ids"],
        "width": W,
        "height": H,
        "tile_size": project.TILE,
        "tile_width": -(-W // project.TILE),
        "tile_height": -(-H // project.TILE),
        "n_cameras": C,
    }
    saved = {**pr, **c, "feats": feats, "alphas": alphas, "dirs": dirs, "sh_colors": sh_colors}
    return Render(c["out"].reshape(C, H, W, D), alphas.reshape(C, H, W, 1), meta, inp, saved)


def backward(r: Render, grad_colors, grad_alphas=None) -> dict:
    inp, s = r.inputs, r.saved
    like, C, N, W, H, D = inp.means, inp.C, inp.N, inp.width, inp.height, inp.D
    real = _real(inp.dtype)
    CN, P = C * N, C * W * H
    if _shape(grad_colors) != (C, H, W, D):
        raise UserError(f"grad_colors must have shape {(C, H, W, D)}, got {_shape(grad_colors)}")
    g_out = _contiguous(_cast(grad_colors, inp.dtype, like).reshape(P * D))
    if grad_alphas is None:
        g_alpha = arrays.zeros(like, (P,), real)
    else:
        if _shape(grad_alphas) != (C, H, W, 1):
            raise UserError(f"grad_alphas must have shape {(C, H, W, 1)}")
        g_alpha = _contiguous(_cast(grad_alphas, inp.dtype, like).reshape(P))
    g_raw = arrays.empty(like, (P * D,), real)
    g_alpha_raw = arrays.empty(like, (P,), real)
    _finish_backward(
        s["out"], s["alphas"], g_out, g_alpha, D, int(inp.render_mode.endswith("ED")), g_raw,
        g_alpha_raw,
    )  # fmt: skip
    g_params, g_feats, g_bg = composite_grad(
        s,
        s["params"],
        s["feats"],
        s["boxes"],
        s["spans"],
        inp.backgrounds,
        W,
        H,
        g_raw,
        g_alpha_raw,
    )
    Dc = inp.color_channels
    sh = s["dirs"] is not None
    g_colors = arrays.zeros(like, _shape(inp.colors), real)
    g_depths = arrays.empty(like, (CN,), real)
    g_dirs = arrays.empty(like, (CN, 3), real) if sh else None
    if CN:
        direct = g_depths.reshape(CN, 1) if sh else _rows(g_colors)
        _split_grads(
            g_feats, int(inp.per_camera_colors), Dc, int(not sh), int(inp.with_depth), C,
            direct, g_depths,
        )  # fmt: skip
        if sh:
            project.sh_backward(
                inp.colors, inp.sh_degree, s["dirs"], s["tiles"], s["sh_colors"], g_feats,
                g_colors, g_dirs,
            )  # fmt: skip
    g = project_gaussians_grad(
        inp.means, inp.quats, inp.scales, inp.viewmats, inp.Ks, inp.eps2d, s["tiles"],
        g_params, g_depths, g_dirs,
    )  # fmt: skip
    if inp.per_camera_colors:
        g_colors = g_colors.reshape(inp.colors_shape)
    return {**g, "colors": g_colors, "backgrounds": g_bg[:, :Dc]}
