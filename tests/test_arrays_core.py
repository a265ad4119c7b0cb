"""The compile-once array kernels of the vertex stage, the rasterizer and interpolation:
batches of views against single renders and the float64 reference, no recompilation for
new sizes, and gradients against central differences."""

import numpy as np
import pytest
import reference
import taichi as ti

from taichi_dr import Camera
from taichi_dr.ad import gradcheck
from taichi_dr.render import arrays, interpolate, raster
from taichi_dr.render.arrays import Frame
from taichi_dr.render.vertex import VertexStage
from taichi_dr.scene import blob

W, H = 24, 20


@pytest.fixture(scope="module")
def scene():
    mesh = blob(1)
    cams = [
        Camera.look_at((0, 0.5, 3), (0, 0, 0), (0, 1, 0), 50, W, H, 0.1, 50),
        Camera.look_at((1.5, 1, 2), (0.1, 0, 0), (0, 1, 0), 40, W, H, 0.1, 50),
    ]
    faces = arrays.from_numpy(mesh.faces.astype(np.int32), dtype=ti.i32)
    return mesh, cams, faces


def _clip(mesh, cams):
    return np.concatenate(
        [np.c_[mesh.vertices, np.ones(mesh.num_vertices)] @ c.mvp.T for c in cams]
    )


def _clip_posed(mesh, cam, rotation):
    from taichi_dr.render.vertex import axis_angle

    world = mesh.vertices @ axis_angle(np.array(rotation, float)).T
    return np.c_[world, np.ones(len(world))] @ cam.mvp.T


def _ranges(spans):
    return arrays.from_numpy(np.array(spans, np.int32), dtype=ti.i32)


def test_batch_and_face_ranges_match_reference(scene):
    mesh, cams, faces = scene
    V, F = mesh.num_vertices, mesh.num_faces
    clip = _clip(mesh, cams)
    r = raster.Rasterizer()
    r.forward(arrays.from_numpy(clip), faces, _ranges([[0, F]] * 2), Frame(2, H, W), V, count=True)
    tri = r.triangle_id.to_numpy().reshape(2, H, W)
    count = r.fragments.to_numpy().reshape(2, H, W)
    for b in range(2):
        tid, cnt, _ = reference.rasterize(clip[b * V : (b + 1) * V], mesh.faces, W, H)
        assert (tid >= 0).sum() > 50
        np.testing.assert_array_equal(tri[b], tid)
        np.testing.assert_array_equal(count[b], cnt)
    # range mode: view 0 draws the first half of the faces, view 1 the rest
    half = F // 2
    r.forward(
        arrays.from_numpy(clip), faces, _ranges([[0, half], [half, F - half]]), Frame(2, H, W), V
    )
    tri = r.triangle_id.to_numpy().reshape(2, H, W)
    t0, _, _ = reference.rasterize(clip[:V], mesh.faces[:half], W, H)
    t1, _, _ = reference.rasterize(clip[V:], mesh.faces[half:], W, H)
    t1[t1 >= 0] += half
    np.testing.assert_array_equal(tri[0], t0)
    np.testing.assert_array_equal(tri[1], t1)


def _compiled(*kernels) -> int:
    return sum(len(k._primal.compiled_kernels) for k in kernels)


def test_new_size_and_mesh_compile_nothing(scene):
    mesh, cams, faces = scene
    V, F = mesh.num_vertices, mesh.num_faces
    r = raster.Rasterizer()
    clip = arrays.from_numpy(_clip(mesh, cams))
    r.forward(clip, faces, _ranges([[0, F]] * 2), Frame(2, H, W), V)
    kernels = (raster._rasterize,)
    before = _compiled(*kernels)
    small = blob(0)
    cam = Camera.look_at((0, 0, 3), (0, 0, 0), (0, 1, 0), 50, 37, 11, 0.1, 50)
    r.forward(
        arrays.from_numpy(_clip(small, [cam])),
        arrays.from_numpy(small.faces.astype(np.int32), dtype=ti.i32),
        _ranges([[0, small.num_faces]]),
        Frame(1, 11, 37),
        small.num_vertices,
    )
    assert _compiled(*kernels) == before
    tid, _, _ = reference.rasterize(_clip(small, [cam]), small.faces, 37, 11)
    np.testing.assert_array_equal(r.triangle_id.to_numpy().reshape(11, 37), tid)


def test_vertex_stage_gradients(scene, rng):
    mesh, cams, _ = scene
    V = mesh.num_vertices
    vs = VertexStage()
    vs.set_cameras(cams)
    pos = arrays.from_numpy(mesh.vertices, grad=True)
    nrm = arrays.from_numpy(mesh.normals, grad=True)
    vs.params.set(view=0, pose_rotation=(0.1, 0.2, 0.3))
    vs.params.set(view=1, pose_rotation=(0.0, 0.0, 0.5))
    vs.forward(pos, nrm, V)
    np.testing.assert_allclose(vs.clip.to_numpy()[V:], _clip_posed(mesh, cams[1], (0, 0, 0.5)))
    weights = arrays.from_numpy(rng.normal(size=(2 * V, 4)))
    normal_weights = arrays.from_numpy(rng.normal(size=(2 * V, 3)))
    loss = ti.ndarray(ti.f64, shape=(), needs_grad=True)

    @ti.kernel
    def contract(
        clip: arrays.Vec4, w: arrays.Vec4, n: arrays.Vec3, wn: arrays.Vec3, out: ti.types.ndarray()
    ):
        for i in range(clip.shape[0]):
            out[None] += clip[i].dot(w[i]) + n[i].dot(wn[i])

    def value():
        vs.forward(pos, nrm, V)
        loss[None] = 0.0
        contract(vs.clip, weights, vs.normal, normal_weights, loss)
        return loss[None]

    def gradient(target):
        vs.zero_grad()
        pos.grad.fill(0)
        with ti.ad.Tape(loss):
            value()
        return target.grad.to_numpy()

    for target, rows in ((vs.params.values, 26), (pos, 4)):  # every view parameter
        base = target.to_numpy()

        def f(x, target=target, base=base, rows=rows):
            full = base.copy()
            full[:rows] = x.reshape(full[:rows].shape)
            target.from_numpy(full)
            out = value()
            target.from_numpy(base)
            return out

        def grad(x, target=target, rows=rows):
            return gradient(target)[:rows]

        check = gradcheck(f, grad, base[:rows])
        assert check.ok, (target, check)


def test_interpolation_batch_and_gradients(scene, rng):
    mesh, cams, faces = scene
    V, F = mesh.num_vertices, mesh.num_faces
    frame = Frame(2, H, W)
    N = frame.pixels
    clip_np = _clip(mesh, cams)
    r = raster.Rasterizer()
    r.forward(arrays.from_numpy(clip_np), faces, _ranges([[0, F]] * 2), frame, V)
    tri = r.triangle_id
    clip = arrays.from_numpy(clip_np, grad=True)
    world = arrays.from_numpy(np.tile(mesh.vertices, (2, 1)), grad=True)
    normal = arrays.from_numpy(np.tile(mesh.normals, (2, 1)), grad=True)
    colors = arrays.from_numpy(rng.uniform(0, 1, (V, 3)), grad=True)
    uvs = arrays.from_numpy(rng.uniform(0, 1, (V, 2)), grad=True)
    pixel = (
        arrays.empty(N, 3, grad=True),
        arrays.empty(N, grad=True),
        arrays.empty(N, 3, grad=True),
        arrays.empty(N, 3, grad=True),
        arrays.empty(N, 3, grad=True),
        arrays.empty(N, 2, grad=True),
    )
    size = arrays.empty(N, grad=True)
    table = arrays.from_numpy(rng.uniform(0, 1, (2 * V, 4)), grad=True)  # per view, C = 4
    table_out = arrays.empty(N, 4, grad=True)
    weights = [rng.normal(size=(N, c)) for c in (3, 1, 3, 3, 3, 2, 1, 4)]
    weights[1], weights[6] = weights[1][:, 0].copy(), weights[6][:, 0].copy()
    loss = ti.ndarray(ti.f64, shape=(), needs_grad=True)

    @ti.kernel
    def dot3(a: arrays.Vec3, w: ti.types.ndarray(), out: ti.types.ndarray()):
        for i in range(a.shape[0]):
            out[None] += a[i][0] * w[i, 0] + a[i][1] * w[i, 1] + a[i][2] * w[i, 2]

    @ti.kernel
    def dot2(a: arrays.Vec2, w: ti.types.ndarray(), out: ti.types.ndarray()):
        for i in range(a.shape[0]):
            out[None] += a[i][0] * w[i, 0] + a[i][1] * w[i, 1]

    @ti.kernel
    def dot1(a: arrays.Real, tri: arrays.Int, w: ti.types.ndarray(), out: ti.types.ndarray()):
        for i in range(a.shape[0]):
            if tri[i] >= 0:
                out[None] += a[i] * w[i]

    @ti.kernel
    def dot4(a: arrays.Vec4, w: ti.types.ndarray(), out: ti.types.ndarray()):
        for i in range(a.shape[0]):
            out[None] += a[i].dot(ti.Vector([w[i, 0], w[i, 1], w[i, 2], w[i, 3]]))

    def value():
        interpolate.surface(clip, faces, tri, frame, V, (world, normal, colors, uvs), pixel)
        interpolate.footprint(uvs, clip, faces, tri, frame, V, size)
        interpolate.interpolate(table, faces, tri, pixel[0], frame, V, table_out)
        loss[None] = 0.0
        for a, w in zip(pixel[:1] + pixel[2:5], weights[:1] + weights[2:5]):
            dot3(a, w, loss)
        dot2(pixel[5], weights[5], loss)
        dot1(pixel[1], tri, weights[1], loss)
        dot1(size, tri, weights[6], loss)
        dot4(table_out, weights[7], loss)
        return loss[None]

    value()
    # each view equals a single-view interpolation of its own clip coordinates
    bary = pixel[0].to_numpy().reshape(2, H, W, 3)
    for b in range(2):
        tid = tri.to_numpy().reshape(2, H, W)[b]
        ys, xs = np.nonzero(tid >= 0)
        c = clip_np[b * V : (b + 1) * V][mesh.faces[tid[ys, xs]]]  # (n, 3, 4)
        ndc = np.stack([(xs + 0.5) / W * 2 - 1, 1 - (ys + 0.5) / H * 2], 1)
        a = c[..., 0] - ndc[:, :1] * c[..., 3]
        bb = c[..., 1] - ndc[:, 1:] * c[..., 3]
        lam = np.cross(a, bb)
        lam /= lam.sum(1, keepdims=True)
        np.testing.assert_allclose(bary[b, ys, xs], lam, atol=1e-10)
        expect = np.einsum(
            "nk,nkc->nc", lam, table.to_numpy()[b * V : (b + 1) * V][mesh.faces[tid[ys, xs]]]
        )
        np.testing.assert_allclose(
            table_out.to_numpy().reshape(2, H, W, 4)[b, ys, xs], expect, atol=1e-10
        )

    def gradient(target):
        for a in (clip, world, normal, colors, uvs, table):
            a.grad.fill(0)
        with ti.ad.Tape(loss):
            value()
        return target.grad.to_numpy()

    for target, rows in ((clip, 8), (world, 6), (colors, 6), (uvs, 6), (table, 6)):
        base = target.to_numpy()
        pick = rng.choice(len(base), rows, replace=False)
        if target is clip:  # vertices of covered faces, where the gradients live
            tid = tri.to_numpy().reshape(2, -1)
            seen = np.concatenate(
                [np.unique(mesh.faces[t[t >= 0]]) + b * V for b, t in enumerate(tid)]
            )
            pick = rng.choice(seen, rows, replace=False)

        def f(x, target=target, base=base, pick=pick):
            full = base.copy()
            full[pick] = x.reshape(full[pick].shape)
            target.from_numpy(full)
            out = value()
            target.from_numpy(base)
            return out

        check = gradcheck(f, lambda x, target=target, pick=pick: gradient(target)[pick], base[pick])
        assert check.ok, (target.shape, check)


@pytest.mark.parametrize(
    "channels, dtype", [(0, None), (3, None), (4, ti.f32), (0, ti.i32), (2, ti.i64)]
)
def test_host_reads_writes_and_clears(channels, dtype, rng):
    """``arrays.read``/``write`` (straight from CPU memory), ``zero`` (a memset) and
    ``detach`` (a memory copy) agree with Taichi's own ``to_numpy``/``from_numpy``."""
    n = 7
    shape = (n, channels) if channels else (n,)
    values = rng.integers(-50, 50, shape)
    a = arrays.from_numpy(values, dtype=dtype)
    np.testing.assert_array_equal(arrays.read(a), a.to_numpy())
    assert arrays.read(a).shape == a.to_numpy().shape
    arrays.write(a, 2 * values)
    np.testing.assert_array_equal(a.to_numpy(), 2 * values)
    b = arrays.empty(n, channels, dtype=dtype or a.dtype)
    arrays.detach(a, b)
    np.testing.assert_array_equal(b.to_numpy(), 2 * values)
    if a.dtype in (ti.f32, ti.f64):
        g = arrays.empty(n, channels, dtype=a.dtype, grad=True)
        g.grad.from_numpy(np.ones(shape))
        arrays.clear_grads(g)
        assert not g.grad.to_numpy().any()
