"""The torch stage ops: outputs against the float64 reference and the array kernels,
``torch.autograd.gradcheck`` in float64 with batches, bad input."""

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed; pip install 'taichi-dr[torch]' to run these"
)
import reference  # noqa: E402

import taichi_dr.torch as tdr  # noqa: E402
from taichi_dr import Camera, UserError  # noqa: E402
from taichi_dr.scene import blob  # noqa: E402

H, W = 12, 14


@pytest.fixture(scope="module")
def scene():
    mesh = blob(0)
    cams = [
        Camera.look_at((0, 0.5, 3), (0, 0, 0), (0, 1, 0), 40, W, H, 0.1, 50),
        Camera.look_at((1.5, 1, 2), (0.1, 0, 0), (0, 1, 0), 35, W, H, 0.1, 50),
    ]
    hom = np.c_[mesh.vertices, np.ones(mesh.num_vertices)]
    clip = torch.tensor(np.stack([hom @ c.mvp.T for c in cams]))
    return mesh, clip, torch.tensor(mesh.faces)


def test_rasterize_matches_reference(scene):
    mesh, clip, faces = scene
    frags = tdr.rasterize(clip, faces, (H, W))
    assert frags.triangle_id.shape == (2, H, W) and frags.triangle_id.dtype == torch.int32
    for b in range(2):
        tid, _, _ = reference.rasterize(clip[b].numpy(), mesh.faces, W, H)
        np.testing.assert_array_equal(frags.triangle_id[b].numpy(), tid)
    empty = frags.triangle_id < 0
    assert torch.isinf(frags.depth[empty]).all() and (frags.barycentric[empty] == 0).all()
    np.testing.assert_allclose(frags.barycentric[~empty].sum(-1).numpy(), 1.0, atol=1e-12)


def test_gradcheck_barycentrics_and_interpolation(scene, rng):
    mesh, clip, faces = scene
    V = mesh.num_vertices
    shared = torch.tensor(rng.uniform(0, 1, (V, 2)), requires_grad=True)
    per_view = torch.tensor(rng.uniform(0, 1, (2, V, 3)), requires_grad=True)
    c = clip.clone().requires_grad_(True)

    def f(c, shared, per_view):
        frags = tdr.rasterize(c, faces, (H, W))
        a = tdr.interpolate(shared, frags, faces)
        b = tdr.interpolate(per_view, frags, faces)
        depth = torch.where(torch.isinf(frags.depth), 0.0, frags.depth)
        return a.sum(-1) * 0.3 + b.pow(2).sum(-1) + depth * 0.1 + frags.barycentric[..., 0]

    # visibility is piecewise constant: small steps keep every triangle id
    assert torch.autograd.gradcheck(f, (c, shared, per_view), eps=1e-7, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda c, f: tdr.rasterize(c[..., :3], f, (H, W)), "shape"),
        (lambda c, f: tdr.rasterize(c, f.float(), (H, W)), "integer"),
        (lambda c, f: tdr.rasterize(c, f + 1000, (H, W)), "outside"),
        (lambda c, f: tdr.rasterize(c, f, (H, W), ranges=[[0, 10**6], [0, 1]]), "within"),
        (lambda c, f: tdr.rasterize(c, f, (H, W), ranges=[[0, 1]]), "one \\(start, count\\)"),
        (lambda c, f: tdr.rasterize(c[:0], f, (H, W)), "B ≥ 1"),
        (lambda c, f: tdr.rasterize(c * np.nan, f, (H, W)), "NaN"),
        (lambda c, f: tdr.rasterize(c, f, (0, W)), "resolution"),
    ],
)
def test_bad_input(scene, call, message):
    _, clip, faces = scene
    with pytest.raises(UserError, match=message):
        call(clip, faces)


def test_stage_ops_gradcheck_with_a_network_between(scene, rng):
    """rasterize → interpolate → a small torch network as the shader → antialias, two
    views: gradcheck in float64 of the whole chain with respect to the clip coordinates
    and the vertex attributes, and gradients reaching the network's weights."""
    mesh, clip, faces = scene
    V = mesh.num_vertices
    attributes = torch.tensor(rng.uniform(0, 1, (V, 4)), requires_grad=True)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    net = net.double()
    topo = tdr.topology(faces)
    c = clip.clone().requires_grad_(True)

    def f(c, attributes):
        frags = tdr.rasterize(c, faces, (H, W))
        features = tdr.interpolate(attributes, frags, faces)
        color = net(features) * (frags.triangle_id >= 0)[..., None]
        return tdr.antialias(color, frags, c, faces, topo)

    assert torch.autograd.gradcheck(f, (c, attributes), eps=1e-7, atol=1e-6, rtol=1e-5)
    f(c, attributes).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert c.grad.abs().sum() > 0 and attributes.grad.abs().sum() > 0


def test_texture_and_shade_gradcheck(scene, rng):
    mesh, clip, faces = scene
    V = mesh.num_vertices
    frags = tdr.rasterize(clip, faces, (H, W))
    uvs = torch.tensor(rng.uniform(0, 1, (V, 2)))
    image = torch.tensor(rng.uniform(0, 1, (8, 8, 3)), requires_grad=True)
    normals = torch.tensor(mesh.normals)
    world = torch.tensor(mesh.vertices)
    eye = torch.tensor([[0.0, 0.5, 3.0], [1.5, 1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    material = tdr.material(roughness=0.4, metallic=0.2).requires_grad_(True)
    values, counts = tdr.lights(
        directional=[((0.3, 0.6, 1.0), (0.9, 0.8, 0.7))], sh=rng.uniform(0, 0.3, (9, 3))
    )
    values.requires_grad_(True)

    def f(image, eye, material, values):
        uv = tdr.interpolate(uvs, frags, faces)
        albedo = tdr.texture(image, uv, filter="bilinear")
        position = tdr.interpolate(world, frags, faces)
        normal = tdr.interpolate(normals, frags, faces)
        return tdr.shade(frags, position, normal, albedo, eye, material, (values, counts), "ggx")

    assert torch.autograd.gradcheck(
        f, (image, eye, material, values), eps=1e-6, atol=1e-6, rtol=1e-5
    )


def test_trilinear_texture_gradcheck(rng):
    image = torch.tensor(rng.uniform(0, 1, (8, 8, 3)), requires_grad=True)
    uv = torch.tensor(rng.uniform(-0.5, 1.5, (5, 4, 2)), requires_grad=True)
    footprint = torch.tensor(rng.uniform(0.05, 0.4, (5, 4)), requires_grad=True)
    f = lambda i, u, p: tdr.texture(i, u, p, filter="trilinear", wrap="repeat")  # noqa: E731
    assert torch.autograd.gradcheck(f, (image, uv, footprint), eps=1e-7, atol=1e-6, rtol=1e-5)


def test_soft_rasterize_gradcheck(scene, rng):
    mesh, clip, faces = scene
    colors = torch.tensor(rng.uniform(0, 1, (2, mesh.num_vertices, 3)), requires_grad=True)
    c = clip.clone().requires_grad_(True)

    def f(c, colors):
        image, silhouette = tdr.soft_rasterize(
            c, faces, colors, (H, W), sigma=3e-3, near=0.1, far=50.0
        )
        return image.sum(-1) + silhouette

    assert torch.autograd.gradcheck(f, (c, colors), eps=1e-7, atol=1e-6, rtol=1e-5)
