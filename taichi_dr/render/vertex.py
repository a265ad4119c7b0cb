"""Vertex stage: ``world = M·[p, 1]``, ``clip = P·V·world``, normals by M's inverse transpose.

The matrices come from parameters with gradients, so pose and camera gradients come out
of the same tape as everything else:

* object pose: ``M = [R(pose_rotation) | pose_translation] · M₀``
* camera pose: ``V = [R(camera_rotation) | camera_translation] · V₀`` (in eye space)
* field of view: ``P = P₀`` with its focal terms scaled by cot(fov/2) / cot(fov₀/2)

``R(r)`` is the rotation by angle |r| about r/|r| (axis-angle, radians). The parameters
are reset to identity by ``set_camera``; M₀, V₀, P₀ and fov₀ come from the camera.

The 4×4 matrices are built on the host in float64 (13 numbers in, 44 out): Taichi takes
minutes to compile the reverse pass of matrix code. Their backward is the exact
Jacobian by complex-step differentiation, registered with ``ti.ad.grad_replaced`` so the
tape calls it in order. Per-vertex outputs: ``world`` (V, 3), ``normal`` (V, 3, unit)
and ``clip`` (V, 4); ``eye`` (3,) is the camera position in world space.
"""

import math

import numpy as np
import taichi as ti

from .. import backend


def axis_angle(r: np.ndarray) -> np.ndarray:
    """Rodrigues' rotation matrix (3, 3); smooth at r = 0 and complex-step safe."""
    theta = np.sqrt(r @ r + 1e-40)
    half = theta / 2
    a = np.sin(theta) / theta
    b = 0.5 * (np.sin(half) / half) ** 2  # (1 − cos θ) / θ² without cancellation
    K = np.array([[0, -r[2], r[1]], [r[2], 0, -r[0]], [-r[1], r[0], 0]], dtype=r.dtype)
    return np.eye(3) + a * K + b * (K @ K)


def rigid(r: np.ndarray, t: np.ndarray) -> np.ndarray:
    out = np.eye(4, dtype=np.result_type(r, t))
    out[:3, :3] = axis_angle(r)
    out[:3, 3] = t
    return out


def matrices(theta: np.ndarray, model0, view0, proj0, fov0: float) -> np.ndarray:
    """Parameters θ = (pose r, pose t, camera r, camera t, fov°) → the 44 numbers
    (model (16), view_proj (16), normal matrix (9), eye (3))."""
    M = rigid(theta[0:3], theta[3:6]) @ model0
    V = rigid(theta[6:9], theta[9:12]) @ view0
    h0, h = math.radians(fov0) / 2, theta[12] * (np.pi / 360.0)
    P = proj0.astype(theta.dtype)
    scale = np.cos(h) / np.sin(h) * math.tan(h0)
    P[0, 0] *= scale
    P[0, 1] *= scale
    P[1, 1] *= scale
    A = M[:3, :3]
    cof = np.stack([np.cross(A[1], A[2]), np.cross(A[2], A[0]), np.cross(A[0], A[1])])
    normal_matrix = cof / (A[0] @ cof[0])  # inverse transpose of A
    eye = -(V[:3, :3].T @ V[:3, 3])
    return np.concatenate([M.ravel(), (P @ V).ravel(), normal_matrix.ravel(), eye])


@ti.data_oriented
class VertexStage:
    def __init__(self, max_vertices: int):
        real = self.real = backend.real()

        def vec():
            return ti.Vector.field(3, real, shape=(), **backend.diff())

        self.pose_rotation, self.pose_translation = vec(), vec()
        self.camera_rotation, self.camera_translation = vec(), vec()
        self.fov = ti.field(real, shape=(), **backend.diff())  # degrees
        self.parameters = (
            self.pose_rotation,
            self.pose_translation,
            self.camera_rotation,
            self.camera_translation,
            self.fov,
        )
        self.model = ti.Matrix.field(4, 4, real, shape=(), **backend.diff())
        self.view_proj = ti.Matrix.field(4, 4, real, shape=(), **backend.diff())
        self.normal_matrix = ti.Matrix.field(3, 3, real, shape=(), **backend.diff())
        self.eye = vec()
        self.outputs = (self.model, self.view_proj, self.normal_matrix, self.eye)
        self.world = ti.Vector.field(3, real, shape=max_vertices, **backend.diff())
        self.normal = ti.Vector.field(3, real, shape=max_vertices, **backend.diff())
        self.clip = ti.Vector.field(4, real, shape=max_vertices, **backend.diff())
        self._base = None
        self._written = None  # parameters the matrices were last built from
        self.requires_grad = True  # False: the backward leaves pose and camera alone

    def set_camera(self, camera) -> None:
        """Take M₀, V₀, P₀ from ``camera`` and reset the pose and camera parameters."""
        fov = math.degrees(2.0 * math.atan(1.0 / camera.proj[1, 1]))
        self._base = (
            np.asarray(camera.model, np.float64),
            np.asarray(camera.view, np.float64),
            np.asarray(camera.proj, np.float64),
            fov,
        )
        self._written = None
        for f in self.parameters[:4]:
            f[None] = (0.0, 0.0, 0.0)
        self.fov[None] = fov

    @ti.kernel
    def _gather(self, theta: ti.types.ndarray(dtype=ti.f64, ndim=1)):
        for _ in range(1):
            for k in ti.static(range(3)):
                theta[k] = self.pose_rotation[None][k]
                theta[3 + k] = self.pose_translation[None][k]
                theta[6 + k] = self.camera_rotation[None][k]
                theta[9 + k] = self.camera_translation[None][k]
            theta[12] = self.fov[None]

    @ti.kernel
    def _scatter(self, out: ti.types.ndarray(dtype=ti.f64, ndim=1)):
        for _ in range(1):
            for i, j in ti.static(ti.ndrange(4, 4)):
                self.model[None][i, j] = ti.cast(out[4 * i + j], self.real)
                self.view_proj[None][i, j] = ti.cast(out[16 + 4 * i + j], self.real)
            for i, j in ti.static(ti.ndrange(3, 3)):
                self.normal_matrix[None][i, j] = ti.cast(out[32 + 3 * i + j], self.real)
            for k in ti.static(range(3)):
                self.eye[None][k] = ti.cast(out[41 + k], self.real)

    def _theta(self) -> np.ndarray:
        """The 13 parameters (float64) in one kernel launch."""
        theta = np.empty(13)
        self._gather(theta)
        return theta

    @ti.ad.grad_replaced
    def update_matrices(self) -> None:
        """Matrices from the current parameters (differentiable: see module docstring).
        Rewritten only when the parameters or the camera changed (two launches per call)."""
        theta = self._theta()
        if theta.tobytes() != self._written:
            self._scatter(matrices(theta, *self._base))
            self._written = theta.tobytes()

    @ti.ad.grad_for(update_matrices)
    def _update_matrices_grad(self) -> None:
        if not self.requires_grad:
            return
        theta = self._theta()
        g = np.concatenate([f.grad.to_numpy().ravel() for f in self.outputs]).astype(np.float64)
        h = 1e-30
        grad = np.empty(len(theta))
        for i in range(len(theta)):  # complex step: exact Jacobian columns
            t = theta.astype(complex)
            t[i] += 1j * h
            grad[i] = g @ (matrices(t, *self._base).imag / h)
        k = 0
        for f in self.parameters:
            current = f.grad.to_numpy()
            backend.write(f.grad, current + grad[k : k + current.size].reshape(current.shape))
            k += current.size

    @ti.kernel
    def _transform(
        self, positions: ti.template(), normals: ti.template(), n: ti.i32, stop: ti.template()
    ):
        # Products written out by component: Taichi 1.7's reverse pass of ``@`` on local
        # matrices loads uninitialised adjoints (garbage/NaN gradients).
        for i in range(n):
            for field in ti.static(stop):
                ti.stop_grad(field)
            q, m = positions[i], normals[i]
            M, P, N = self.model[None], self.view_proj[None], self.normal_matrix[None]
            w = ti.Vector(
                [
                    M[k, 0] * q[0] + M[k, 1] * q[1] + M[k, 2] * q[2] + M[k, 3]
                    for k in ti.static(range(3))
                ]
            )
            self.world[i] = w
            self.clip[i] = ti.Vector(
                [
                    P[k, 0] * w[0] + P[k, 1] * w[1] + P[k, 2] * w[2] + P[k, 3]
                    for k in ti.static(range(4))
                ]
            )
            nm = ti.Vector(
                [N[k, 0] * m[0] + N[k, 1] * m[1] + N[k, 2] * m[2] for k in ti.static(range(3))]
            )
            self.normal[i] = nm / ti.sqrt(nm.dot(nm) + 1e-30)

    def forward(self, mesh, stop=()) -> None:
        """Build the matrices, then transform the first ``mesh.num_vertices`` vertices;
        ``stop``: input fields that get no gradient (the matrices among them: the backward
        leaves pose and camera alone)."""
        self.requires_grad = all(f is not self.model for f in stop)
        self.update_matrices()
        self._transform(mesh.positions, mesh.normals, mesh.num_vertices, stop)

    def zero_grad(self) -> None:
        backend.zero_grads(*self.parameters, *self.outputs, self.world, self.normal, self.clip)
