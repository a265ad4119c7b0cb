"""``taichi_dr.nvdiffrast``: rasterize, interpolate, antialias and DepthPeeler against float64
NumPy references written here from the documented conventions (row 0 at the bottom, rast =
(u, v, z/w, id + 1), clamping, rast_db, the tie rule), ``torch.autograd.gradcheck`` of every
gradient, instanced and range modes, broadcast attributes, ``diff_attrs``, contexts and bad
input. (Textures: test_nvdiffrast_texture.py.)"""

import sys

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed; pip install 'taichi-dr[torch]' to run these"
)
import reference  # noqa: E402
from conftest import project  # noqa: E402

import taichi_dr.nvdiffrast as dr  # noqa: E402
from taichi_dr import Camera  # noqa: E402
from taichi_dr.render import silhouette  # noqa: E402
from taichi_dr.scene import icosphere  # noqa: E402

H, W = 14, 18
FLIP = np.array([1.0, -1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def glctx():
    return dr.RasterizeTaichiContext()


@pytest.fixture(scope="module")
def scene():
    """Two views of a lumpy sphere (42 vertices, 80 faces) in perspective."""
    mesh = icosphere(1)
    v = mesh.vertices * (1 + 0.15 * np.sin(3 * mesh.vertices[:, :1]))
    cams = [
        Camera.look_at((0.3, 0.4, 2.6), (0, 0, 0), (0, 1, 0), 45, W, H, 0.1, 50),
        Camera.look_at((-1.6, 0.9, 1.9), (0.1, 0, 0), (0, 1, 0), 40, W, H, 0.1, 50),
    ]
    hom = np.c_[v, np.ones(len(v))]
    clip = np.stack([hom @ c.mvp.T for c in cams])
    return clip, mesh.faces.astype(np.int32)


@pytest.fixture(scope="module")
def small():
    """Two views of a lumpy icosahedron (12 vertices, 20 faces) for the gradchecks."""
    mesh = icosphere(0)
    v = mesh.vertices * (1 + 0.2 * np.sin(3 * mesh.vertices[:, :1]))
    cams = [
        Camera.look_at((0.3, 0.4, 2.6), (0, 0, 0), (0, 1, 0), 50, 10, 8, 0.1, 50),
        Camera.look_at((-1.6, 0.9, 1.9), (0.1, 0, 0), (0, 1, 0), 45, 10, 8, 0.1, 50),
    ]
    hom = np.c_[v, np.ones(len(v))]
    return np.stack([hom @ c.mvp.T for c in cams]), mesh.faces.astype(np.int32)


def ndc(H, W):
    """NDC x, y of every pixel centre (H, W), row 0 at the bottom."""
    r, c = np.mgrid[:H, :W]
    return (2 * c + 1) / W - 1, (2 * r + 1) / H - 1


def bary(clip3, x, y):
    """Unclamped perspective-correct (u, v) and z/w of the clip triangle (3, 4) at NDC x, y."""
    a = clip3[:, 0] - x * clip3[:, 3]
    b = clip3[:, 1] - y * clip3[:, 3]
    lam = np.array(
        [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
    )
    lam = lam / lam.sum()
    return lam[0], lam[1], lam @ clip3[:, 2] / (lam @ clip3[:, 3])


def reference_rast(clip, faces, H, W):
    """rast and rast_db (H, W, 4) of one view: ids from the snapped top-left raster of
    tests/reference.py applied to nvdiffrast's memory order (clip y negated), values from
    the documented formulas, derivatives by central differences."""
    ids = reference.rasterize(clip * FLIP, faces, W, H)[0]
    X, Y = ndc(H, W)
    rast, db = np.zeros((H, W, 4)), np.zeros((H, W, 4))
    h = 1e-5
    for r, c in zip(*np.nonzero(ids >= 0)):
        t = faces[ids[r, c]]
        u, v, z = bary(clip[t], X[r, c], Y[r, c])
        u, v = np.clip(u, 0, 1), np.clip(v, 0, 1)
        if u + v > 1:
            u, v = u / (u + v), v / (u + v)
        rast[r, c] = u, v, np.clip(z, -1, 1), ids[r, c] + 1
        for k, (dx, dy) in enumerate(((2 / W, 0), (0, 2 / H))):
            hi = bary(clip[t], X[r, c] + h * dx, Y[r, c] + h * dy)
            lo = bary(clip[t], X[r, c] - h * dx, Y[r, c] - h * dy)
            db[r, c, k] = (hi[0] - lo[0]) / (2 * h)
            db[r, c, 2 + k] = (hi[1] - lo[1]) / (2 * h)
    return rast, db


def test_triangle_sample_conventions_and_tie_rule(glctx):
    """nvdiffrast's triangle sample: exactly the analytic image, row 0 at the bottom, with
    the pixel centres lying on the hypotenuse left uncovered."""
    pos = torch.tensor(
        [[[-0.8, -0.8, 0, 1], [0.8, -0.8, 0, 1], [-0.8, 0.8, 0, 1]]], dtype=torch.float64
    )
    col = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]], dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    n = 64
    rast, db = dr.rasterize(glctx, pos, tri, resolution=[n, n])
    out, _ = dr.interpolate(col, rast, tri)
    X, Y = ndc(n, n)
    on_edge = np.isclose(X + Y, 0, atol=1e-12) & (X >= -0.8) & (X <= 0.8)
    assert on_edge.sum() == 52  # centres (c, 63 − c) for 6.4 ≤ c + ½ ≤ 57.6
    inside = (X > -0.8) & (Y > -0.8) & (X + Y < -1e-12)
    np.testing.assert_array_equal(rast[0, ..., 3].numpy() > 0, inside)
    assert rast[0, 10, 40, 3] == 1 and rast[0, 53, 40, 3] == 0  # row 0 is the bottom row
    # colour: (u, v, 1 − u − v) of the vertices at the pixel centre (an affine map here)
    expect = np.stack([-(X + Y) / 1.6, (X + 0.8) / 1.6, (Y + 0.8) / 1.6], -1)
    np.testing.assert_allclose(out[0].numpy()[inside], expect[inside], atol=1e-12)
    assert (out[0].numpy()[~inside] == 0).all() and (rast[0].numpy()[~inside] == 0).all()
    # rast_db of this affine map: (∂u/∂X, ∂u/∂Y, ∂v/∂X, ∂v/∂Y) = (−k, −k, k, 0), k = 2/n/1.6
    k = 2 / n / 1.6
    np.testing.assert_allclose(db[0].numpy()[inside], [[-k, -k, k, 0]] * inside.sum(), atol=1e-12)


def test_shared_edges_belong_to_exactly_one_triangle(glctx):
    """A quad split along its diagonal, and two triangles sharing a horizontal edge:
    every centre on a shared edge is covered once — by the triangle to the edge's right,
    and for a horizontal edge by the one on the far side from row 0 (above it)."""
    n = 16
    quad = torch.tensor([[[-1.0, -1, 0, 1], [1, -1, 0, 1], [1, 1, 0, 1], [-1, 1, 0, 1]]])
    X, Y = ndc(n, n)
    for tri, on_edge, owner in (
        ([[0, 1, 2], [0, 2, 3]], np.isclose(X, Y), 1),  # diagonal: the lower-right one
        ([[0, 1, 2], [2, 3, 0]], np.zeros((n, n), bool), None),
    ):
        rast, _ = dr.rasterize(glctx, quad, torch.tensor(tri, dtype=torch.int32), [n, n])
        ids = rast[0, ..., 3].numpy()
        assert (ids > 0).all()  # no cracks
        if owner is not None:
            assert on_edge.sum() == n and (ids[on_edge] == owner).all()
    # horizontal shared edge at y = 1/8 = row 9's centre (rows of 16: (2r + 1)/16 − 1)
    y = (2 * 9 + 1) / n - 1
    pos = torch.tensor([[[-1.0, -1, 0, 1], [1, -1, 0, 1], [1, y, 0, 1], [-1, y, 0, 1],
                         [-1.0, 1, 0, 1], [1, 1, 0, 1]]])  # fmt: skip
    tri = torch.tensor([[0, 1, 2], [0, 2, 3], [3, 2, 5], [3, 5, 4]], dtype=torch.int32)
    rast, _ = dr.rasterize(glctx, pos, tri, [n, n])
    ids = rast[0, ..., 3].numpy().astype(int)
    assert (ids > 0).all()
    assert set(ids[9]) <= {3, 4} and set(ids[8]) <= {1, 2}  # row 9 (on the edge): above


@pytest.mark.parametrize("mode", ["instanced", "range"])
def test_rasterize_matches_reference(glctx, scene, mode):
    clip, faces = scene
    F = len(faces)
    if mode == "instanced":
        pos = torch.tensor(clip)
        tri = torch.tensor(faces)
        ranges, views = None, [(clip[b], faces, 0) for b in range(2)]
    else:  # view 0 draws faces 0..49 of view 0's vertices, view 1 faces 30..79 of view 1's
        V = clip.shape[1]
        pos = torch.tensor(np.concatenate(clip))
        tri = torch.tensor(np.concatenate([faces, faces + V]))
        ranges = torch.tensor([[0, 50], [F + 30, 50]], dtype=torch.int32)
        views = [(clip[0], faces[:50], 0), (clip[1], faces[30:], F + 30)]
    rast, db = dr.rasterize(glctx, pos, tri, (H, W), ranges=ranges)
    assert rast.shape == db.shape == (2, H, W, 4) and rast.dtype == torch.float64
    for b, (c, f, offset) in enumerate(views):
        ref, ref_db = reference_rast(c, f, H, W)
        ref[..., 3] += np.where(ref[..., 3] > 0, offset, 0)
        assert (ref[..., 3] > 0).sum() > 40
        np.testing.assert_array_equal(rast[b, ..., 3].numpy(), ref[..., 3])
        np.testing.assert_allclose(rast[b].numpy(), ref, atol=1e-12)
        np.testing.assert_allclose(db[b].numpy(), ref_db, atol=1e-7)


def test_rasterize_gradients(glctx, small):
    clip, faces = small
    tri = torch.tensor(faces, dtype=torch.int64)  # int64 accepted
    pos = torch.tensor(clip).requires_grad_(True)
    weights = torch.rand(
        2, H, W, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )

    def f(pos):
        rast, db = dr.rasterize(glctx, pos, tri, (H, W))
        return project(rast[..., :2], db * 0.01)

    # visibility is piecewise constant: small steps keep every triangle id
    assert torch.autograd.gradcheck(f, (pos,), eps=1e-7, atol=1e-6, rtol=1e-5)

    # without rast_db in the loss (the adjoint variant without it)
    def g(pos):
        return project(dr.rasterize(glctx, pos, tri, (H, W))[0][..., :2])

    assert torch.autograd.gradcheck(g, (pos,), eps=1e-7, atol=1e-6, rtol=1e-5)
    # z/w, the id and (grad_db=False) rast_db send nothing back
    rast, db = dr.rasterize(glctx, pos, tri, (H, W), grad_db=False)
    (g,) = torch.autograd.grad((rast[..., 2:] * weights[..., 2:]).sum() + db.sum(), pos)
    assert (g == 0).all()
    rast, _ = dr.rasterize(glctx, pos, tri, (H, W))
    (g,) = torch.autograd.grad(rast[..., :2].sum(), pos)
    assert (g[..., 2] == 0).all() and g.abs().sum() > 0  # x, y, w only


def test_range_mode_gradients(glctx, small):
    clip, faces = small
    pos = torch.tensor(clip[0]).requires_grad_(True)
    tri = torch.tensor(faces)
    ranges = torch.tensor([[0, 12], [8, 12]], dtype=torch.int32)

    def f(pos):
        rast, _ = dr.rasterize(glctx, pos, tri, (8, 10), ranges=ranges)
        return project(rast[..., :2])  # no rast_db in the loss

    assert torch.autograd.gradcheck(f, (pos,), eps=1e-7, atol=1e-6, rtol=1e-5)


def reference_interpolate(attr, rast, db, faces, selected):
    """out and out_da from rast/rast_db by the documented formulas (float64)."""
    B, Hh, Ww = rast.shape[:3]
    A = attr.shape[-1]
    attr = np.broadcast_to(attr if attr.ndim == 3 else attr[None], (B, *attr.shape[-2:]))
    out = np.zeros((B, Hh, Ww, A))
    out_da = np.zeros((B, Hh, Ww, 2 * len(selected)))
    for b, r, c in zip(*np.nonzero(rast[..., 3] > 0)):
        u, v, _, t = rast[b, r, c]
        a0, a1, a2 = attr[b][faces[int(t) - 1]]
        out[b, r, c] = u * a0 + v * a1 + (1 - u - v) * a2
        for j, k in enumerate(selected):
            d = db[b, r, c]
            out_da[b, r, c, 2 * j] = d[0] * (a0[k] - a2[k]) + d[2] * (a1[k] - a2[k])
            out_da[b, r, c, 2 * j + 1] = d[1] * (a0[k] - a2[k]) + d[3] * (a1[k] - a2[k])
    return out, out_da


def test_interpolate_modes(glctx, scene, rng):
    """Shared [V, A], broadcast [1, V, A] and per-image [B, V, A] attributes, another index
    tensor than the rasterized one (cube.py's col_idx), diff_attrs 'all' and by index."""
    clip, faces = scene
    V = clip.shape[1]
    tri = torch.tensor(faces)
    rast, db = dr.rasterize(glctx, torch.tensor(clip), tri, (H, W))
    R, D = rast.numpy(), db.numpy()
    colors = rng.uniform(0, 1, (V + 5, 3))
    col_idx = faces[:, ::-1].copy() + 5  # other vertices, same rows
    for attr, idx, diff, sel in (
        (rng.uniform(0, 1, (V, 4)), faces, None, []),
        (rng.uniform(0, 1, (1, V, 3)), faces, "all", [0, 1, 2]),
        (rng.uniform(0, 1, (2, V, 5)), faces, [-1, 0, 2], [4, 0, 2]),
        (colors, col_idx, [1], [1]),
    ):
        out, out_da = dr.interpolate(
            torch.tensor(attr), rast, torch.tensor(idx), rast_db=db, diff_attrs=diff
        )
        ref, ref_da = reference_interpolate(attr, R, D, idx, sel)
        np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)
        assert out_da.shape == (2, H, W, 2 * len(sel))
        np.testing.assert_allclose(out_da.numpy(), ref_da, atol=1e-12)


def test_interpolate_gradients(glctx, scene, rng):
    clip, faces = scene
    V = clip.shape[1]
    tri = torch.tensor(faces)
    rast, db = dr.rasterize(glctx, torch.tensor(clip), tri, (6, 8))
    uv = rast[..., :2].clone().requires_grad_(True)
    rest = rast[..., 2:]
    db = db.clone().requires_grad_(True)
    shared = torch.tensor(rng.uniform(0, 1, (1, V, 3)), requires_grad=True)

    def f(shared, uv, db):
        r = torch.cat([uv, rest], -1)  # the id channel stays exact
        out, out_da = dr.interpolate(shared, r, tri, rast_db=db, diff_attrs=[2, 0])
        return project(out, out_da)

    assert torch.autograd.gradcheck(f, (shared, uv, db), eps=1e-6, atol=1e-8)


def test_end_to_end_gradients(glctx, small, rng):
    """pos → rasterize → interpolate (with derivatives) → antialias: every gradient."""
    clip, faces = small
    V = clip.shape[1]
    tri = torch.tensor(faces)
    topo = dr.antialias_construct_topology_hash(tri)
    pos = torch.tensor(clip).requires_grad_(True)
    col = torch.tensor(rng.uniform(0, 1, (V, 1)), requires_grad=True)

    def f(pos, col):
        rast, db = dr.rasterize(glctx, pos, tri, (H, W))
        out, da = dr.interpolate(col, rast, tri, rast_db=db, diff_attrs="all")
        img = torch.cat([out, da * 0.1], -1)  # 3 channels, as the images below
        return project(dr.antialias(img, rast, pos, tri, topology_hash=topo))

    assert torch.autograd.gradcheck(f, (pos, col), eps=1e-7, atol=1e-6, rtol=1e-5)
    # pos_gradient_boost scales the silhouette part of the pos gradient only
    rast, _ = dr.rasterize(glctx, pos, tri, (H, W))
    img, _ = dr.interpolate(col.expand(-1, 3), rast, tri)
    g = [
        torch.autograd.grad(
            dr.antialias(img, rast, pos, tri, topo, k).sum(), pos, retain_graph=True
        )[0]
        for k in (0, 1, 2.5)
    ]
    assert (g[0] != g[1]).any()
    torch.testing.assert_close(g[2] - g[1], 1.5 * (g[1] - g[0]))


def reference_antialias(color, rast, clip, faces):
    """nvdiffrast's analytic antialiasing as documented, in float64, for one image (H, W, C)
    with clip [V, 4] and rows from the bottom."""
    Hh, Ww = color.shape[:2]
    out = color.copy()
    ids = rast[..., 3].astype(int) - 1
    edges = {}
    for f, t in enumerate(faces):
        for k in range(3):
            edges.setdefault(frozenset((t[k], t[(k + 1) % 3])), []).append(f)
    px = np.stack(
        [(clip[:, 0] / clip[:, 3] + 1) * Ww / 2, (clip[:, 1] / clip[:, 3] + 1) * Hh / 2], 1
    )

    def area(f):
        a, b, c = px[faces[f]]
        return np.sign((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))

    for r in range(Hh):
        for c in range(Ww):
            for d, (r2, c2) in enumerate(((r, c + 1), (r + 1, c))):
                if r2 >= Hh or c2 >= Ww or ids[r, c] == ids[r2, c2]:
                    continue
                p, q = (r, c), (r2, c2)
                if ids[r, c] < 0 or (ids[r2, c2] >= 0 and rast[r2, c2, 2] < rast[r, c, 2]):
                    p, q = q, p
                t = ids[p]
                along, across = (0, 1) if d == 0 else (1, 0)  # coordinate index (x, y)
                centre_p = np.array([p[1] + 0.5, p[0] + 0.5])
                line = centre_p[across]
                for k in range(3):
                    i0, i1 = faces[t][k], faces[t][(k + 1) % 3]
                    others = [g for g in edges[frozenset((i0, i1))] if g != t]
                    if len(others) == 1 and area(others[0]) == area(t):
                        continue  # an interior edge
                    a, b = px[i0], px[i1]
                    if abs(b[across] - a[across]) < abs(b[along] - a[along]):
                        continue
                    if (a[across] - line) * (b[across] - line) > 0 or a[across] == b[across]:
                        continue
                    cross = a[along] + (line - a[across]) / (b[across] - a[across]) * (
                        b[along] - a[along]
                    )
                    sign = 1 if q[1 - d] > p[1 - d] else -1  # q is + or − along
                    alpha = (cross - centre_p[along]) * sign
                    if not -1 / 16 <= alpha <= 1 + 1 / 16:
                        continue
                    alpha = min(max(alpha, 0.0), 1.0)
                    if alpha > 0.5:
                        out[q] += (alpha - 0.5) * (color[p] - color[q])
                    else:
                        out[p] += (0.5 - alpha) * (color[q] - color[p])
                    break
    return out


@pytest.mark.parametrize("on_the_fly", [True, False])
def test_antialias_matches_reference(glctx, scene, rng, on_the_fly, monkeypatch):
    monkeypatch.setattr(silhouette, "ON_THE_FLY", 10**9 if on_the_fly else 0)
    clip, faces = scene
    tri = torch.tensor(faces)
    for pos, ranges in ((torch.tensor(clip), None), (torch.tensor(clip[1]), [[0, 80], [10, 60]])):
        ranges = None if ranges is None else torch.tensor(ranges, dtype=torch.int32)
        rast, _ = dr.rasterize(glctx, pos, tri, (H, W), ranges=ranges)
        color = torch.tensor(rng.uniform(0, 1, (2, H, W, 3)))
        out = dr.antialias(color, rast, pos, tri)
        changed = 0
        for b in range(2):
            c = clip[b] if pos.dim() == 3 else clip[1]
            ref = reference_antialias(color[b].numpy(), rast[b].numpy(), c, faces)
            np.testing.assert_allclose(out[b].numpy(), ref, atol=1e-12)
            changed += (np.abs(ref - color[b].numpy()).max(-1) > 0).sum()
        assert changed > 20


def test_depth_peeler_layers(glctx, rng):
    """Layers against a depth-sorted brute-force list of the triangles over each pixel."""
    n, T = 12, 6
    corners = np.round(rng.uniform(-1, 1, (T, 3, 2)) * n * 128) / (n * 128)  # on the snap grid
    depth = rng.permutation(T) / T - 0.4  # one depth per triangle, all different
    pos = np.concatenate([corners, np.repeat(depth[:, None, None], 3, 1), np.ones((T, 3, 1))], -1)
    pos = torch.tensor(pos.reshape(1, 3 * T, 4))
    tri = torch.arange(3 * T, dtype=torch.int32).reshape(T, 3)
    X, Y = ndc(n, n)
    covering = [[[] for _ in range(n)] for _ in range(n)]
    for t in np.argsort(depth):
        a, b, c = corners[t]
        e = [
            (q[0] - p[0]) * (Y - p[1]) - (q[1] - p[1]) * (X - p[0])
            for p, q in ((a, b), (b, c), (c, a))
        ]
        inside = ((e[0] > 0) & (e[1] > 0) & (e[2] > 0)) | ((e[0] < 0) & (e[1] < 0) & (e[2] < 0))
        for r, col in zip(*np.nonzero(inside)):
            covering[r][col].append(t + 1)
    with dr.DepthPeeler(glctx, pos, tri, (n, n)) as peeler:
        for layer in range(T + 1):
            rast, db = peeler.rasterize_next_layer()
            expect = [[cov[layer] if layer < len(cov) else 0 for cov in row] for row in covering]
            np.testing.assert_array_equal(rast[0, ..., 3].numpy(), expect)
            if layer == 0:
                first = rast
        with pytest.raises(RuntimeError, match="DepthPeeler is active"):
            dr.rasterize(glctx, pos, tri, (n, n))
        with pytest.raises(RuntimeError, match="already active"):
            with dr.DepthPeeler(glctx, pos, tri, (n, n)):
                pass
    assert torch.equal(first, dr.rasterize(glctx, pos, tri, (n, n))[0])  # context free again
    with pytest.raises(RuntimeError, match="entered again"):
        with peeler:
            pass
    with pytest.raises(RuntimeError, match="active DepthPeeler"):
        peeler.rasterize_next_layer()


def test_contexts_log_level_and_dtypes(scene):
    clip, faces = scene
    pos = torch.tensor(clip[:1], dtype=torch.float32).transpose(1, 2).contiguous().transpose(1, 2)
    assert not pos.is_contiguous()
    tri = torch.tensor(faces)
    gl = dr.RasterizeGLContext(output_db=False, mode="manual", device="cpu")
    gl.set_context()
    rast, db = dr.rasterize(gl, pos, tri, (H, W))
    gl.release_context()
    assert rast.dtype == torch.float32 and db.shape == (1, H, W, 0)
    assert isinstance(dr.RasterizeCudaContext(device=0), dr.RasterizeTaichiContext)
    old = dr.get_log_level()
    dr.set_log_level(0)
    assert dr.get_log_level() == 0
    dr.set_log_level(old)
    with pytest.raises(ValueError, match="log level"):
        dr.set_log_level(7)
    saved = {k: sys.modules.pop(k) for k in ("nvdiffrast", "nvdiffrast.torch") if k in sys.modules}
    try:
        dr.install_alias()
        import nvdiffrast.torch as alias

        assert alias is dr and sys.modules["nvdiffrast"].__version__ == "0.4.0"
    finally:
        for k in ("nvdiffrast", "nvdiffrast.torch"):
            sys.modules.pop(k, None)
        sys.modules.update(saved)


def _rast(c, p, t):
    return dr.rasterize(c, p, t, (H, W))[0]


def _img(p, width=W):
    return p.new_zeros(2, H, width, 3)


SHAPE4 = r"instance mode - pos must have shape \[>0, >0, 4\]"
BAD = [
    (lambda c, p, t: dr.rasterize(None, p, t, (H, W)), "glctx must be"),
    (lambda c, p, t: dr.rasterize(c, p[..., :3], t, (H, W)), SHAPE4),
    (lambda c, p, t: dr.rasterize(c, p[0, :, :3], t, (H, W)), r"range mode - pos must have shape"),
    (lambda c, p, t: dr.rasterize(c, p[0], t, (H, W)), r"range mode - ranges must have shape"),
    (lambda c, p, t: dr.rasterize(c, p[0], t, (H, W), torch.tensor([[0, 999]])), "within"),
    (lambda c, p, t: dr.rasterize(c, p[None], t, (H, W)), "pos must have shape"),
    (lambda c, p, t: dr.rasterize(c, p, t[:0], (H, W)), r"tri must have shape \[>0, 3\]"),
    (lambda c, p, t: dr.rasterize(c, p, t.float(), (H, W)), "tri must be an int32 tensor"),
    (lambda c, p, t: dr.rasterize(c, p.int(), t, (H, W)), "pos must be a float32 tensor"),
    (lambda c, p, t: dr.rasterize(c, p, t + 100, (H, W)), "tri indexes vertices"),
    (lambda c, p, t: dr.rasterize(c, p, t, (0, W)), r"resolution must be \[>0, >0\]"),
    (lambda c, p, t: dr.rasterize(c, p, t, 5), r"resolution must be \[>0, >0\]"),
    (lambda c, p, t: dr.rasterize(c, p, t, (H, W), grad_db=1), "grad_db must be True or False"),
    (lambda c, p, t: dr.RasterizeGLContext(mode="x"), "mode"),
    (lambda c, p, t: dr.interpolate(p[..., :2], p[..., None], t), r"rast must have shape"),
    (lambda c, p, t: dr.interpolate(p[:, :, None], _rast(c, p, t), t), r"attr must have shape"),
    (lambda c, p, t: dr.interpolate(p.repeat(3, 1, 1), _rast(c, p, t), t), r"\[2 or 1, >0, >0\]"),
    (lambda c, p, t: dr.interpolate(p[0], _rast(c, p, t), t, diff_attrs="all"), "needs rast_db"),
    (lambda c, p, t: dr.interpolate(p[0], _rast(c, p, t), t, p, [9]), "out of range"),
    (lambda c, p, t: dr.interpolate(p[0], _rast(c, p, t), t, p, "x"), "'all' or a list"),
    (lambda c, p, t: dr.interpolate(p[0], _rast(c, p, t), t, p, [0]), "rast_db must have shape"),
    (lambda c, p, t: dr.interpolate(p[0, :5], _rast(c, p, t), t), "tri indexes vertices"),
    (lambda c, p, t: dr.antialias(p, _rast(c, p, t), p, t), r"color must have shape"),
    (lambda c, p, t: dr.antialias(_img(p, W + 1), _rast(c, p, t), p, t), r"rast must have shape"),
    (lambda c, p, t: dr.antialias(_img(p), _rast(c, p, t), p[:1], t), "instance mode - pos"),
    (lambda c, p, t: dr.antialias(_img(p), _rast(c, p, t), p, t, 1), "topology_hash"),
    (
        lambda c, p, t: dr.antialias(
            _img(p), _rast(c, p, t), p, t, dr.antialias_construct_topology_hash(t[:3])
        ),
        "built for 3",
    ),
]


@pytest.mark.parametrize("call, message", BAD)
def test_bad_input(glctx, scene, call, message):
    clip, faces = scene
    with pytest.raises(dr.NvdiffrastError, match=message) as info:
        call(glctx, torch.tensor(clip), torch.tensor(faces))
    assert isinstance(info.value, ValueError) and isinstance(info.value, RuntimeError)
