"""Vertex stage: ``world = M·[p, 1]``, ``clip = P·V·world``, normals by M's inverse transpose.

The matrices come from parameters with gradients, so pose and camera gradients come out
of the same tape as everything else:

* object pose: ``M = [R(pose_rotation) | pose_translation] · M₀``
* camera pose: ``V = [R(camera_rotation) | camera_translation] · V₀`` (in eye space)
* field of view: ``P = P₀`` with its focal terms scaled by cot(fov/2) / cot(fov₀/2)

``R(r)`` is the rotation by angle |r| about r/|r| (axis-angle, radians). Each of the B
views of a batch has its own parameters, reset to identity by ``set_cameras``; M₀, V₀,
P₀ and fov₀ come from the view's camera.

The 4×4 matrices are built on the host in float64 (13 numbers in, 44 out per view):
Taichi takes minutes to compile the reverse pass of matrix code. Their backward is the
exact Jacobian by complex-step differentiation (all views at once), registered with
``ti.ad.grad_replaced`` so the tape calls it in order. Per-vertex outputs: ``world``
(B·V,) vec3, ``normal`` (B·V,) vec3 unit and ``clip`` (B·V,) vec4; ``eye`` (B,) vec3 is
each view's camera position in world space.
"""

import math

import numpy as np
import taichi as ti

from .. import backend
from ..errors import UserError
from . import arrays
from .arrays import Real, Vec3, Vec4
from .packed import Layout, Packed


def axis_angle(r: np.ndarray) -> np.ndarray:
    """Rodrigues' rotation matrices (..., 3, 3) of axis-angle vectors r (..., 3); smooth
    at r = 0 and complex-step safe."""
    theta = np.sqrt(np.sum(r * r, axis=-1) + 1e-40)[..., None, None]
    half = theta / 2
    a = np.sin(theta) / theta
    b = 0.5 * (np.sin(half) / half) ** 2  # (1 − cos θ) / θ² without cancellation
    K = np.zeros((*r.shape[:-1], 3, 3), dtype=r.dtype)
    K[..., 0, 1], K[..., 0, 2], K[..., 1, 2] = -r[..., 2], r[..., 1], -r[..., 0]
    K[..., 1, 0], K[..., 2, 0], K[..., 2, 1] = r[..., 2], -r[..., 1], r[..., 0]
    return np.eye(3) + a * K + b * (K @ K)


def rigid(r: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Rigid transforms (..., 4, 4): rotation by axis-angle r (..., 3), then translation t."""
    out = np.zeros((*r.shape[:-1], 4, 4), dtype=np.result_type(r, t))
    out[..., :3, :3] = axis_angle(r)
    out[..., :3, 3] = t
    out[..., 3, 3] = 1.0
    return out


def matrices(theta: np.ndarray, model0, view0, proj0, fov0) -> np.ndarray:
    """Parameters θ (..., 13) = (pose r, pose t, camera r, camera t, fov°) → the 44 numbers
    (..., 44): model (16), view_proj (16), normal matrix (9), eye (3). ``model0``,
    ``view0``, ``proj0`` (..., 4, 4) and ``fov0`` (...) degrees are the camera's."""
    M = rigid(theta[..., 0:3], theta[..., 3:6]) @ model0
    V = rigid(theta[..., 6:9], theta[..., 9:12]) @ view0
    h0, h = np.radians(fov0) / 2, theta[..., 12] * (np.pi / 360.0)
    P = np.array(proj0, dtype=theta.dtype)
    scale = (np.cos(h) / np.sin(h) * np.tan(h0))[..., None]
    P[..., 0, :2] *= scale
    P[..., 1, 1:2] *= scale
    A = M[..., :3, :3]
    cof = np.stack(
        [
            np.cross(A[..., 1, :], A[..., 2, :]),
            np.cross(A[..., 2, :], A[..., 0, :]),
            np.cross(A[..., 0, :], A[..., 1, :]),
        ],
        axis=-2,
    )
    det = np.sum(A[..., 0, :] * cof[..., 0, :], axis=-1)[..., None, None]
    normal_matrix = cof / det  # inverse transpose of A
    Vr = V[..., :3, :3]
    eye = -np.einsum("...ji,...j->...i", Vr, V[..., :3, 3])
    lead = theta.shape[:-1]
    return np.concatenate(
        [
            M.reshape(*lead, 16),
            (P @ V).reshape(*lead, 16),
            normal_matrix.reshape(*lead, 9),
            eye,
        ],
        axis=-1,
    )


def matrices_vjp(theta: np.ndarray, g: np.ndarray, *base) -> np.ndarray:
    """gᵀ ∂matrices/∂θ (..., 13) by complex steps (exact Jacobian columns, all views at
    once): the backward pass of :func:`matrices` for output gradients g (..., 44)."""
    h = 1e-30
    out = np.empty(theta.shape)
    for i in range(theta.shape[-1]):
        t = theta.astype(complex)
        t[..., i] += 1j * h
        out[..., i] = np.sum(g * (matrices(t, *base).imag / h), axis=-1)
    return out


MATS = 41  # per view: model (16), view_proj (16), normal matrix (9), row-major


@ti.kernel
def _transform_vertices(
    positions: Vec3,
    normals: Vec3,
    inputs_stride: ti.i32,
    n_views: ti.i32,
    n_vertices: ti.i32,
    mats: Real,
    world: Vec3,
    normal: Vec3,
    clip: Vec4,
):
    # Products written out by component: Taichi 1.7's reverse pass of ``@`` on local
    # matrices loads uninitialised adjoints (garbage/NaN gradients).
    for k in range(n_views * n_vertices):
        b = k // n_vertices
        v = k - b * n_vertices + b * inputs_stride
        q, m = positions[v], normals[v]
        A = ti.Vector([mats[MATS * b + j] for j in ti.static(range(MATS))])
        w = ti.Vector(
            [
                A[4 * r] * q[0] + A[4 * r + 1] * q[1] + A[4 * r + 2] * q[2] + A[4 * r + 3]
                for r in ti.static(range(3))
            ]
        )
        world[k] = w
        clip[k] = ti.Vector(
            [
                A[16 + 4 * r] * w[0] + A[17 + 4 * r] * w[1] + A[18 + 4 * r] * w[2] + A[19 + 4 * r]
                for r in ti.static(range(4))
            ]
        )
        nm = ti.Vector(
            [
                A[32 + 3 * r] * m[0] + A[33 + 3 * r] * m[1] + A[34 + 3 * r] * m[2]
                for r in ti.static(range(3))
            ]
        )
        normal[k] = nm / ti.sqrt(nm.dot(nm) + 1e-30)


VIEW_LAYOUT = Layout(
    ("pose_rotation", (3,)),
    ("pose_translation", (3,)),
    ("camera_rotation", (3,)),
    ("camera_translation", (3,)),
    ("fov", ()),
)
"""One view's parameters θ: 13 reals (pose r, pose t, camera r, camera t, fov°)."""


class ViewParameters(Packed):
    """The per-view parameters of a batch (one set per view, see ``packed``): object pose
    ``pose_rotation`` (axis-angle, radians) and ``pose_translation``, camera offsets
    ``camera_rotation`` and ``camera_translation`` (eye space), ``fov`` (degrees)."""

    layout = VIEW_LAYOUT
    defaults = dict(fov=45.0)
    kind = "view parameter"

    def check(self, values: dict) -> dict:
        values = super().check(values)
        if "fov" in values and not np.all((values["fov"] > 0) & (values["fov"] < 180)):
            raise UserError(f"fov must lie in (0, 180) degrees, got {values['fov'].tolist()}")
        for name in ("pose_translation", "camera_translation"):
            if name in values:
                backend.check_magnitude(values[name], f"view parameter {name}")
        return values


class VertexStage:
    """The vertex stage of a batch of B views: per view, an object pose, a camera pose
    offset and a field of view (see the module docstring), and the transformed vertices.

    Owns ``params`` (:class:`ViewParameters`, one set per view, with gradients: reset to
    identity and the camera's fov by ``set_cameras``, the same array afterwards); the
    per-view matrices ``mats`` (B·41,) (model, view_proj, normal matrix, row-major) and
    ``eye`` (B,) vec3 (camera position in world space); and the outputs ``world``,
    ``normal`` (B·V,) vec3 and ``clip`` (B·V,) vec4. ``grad=False`` builds the matrices
    and outputs without gradients (their reverse-mode work is compiled out);
    ``camera_grad=False`` transforms with a gradient-less copy of the matrices (the
    reverse pass then adds nothing to them: no per-vertex atomics).
    """

    def __init__(self, grad: bool = True):
        backend.ensure_init()
        self.grad = bool(grad)
        self.camera_grad = True  # False: the backward leaves pose and camera alone
        self.views = 0
        self.capacity = 0  # vertices (all views) the outputs hold: exactly B·V
        self.params = None
        self._base = None
        self._written = None  # parameters the matrices were last built from

    def set_cameras(self, cameras) -> None:
        """Take M₀, V₀, P₀ from each camera (one per view) and reset the parameters."""
        fov = [math.degrees(2.0 * math.atan(1.0 / c.proj[1, 1])) for c in cameras]
        self._base = (
            np.stack([np.asarray(c.model, np.float64) for c in cameras]),
            np.stack([np.asarray(c.view, np.float64) for c in cameras]),
            np.stack([np.asarray(c.proj, np.float64) for c in cameras]),
            np.asarray(fov),
        )
        if len(cameras) != self.views:
            self.views = len(cameras)
            self.params = ViewParameters(self.views)
            self._allocate()
        self.params.reset()
        for b, f in enumerate(fov):
            self.params.set(view=b, fov=f)
        self._written = None

    def _allocate(self) -> None:
        self.mats = arrays.empty(self.views * MATS, grad=self.grad)
        self._fixed_mats = arrays.empty(self.views * MATS) if self.grad else self.mats
        self.eye = arrays.empty(self.views, 3, grad=self.grad)
        self.capacity = 0
        self._written = None

    def set_grad(self, grad: bool) -> None:
        """Rebuild the matrices and outputs with (or without) gradients; the parameters
        stay (their gradients are zero when the outputs have none)."""
        if bool(grad) != self.grad:
            self.grad = bool(grad)
            if self.views:
                self._allocate()

    def _theta(self) -> np.ndarray:
        """The parameters as (B, 13) float64."""
        return arrays.read(self.params.values).reshape(self.views, -1).astype(np.float64)

    @ti.ad.grad_replaced
    def update_matrices(self) -> None:
        """Matrices from the current parameters (differentiable: see module docstring);
        rebuilt only when the parameters or the cameras changed."""
        theta = self._theta()
        if theta.tobytes() != self._written:
            out = matrices(theta, *self._base).astype(backend.np_real())
            mats = np.ascontiguousarray(out[:, :MATS]).ravel()
            arrays.write(self.mats, mats)
            if self._fixed_mats is not self.mats:
                arrays.write(self._fixed_mats, mats)
            arrays.write(self.eye, out[:, MATS:])
            self._written = theta.tobytes()

    @ti.ad.grad_for(update_matrices)
    def _update_matrices_grad(self) -> None:
        if not (self.grad and self.camera_grad):
            return
        mats = arrays.read(self.mats.grad).reshape(self.views, MATS)
        g = np.concatenate([mats, arrays.read(self.eye.grad)], axis=1)
        grad = matrices_vjp(self._theta(), g.astype(np.float64), *self._base)
        values = self.params.values
        arrays.write(values.grad, arrays.read(values.grad) + grad.ravel())

    def forward(self, positions, normals, n_vertices: int, batched: bool = False) -> None:
        """Build the matrices, then transform ``n_vertices`` vertices per view:
        ``positions``, ``normals`` (V,) vec3 shared by the views, or (B·V,) when
        ``batched``."""
        n = self.views * n_vertices
        if n != self.capacity:  # per-vertex kernels downstream loop over the whole array
            self.capacity = n
            self.world = arrays.empty(n, 3, grad=self.grad)
            self.normal = arrays.empty(n, 3, grad=self.grad)
            self.clip = arrays.empty(n, 4, grad=self.grad)
        self.update_matrices()
        _transform_vertices(
            positions,
            normals,
            n_vertices if batched else 0,
            self.views,
            n_vertices,
            self.mats if self.camera_grad else self._fixed_mats,
            self.world,
            self.normal,
            self.clip,
        )

    def differentiable(self) -> list:
        """The arrays that carry gradients."""
        if not self.grad:
            return [self.params.values]
        outputs = [self.world, self.normal, self.clip] if self.capacity else []
        return [self.params.values, self.mats, self.eye, *outputs]

    def zero_grad(self) -> None:
        arrays.clear_grads(*self.differentiable())
