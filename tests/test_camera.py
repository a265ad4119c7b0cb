import numpy as np
import pytest

from taichi_dr import Camera, UserError, from_opencv, look_at, orbit, perspective


def test_look_at_maps_eye_to_origin_and_center_to_minus_z():
    eye, center = np.array([1.0, 2.0, 3.0]), np.array([-0.5, 0.2, 0.1])
    v = look_at(eye, center, (0, 1, 0))
    assert np.allclose(v @ [*eye, 1], [0, 0, 0, 1])
    c = v @ [*center, 1]
    assert np.allclose(c[:2], 0) and c[2] < 0
    assert np.allclose(v[:3, :3] @ v[:3, :3].T, np.eye(3))  # rotation, right-handed
    assert np.isclose(np.linalg.det(v[:3, :3]), 1)


def test_perspective_matches_glu():
    p = perspective(90.0, 2.0, 1.0, 10.0)
    # near plane point on the top edge of the frustum -> NDC (0, 1, -1)
    c = p @ [0, 1, -1, 1]
    assert np.allclose(c[:3] / c[3], [0, 1, -1])
    c = p @ [20, 0, -10, 1]  # far plane, right edge (aspect 2)
    assert np.allclose(c[:3] / c[3], [1, 0, 1])


def test_from_opencv_projects_like_K(rng):
    W, H = 64, 48
    K = np.array([[50.0, 0.3, 30.2], [0, 55.0, 25.1], [0, 0, 1]])
    ang = 0.3
    R = np.array([[np.cos(ang), 0, np.sin(ang)], [0, 1, 0], [-np.sin(ang), 0, np.cos(ang)]])
    t = np.array([0.1, -0.2, 4.0])
    cam = from_opencv(K, R, t, W, H)
    X = rng.uniform(-1, 1, (10, 3))
    xc = (K @ (R @ X.T + t[:, None])).T
    uv = xc[:, :2] / xc[:, 2:]
    clip = (cam.mvp @ np.c_[X, np.ones(10)].T).T
    ndc = clip[:, :3] / clip[:, 3:]
    # our window x (pixel centre at +0.5), rows downwards
    px = (ndc[:, 0] + 1) / 2 * W - 0.5
    py = (1 - ndc[:, 1]) / 2 * H - 0.5
    assert np.allclose(px, uv[:, 0]) and np.allclose(py, uv[:, 1])
    assert np.all(np.abs(ndc[:, 2]) <= 1)


def test_orbit_cameras_look_at_center():
    cams = orbit(5, radius=3.0, elevation=30.0, width=32, height=16)
    for cam in cams:
        assert np.isclose(np.linalg.norm(cam.eye), 3.0)
        c = cam.view @ [0, 0, 0, 1]
        assert np.allclose(c[:2], 0)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(fov=0.0), "fov"),
        (dict(fov=180.0), "fov"),
        (dict(near=0.0), "near"),
        (dict(near=2.0, far=1.0), "near"),
        (dict(width=0), "resolution"),
        (dict(width=100000, height=100000), "too large"),
        (dict(eye=(0, 0, 0)), "coincide"),
        (dict(eye=(0, 3, 0)), "parallel"),
    ],
)
def test_bad_camera_input(kwargs, words):
    args = dict(eye=(0, 0, 3))
    args.update(kwargs)
    with pytest.raises(UserError, match=words):
        Camera.look_at(**args)
