"""Soft rasterizer, part 3: the blend (Liu et al. 2019), differentiable in the clip
coordinates and the vertex colours, with a hand-written backward pass.

Array version (issue 13) of ``soft.SoftRasterizer.forward``. For pixel i and its
candidate faces j (from ``soft_select``)::

    D_ij = sigmoid(δ_ij d²_ij / σ)            δ = +1 inside the projected face, −1 outside
    A_i  = 1 − Π_j (1 − D_ij)                  silhouette
    C_i  = Σ_j w_ij C_ij + w_b C_b             colour
    w_ij = D_ij e^{z_ij/γ} / (Σ_k D_ik e^{z_ik/γ} + e^{ε/γ}),   w_b = e^{ε/γ} / (same)

with d, z_ij and the face records as in ``soft_faces``; C_ij interpolates per-vertex
colours (shared (V,) or one set per view (B·V,); e.g. from
``vertex_shading.shade_vertices``) with the clamped barycentrics.

* Forward: the face records are recomputed from ``clip`` (a cheap per-face kernel), then
  one thread per tile goes face by face over the pixels that kept each face (its slot's
  mask), a row of 8 pixels at a time, side by side (the tile's sums are consecutive
  entries of local arrays, so that LLVM emits SIMD instructions; ``exp_nonpositive``
  instead of libm's exp). It multiplies the 1 − D and sums the weights shifted by m_i,
  the largest of ε and the pixel's z_ij (the blend does not depend on m, so it is a
  constant for the gradient; with it the largest weight is 1 and none overflows),
  taken from selection's nearest candidate depth, and stores each pair's D, nearest
  boundary feature, signed distance and e^{(z − m)/γ} (16 bytes in f32), numbered tile
  by tile. A tile where a pair lies above that m (the clip coordinates moved since
  selection, e.g. in a finite-difference check) is blended again with m from a pass
  over its pairs.
* Backward: per-pixel adjoints of the three sums, then one thread per face over its
  slots' masks: it reads the pair records (recomputing only the barycentrics of pairs
  with a weight), sums the adjoints of the face's records in registers (d² = l² for the
  nearest edge line, |q − s_v|² for a vertex) and takes them back to the clip
  coordinates (``face_records_adjoint``); atomics only for the three vertices' clip
  and colour gradients. Hand-written (registered with ``ti.ad.grad_replaced``), so no
  exp sits in an AD inner loop (TAICHI_NOTES §6).

Exact shortcuts, no approximation: in the backward pass, a pair whose weight
e^{(z − m)/γ} is exactly 0 (e.g. the far side of a closed mesh) skips the barycentrics
and colour, and all work when the pixel's silhouette has no gradient either.
Degenerate faces (zero area, edge-on) are drawn as their edges: outside everywhere,
finite gradients.
"""

import taichi as ti

from .. import backend
from ..errors import UserError
from .soft_faces import (
    BACKGROUND,
    EPS,
    FAR,
    INV_GAMMA,
    INV_SIGMA,
    INV_SPAN,
    NUM_PARAMS,
    U64,
    Int,
    IVec2,
    IVec3,
    IVec4,
    Mat3,
    Mat32,
    Real,
    Vec3,
    Vec4,
    Vec5,
    barycentrics,
    distance,
    exp_nonpositive,
    face_records_adjoint,
    iso_scale,
    pixel_center,
    pixel_step,
)
from .soft_select import (
    MASK_TILE,
    SoftCandidates,
    box_tiles,
    length,
    next_pixel,
    tile_block,
    tile_origin,
    write_face_records,
)


@ti.func
def _coverage(screen: ti.template(), line: ti.template(), along: ti.template(), q, inv_sigma):
    """A face's records at isotropic screen point q: the 4 values of ``distance``, then
    1 − D and D (stable sigmoids of ±d²/σ)."""
    d2, inside, nearest, l_near = distance(screen, line, along, q)
    arg = ti.select(inside, d2, -d2) * inv_sigma
    e = exp_nonpositive(-ti.abs(arg))
    inv = 1.0 / (1.0 + e)
    miss = ti.select(arg >= 0.0, e, 1.0) * inv
    return d2, inside, nearest, l_near, miss, ti.select(arg >= 0.0, 1.0, e) * inv


@ti.func
def _next_row(bits):
    """The first row of a non-zero tile mask that has a set bit: (bits without that row,
    the row, whether each of its 8 pixels is set)."""
    row = (63 - ti.cast(ti.math.clz(bits & (~bits + ti.u64(1))), ti.i32)) // MASK_TILE
    shift = ti.u64(row * MASK_TILE)
    row_bits = (bits >> shift) & ti.u64(0xFF)
    on = ti.Vector(
        [(row_bits >> ti.u64(x)) & ti.u64(1) != ti.u64(0) for x in ti.static(range(MASK_TILE))]
    )
    return bits & ~(ti.u64(0xFF) << shift), row, on


@ti.func
def _shading(bary: ti.template(), z: ti.template(), c: ti.template(), p, far, inv_span):
    """A face's ``bary`` and ``depth`` records and vertex colours ``c`` (rows) at NDC
    point p: the 4 values of ``barycentrics``, the normalised depth (far − z)/(far −
    near) and the colour."""
    lam, u, total, sign = barycentrics(bary, p)
    color = lam[0] * c[0, :] + lam[1] * c[1, :] + lam[2] * c[2, :]
    return lam, u, total, sign, _depth(lam, z, far, inv_span), color


@ti.func
def _depth(lam, z, far, inv_span):
    """The normalised depth (far − z)/(far − near) of barycentrics λ, vertex depths z."""
    return (far - lam.dot(z)) * inv_span


@ti.func
def _draw_vertices(faces: ti.template(), ranges: ti.template(), fmax, r):
    """View b and vertex indices (in the view's set of V) of draw r."""
    b = r // fmax
    return b, faces[ranges[b][0] + r - b * fmax]


@ti.func
def _vertex_colors(colors: ti.template(), batched: ti.template(), idx, b, vertices):
    """The colours (rows) of vertices idx of view b."""
    base = b * vertices if ti.static(batched) else 0
    return ti.Matrix.rows([colors[idx[0] + base], colors[idx[1] + base], colors[idx[2] + base]])


@ti.kernel
def _blend_forward(
    colors: Vec3,
    batched: ti.template(),
    faces: IVec3,
    ranges: IVec2,
    vertices: ti.i32,
    fmax: ti.i32,
    height: ti.i32,
    width: ti.i32,
    tiles_x: ti.i32,
    tiles_y: ti.i32,
    n_tiles: ti.i32,
    params: Real,
    screen: Mat32,
    line: Mat3,
    along: Mat3,
    bary: Mat3,
    depth: Vec3,
    tile_start: Int,
    tile_slots: Int,
    slot_draw: Int,
    mask: U64,
    slot_pairs: Int,
    n_slots: ti.i32,
    nearest_depth: Real,
    pairs: Vec4,
    silhouette: Real,
    image: Vec3,
    denominator: Real,
):
    """One thread per tile, face by face over the pixels that kept the face (its slot's
    mask); the thread owns the tile's pixels, whose sums live in local arrays indexed by
    the mask bit: Π (1 − D), Σ w C and Σ w, shifted by m. Each pair's (D, l, code,
    e^{(z − m)/γ}) is stored for the backward pass, and the pixels' Σ w."""
    spare = slot_pairs[n_slots]  # the number of pairs: a spare entry of ``pairs``
    ti.loop_config(block_dim=ti.static(tile_block()))
    for t in range(n_tiles):
        scale, step = iso_scale(height, width), pixel_step(height, width)
        inv_sigma, inv_gamma, eps = params[INV_SIGMA], params[INV_GAMMA], params[EPS]
        far, inv_span = params[FAR], params[INV_SPAN]
        background = ti.Vector([params[BACKGROUND + c] for c in ti.static(range(3))])
        v, y0, x0 = tile_origin(t, tiles_x, tiles_y)
        # The weights are summed shifted by m, the largest of ε and the pixel's depths
        # z (the blend does not depend on m; with it the largest weight is 1 and none
        # overflows): from selection's nearest candidate depth, or, where a pair is
        # found above it (the clip coordinates moved since selection), from a pass over
        # the tile's pairs, 8 pixels of a row side by side, and the tile blended again
        shift = ti.Vector([eps] * (MASK_TILE * MASK_TILE))
        for y in range(y0, ti.min(y0 + MASK_TILE, height)):
            for x in range(x0, ti.min(x0 + MASK_TILE, width)):
                i = (v * height + y) * width + x
                bit = (y - y0) * MASK_TILE + x - x0
                shift[bit] = ti.max(eps, (far - nearest_depth[i]) * inv_span)
        miss = ti.Vector([1.0] * (MASK_TILE * MASK_TILE))  # Π (1 − D): 0 where A = 1
        total = ti.Vector.zero(float, MASK_TILE * MASK_TILE)  # Σ w
        color_sum = ti.Matrix.zero(float, 3, MASK_TILE * MASK_TILE)  # Σ w C, by channel
        for attempt in range(2):
            if attempt == 1:
                shift = ti.Vector([eps] * (MASK_TILE * MASK_TILE))
                for n in range(tile_start[t], tile_start[t + 1]):
                    slot = tile_slots[n]
                    r = slot_draw[slot]
                    ba, z = bary[r], depth[r]
                    bits = mask[slot]
                    while bits != ti.u64(0):
                        bits, row, on = _next_row(bits)
                        for x in ti.static(range(MASK_TILE)):
                            bit = row * MASK_TILE + x
                            p = pixel_center(y0 + row, x0 + x, step)
                            zn = _depth(barycentrics(ba, p)[0], z, far, inv_span)
                            shift[bit] = ti.select(on[x], ti.max(shift[bit], zn), shift[bit])
            stale = False  # a pair above the shift
            for bit in range(MASK_TILE * MASK_TILE):
                miss[bit] = 1.0
                w = exp_nonpositive((eps - shift[bit]) * inv_gamma)
                total[bit] = w
                for c in ti.static(range(3)):
                    color_sum[c, bit] = w * background[c]
            for n in range(tile_start[t], tile_start[t + 1]):
                slot = tile_slots[n]
                bits = mask[slot]
                if bits == ti.u64(0):  # no pixel kept the face
                    continue
                r = slot_draw[slot]
                s, ln, al, ba, z = screen[r], line[r], along[r], bary[r], depth[r]
                idx = _draw_vertices(faces, ranges, fmax, r)[1]
                cols = _vertex_colors(colors, batched, idx, v, vertices)
                k = slot_pairs[slot]
                while bits != ti.u64(0):
                    bits, row, on = _next_row(bits)
                    # the row's 8 pixels side by side (consecutive entries of the tile's
                    # arrays: SIMD loads and stores), updating those whose bit is set
                    base = row * MASK_TILE
                    record = ti.Matrix.zero(float, MASK_TILE, 4)
                    for x in ti.static(range(MASK_TILE)):
                        bit = base + x
                        p = pixel_center(y0 + row, x0 + x, step)
                        inside, nearest, l_near, o, cov = _coverage(
                            s, ln, al, p * scale, inv_sigma
                        )[1:]
                        miss[bit] = ti.select(on[x], miss[bit] * o, miss[bit])
                        zn, color = _shading(ba, z, cols, p, far, inv_span)[4:]
                        factor = exp_nonpositive((zn - shift[bit]) * inv_gamma)
                        stale |= on[x] & (zn > shift[bit])
                        wk = ti.select(on[x], cov * factor, 0.0)
                        total[bit] += wk
                        for c in ti.static(range(3)):
                            color_sum[c, bit] += wk * color[c]
                        record[x, 0] = cov
                        record[x, 1] = l_near
                        record[x, 2] = nearest + 8 * ti.cast(inside, ti.i32)
                        record[x, 3] = factor
                    # the pairs, in mask-bit order, without branches: a lane without a
                    # pair writes to the spare entry past the last pair
                    for x in ti.static(range(MASK_TILE)):
                        at = ti.select(on[x], k, spare)
                        pairs[at] = ti.Vector([record[x, c] for c in ti.static(range(4))])
                        k += ti.select(on[x], 1, 0)
            if not stale:
                break
        for y in range(y0, ti.min(y0 + MASK_TILE, height)):
            for x in range(x0, ti.min(x0 + MASK_TILE, width)):
                i = (v * height + y) * width + x
                bit = (y - y0) * MASK_TILE + x - x0
                silhouette[i] = 1.0 - miss[bit]
                image[i] = ti.Vector([color_sum[c, bit] for c in ti.static(range(3))]) / total[bit]
                denominator[i] = total[bit]


@ti.kernel
def _pixel_adjoints(
    n: ti.i32,
    silhouette: Real,
    image: Vec3,
    silhouette_grad: Real,
    image_grad: Vec3,
    with_silhouette: ti.template(),
    with_image: ti.template(),
    denominator: Real,
    adjoint: Vec5,
):
    """Per pixel: ∂L/∂log Π(1 − D), ∂L/∂Σw, ∂L/∂Σ wC (3) and the softmax shift m (one
    array: the backward pass reads them together)."""
    for i in range(n):
        g_log_t, g_w = 0.0, 0.0
        g_c = ti.Vector([0.0, 0.0, 0.0])
        if ti.static(with_silhouette):
            g_log_t = -silhouette_grad[i] * (1.0 - silhouette[i])
        if ti.static(with_image):
            g_c = image_grad[i] / denominator[i]
            g_w = -g_c.dot(image[i])
        adjoint[i] = ti.Vector([g_log_t, g_w, g_c[0], g_c[1], g_c[2]])


@ti.func
def _pair_adjoint(
    face: ti.template(),
    pair,
    adjoint: ti.template(),
    i,
    y,
    x,
    view: ti.template(),
    g: ti.template(),
):
    """Adds the adjoints of the pair of pixel i (row y, column x) and a face to the face's
    record adjoints g = (boundary features, bary, depth, vertex colours): face = (screen,
    bary, depth records, vertex colours, upper depth bound), ``pair`` its stored (D, l,
    code), ``adjoint`` from ``_pixel_adjoints``, view = (``pixel_step``, ``iso_scale``,
    (1/σ, 1/γ, far, 1/(far − near))). A pair with a weight of exactly 0 and no
    silhouette gradient adds nothing."""
    s, b, z, cols = face
    step, scale, consts = view
    inv_sigma, inv_gamma = consts[0], consts[1]
    adj = adjoint[i]
    factor = pair[3]  # e^{(z − m)/γ}
    shaded = factor > 0.0
    if shaded or adj[0] != 0.0:
        p = pixel_center(y, x, step)
        q = p * scale
        cov = pair[0]
        g_arg = -cov * adj[0]  # ∂L/∂(±d²/σ)
        if shaded:
            lam, u, total, sign = barycentrics(b, p)
            w = cov * factor
            g_c = ti.Vector([adj[2], adj[3], adj[4]])
            h = cols @ g_c  # ∂L/∂C_ij · each vertex colour: C_ij = Σ λ_v c_v
            g_w = adj[1] + lam.dot(h)  # ∂L/∂w_ij
            g_arg += g_w * factor * cov * (1.0 - cov)
            g_depth = -g_w * w * inv_gamma * consts[3]
            g_lam = g_depth * z + w * h
            # (the reciprocal of ``barycentrics``: one division per pair)
            g_u = (g_lam - g_lam.dot(lam)) * (1.0 / ti.select(total > 0.0, total, 1.0))
            g_u = ti.select(u > 0.0, g_u, 0.0) * sign
            for v in ti.static(range(3)):  # u_v = A + B p_x + C p_y
                g[1][v, 0] += g_u[v]
                g[1][v, 1] += g_u[v] * p[0]
                g[1][v, 2] += g_u[v] * p[1]
                g[2][v] += g_depth * lam[v]
                for ch in ti.static(range(3)):
                    g[3][v, ch] += w * lam[v] * g_c[ch]
        code = ti.cast(pair[2], ti.i32)
        g_d2 = ti.select(code >= 8, g_arg, -g_arg) * inv_sigma
        nearest = code & 7
        # nearest edge k: d² = (a q_x + b q_y + c)², ∂d²/∂(a, b, c) = 2 l (q_x, q_y, 1);
        # nearest vertex v: d² = |q − s_v|², ∂d²/∂s_v = −2 (q − s_v): the sums of g q and g
        # per feature (one row of a run-time index: fewer sums held per pair)
        gf = 2.0 * g_d2 * ti.select(nearest < 3, pair[1], 1.0)
        g[0][nearest, 0] += gf * q[0]
        g[0][nearest, 1] += gf * q[1]
        g[0][nearest, 2] += gf


@ti.kernel
def _face_adjoints(
    clip: Vec4,
    clip_grad: Vec4,
    with_clip: ti.template(),
    colors: Vec3,
    colors_grad: Vec3,
    with_colors: ti.template(),
    batched: ti.template(),
    faces: IVec3,
    ranges: IVec2,
    vertices: ti.i32,
    fmax: ti.i32,
    height: ti.i32,
    width: ti.i32,
    n_records: ti.i32,
    params: Real,
    screen: Mat32,
    bary: Mat3,
    depth: Vec3,
    box: IVec4,
    slot_start: Int,
    mask: U64,
    slot_pairs: Int,
    pairs: Vec4,
    adjoint: Vec5,
):
    """One thread per face over the pixels that kept it (its slots' masks): sums the
    pair adjoints into the face records' gradients, then adds the face's share to the
    gradients of its vertices' clip coordinates and colours."""
    ti.loop_config(block_dim=ti.static(tile_block() * 4))
    for r in range(n_records):
        if slot_start[r] < slot_start[r + 1]:
            scale, step = iso_scale(height, width), pixel_step(height, width)
            k4 = ti.static((INV_SIGMA, INV_GAMMA, FAR, INV_SPAN))
            consts = ti.Vector([params[k4[c]] for c in ti.static(range(4))])
            g = (
                ti.Matrix.zero(float, 6, 3),  # edges 0-2, vertices 3-5: Σ g q_x, Σ g q_y, Σ g
                ti.Matrix.zero(float, 3, 3),  # bary
                ti.Vector.zero(float, 3),  # depth
                ti.Matrix.zero(float, 3, 3),  # row v: vertex v's colour
            )
            b, idx = _draw_vertices(faces, ranges, fmax, r)
            cols = _vertex_colors(colors, batched, idx, b, vertices)
            face = (screen[r], bary[r], depth[r], cols)
            view = (step, scale, consts)
            tb = box_tiles(box[r])
            j = slot_start[r]
            row0 = b * height
            for ty in range(tb[1], tb[3] + 1):
                for tx in range(tb[0], tb[2] + 1):
                    bits = mask[j]
                    k = slot_pairs[j]
                    j += 1
                    while bits != ti.u64(0):
                        bits, bit = next_pixel(bits)
                        y, x = ty * MASK_TILE + bit // MASK_TILE, tx * MASK_TILE + bit % MASK_TILE
                        i = (row0 + y) * width + x
                        _pair_adjoint(face, pairs[k], adjoint, i, y, x, view, g)
                        k += 1
            if ti.static(with_colors):
                cidx = idx + (b * vertices if ti.static(batched) else 0)
                for v in ti.static(range(3)):
                    colors_grad[cidx[v]] += ti.Vector([g[3][v, ch] for ch in ti.static(range(3))])
            if ti.static(with_clip):
                vidx = idx + b * vertices
                c = ti.Matrix.rows([clip[vidx[0]], clip[vidx[1]], clip[vidx[2]]])
                f = g[0]
                g_line = ti.Matrix([[f[k, 0], f[k, 1], f[k, 2]] for k in ti.static(range(3))])
                s = screen[r]
                g_screen = ti.Matrix(
                    [[s[v, 0] * f[3 + v, 2] - f[3 + v, 0], s[v, 1] * f[3 + v, 2] - f[3 + v, 1]]
                     for v in ti.static(range(3))]
                )  # fmt: skip
                g_clip = face_records_adjoint(c, scale, g_screen, g_line, g[1], g[2])
                for v in ti.static(range(3)):
                    clip_grad[vidx[v]] += ti.Vector([g_clip[v, ch] for ch in ti.static(range(4))])


def _colors_batched(colors, cand: SoftCandidates) -> bool:
    """Whether ``colors`` holds one set per view (B·V) rather than one shared set (V)."""
    n, views, vertices = length(colors), cand.frame.views, cand.vertices
    if n not in (vertices, views * vertices):
        raise UserError(
            f"vertex colours have {n} entries; pass {vertices} (shared by the views) or "
            f"{views * vertices} (one set per view)"
        )
    return n != vertices


def _check_call(cand: SoftCandidates, clip, params, outputs) -> None:
    if cand.frame is None:
        raise UserError("call SoftCandidates.select() before the blend: it picks the faces")
    if length(clip) != cand.frame.views * cand.vertices:
        raise UserError(
            f"clip has {length(clip)} vertices but select() saw "
            f"{cand.frame.views * cand.vertices}; select again after changing the mesh"
        )
    if length(params) != NUM_PARAMS:
        raise UserError("params must come from soft_faces.soft_params()")
    for name, a in outputs.items():
        if a is not None and length(a) != cand.frame.pixels:
            raise UserError(
                f"{name} has {length(a)} entries; the frame has {cand.frame.pixels} pixels"
            )


@ti.ad.grad_replaced
def blend(cand: SoftCandidates, clip, colors, params, silhouette, image) -> None:
    """Soft silhouette (B·H·W,) and image (B·H·W,) vec3 of the candidates selected by
    ``cand`` (outputs allocated by the caller), differentiable in ``clip`` (B·V,) vec4
    and ``colors`` (V,) or (B·V,) vec3; ``params`` from ``soft_faces.soft_params``.
    Under ``ti.ad.Tape`` its backward is :func:`blend_backward` with the arrays'
    ``.grad`` (which the caller zeroes: a Tape clears only fields)."""
    _check_call(cand, clip, params, {"silhouette": silhouette, "image": image})
    batched = _colors_batched(colors, cand)
    frame = cand.frame
    write_face_records(clip, *cand.draws(), params, *cand.records(), cand.box, False)
    _blend_forward(
        colors, batched, *cand.draws(), *cand.tiles, cand.n_tiles, params, *cand.records(),
        cand.tile_start, cand.tile_slots, cand.slot_draw, cand.mask, cand.slot_pairs,
        cand.n_slots, cand.nearest, cand.pairs, silhouette, image,
        cand.buffer("denominator", frame.pixels, backend.real()),
    )  # fmt: skip


def blend_backward(
    cand: SoftCandidates,
    clip,
    colors,
    params,
    silhouette,
    image,
    silhouette_grad,
    image_grad,
    clip_grad=None,
    colors_grad=None,
) -> None:
    """The backward pass of the last :func:`blend` with these arrays: adds ∂L/∂clip to
    ``clip_grad`` (B·V,) vec4 and ∂L/∂colors to ``colors_grad`` (shaped as ``colors``)
    from ``silhouette_grad`` (B·H·W,) and ``image_grad`` (B·H·W,) vec3 (None: no such
    gradient; a gradient left out is not computed)."""
    grads = {"silhouette_grad": silhouette_grad, "image_grad": image_grad}
    _check_call(cand, clip, params, {"silhouette": silhouette, "image": image, **grads})
    batched = _colors_batched(colors, cand)
    if colors_grad is not None and length(colors_grad) != length(colors):
        raise UserError(f"colors_grad has {length(colors_grad)} entries, colors {length(colors)}")
    if clip_grad is not None and length(clip_grad) != length(clip):
        raise UserError(f"clip_grad has {length(clip_grad)} entries, clip {length(clip)}")
    if clip_grad is None and colors_grad is None:
        return
    frame = cand.frame
    adjoint = cand.buffer("adjoint", frame.pixels, ti.types.vector(5, backend.real()))
    _pixel_adjoints(
        frame.pixels,
        silhouette,
        image,
        silhouette if silhouette_grad is None else silhouette_grad,
        image if image_grad is None else image_grad,
        silhouette_grad is not None,
        image_grad is not None,
        cand.denominator,
        adjoint,
    )
    _face_adjoints(
        clip, clip if clip_grad is None else clip_grad, clip_grad is not None,
        colors, colors if colors_grad is None else colors_grad, colors_grad is not None,
        batched, *cand.draws(), cand.n_records, params, cand.screen, cand.bary, cand.depth,
        cand.box, cand.slot_start, cand.mask, cand.slot_pairs, cand.pairs,
        adjoint,
    )  # fmt: skip


@ti.ad.grad_for(blend)
def _blend_grad(cand, clip, colors, params, silhouette, image) -> None:
    blend_backward(
        cand,
        clip,
        colors,
        params,
        silhouette,
        image,
        silhouette.grad,
        image.grad,
        clip.grad,
        colors.grad,
    )
