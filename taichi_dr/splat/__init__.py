"""Points and 3D Gaussians: a differentiable splatting renderer (3D Gaussian Splatting, with
gsplat's conventions), one source for every Taichi backend.

The model. N Gaussians — means μ (N, 3), quaternions q (N, 4) as (w, x, y, z) normalised
inside, linear scales s (N, 3), opacities o ∈ [0, 1], colours (any D channels) or real
spherical harmonics up to degree 3 — seen by C cameras: world→camera ``viewmats`` (C, 4, 4;
OpenCV axes, x right, y down, z forward) and pinhole ``Ks`` (C, 3, 3) in pixel units where
pixel (row i, column j) has its centre at (j + ½, i + ½); images (C, H, W, D), row 0 at the
top.

* Σ3 = R(q) diag(s)² R(q)ᵀ; EWA projection Σ2 = J W Σ3 Wᵀ Jᵀ + ε I (ε = ``eps2d`` = 0.3),
  J the perspective Jacobian at the camera-space mean (no frustum clamp);
* Gaussians with camera z ≤ ``near_plane`` (0.01) or ≥ ``far_plane`` are culled; the rest
  are sorted by z, **stably** (equal depths: lower index first);
* per pixel, front to back, d = pixel centre − projected mean: σ = ½ dᵀ Σ2⁻¹ d,
  α = min(0.99, o e^{−σ}); skipped when σ < 0 or α < 1/255; T_next = T (1 − α); the pixel
  stops before the Gaussian that would make T_next ≤ 10⁻⁴ (it does not contribute);
  C = Σ α_i T_i c_i + T_final · background, alpha = 1 − T_final; depth channels composite
  camera z the same way ("D"), or divided by alpha ("ED");
* SH colours are evaluated at the direction from the camera centre to the mean (3DGS signs)
  as max(SH + ½, 0);
* 16×16 tiles with gsplat's opacity-aware bound: binning never changes the image.

Gradients reach means, quats, scales, opacities, colours / SH coefficients, backgrounds and
the camera poses (viewmats), not the intrinsics (as gsplat). The derivative of
min(0.99, ·) is 0 where the clamp is active; the sort order and the 1/255 and 10⁻⁴
thresholds are held fixed (piecewise constant).

APIs. Taichi-native: :func:`render` and :func:`render_points` (NumPy or torch arrays in, a
:class:`Render` out, whose ``backward`` maps output gradients to input gradients) and
:class:`Splatter` (``ti.ndarray`` in and out on a ``ti.ad.Tape``). PyTorch:
:func:`rasterization` (gsplat's signature and return value) and :func:`rasterize_points`,
imported on first use. Files: :mod:`.ply` (the 3DGS ``.ply`` layout, point clouds).
"""

from .pipeline import MODES, Render, render, render_points
from .tape import Splatter

__all__ = [
    "MODES",
    "Render",
    "Splatter",
    "rasterization",
    "rasterize_points",
    "render",
    "render_points",
]


def __getattr__(name):
    if name in ("rasterization", "rasterize_points"):
        from . import torch as splat_torch

        return getattr(splat_torch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
