"""The splatter on a ``ti.ad.Tape``, as the project's other hand-written adjoints
(:class:`taichi_dr.sim.VolumeRenderer`): ``ti.ndarray`` inputs and outputs, ``render``
recorded with its backward through ``ti.ad.grad_replaced``.

    s = Splatter(width, height)                     # settings as splat.render
    with ti.ad.Tape(loss):
        s.render(means, quats, scales, opacities, colors, viewmats, Ks, image, alpha)
        my_loss_kernel(image, alpha, loss)
    means.grad, quats.grad, ...                     # accumulated (+=), like Taichi's AD

Inputs have :func:`taichi_dr.splat.render`'s shapes; ``image`` is (C, H, W, X), ``alpha``
(C, H, W, 1). Gradients are added into the ``.grad`` of every input that has one (ndarrays
made with ``needs_grad=True``); zero them before the Tape (it clears fields, not
ndarrays). Values pass through NumPy on the host (no copy cost on the CPU; on a GPU use the
torch front, :func:`taichi_dr.splat.rasterization`, to stay on the device).
"""

import numpy as np
import taichi as ti

from .pipeline import render

INPUTS = ("means", "quats", "scales", "opacities", "colors", "viewmats", "Ks", "backgrounds")


class Splatter:
    """Render settings (see :func:`taichi_dr.splat.render`) and the last forward pass."""

    def __init__(self, width, height, near_plane=0.01, far_plane=1e10, eps2d=0.3,
                 sh_degree=None, render_mode="RGB"):  # fmt: skip
        self.settings = dict(
            width=width, height=height, near_plane=near_plane, far_plane=far_plane,
            eps2d=eps2d, sh_degree=sh_degree, render_mode=render_mode,
        )  # fmt: skip
        self.last = None  # the Render of the last forward pass

    def forward(self, means, quats, scales, opacities, colors, viewmats, Ks, image, alpha,
                backgrounds=None):  # fmt: skip
        """Render into ``image`` and ``alpha``."""
        values = [None if a is None else a.to_numpy() for a in
                  (means, quats, scales, opacities, colors, viewmats, Ks, backgrounds)]  # fmt: skip
        self.last = render(*values[:7], backgrounds=values[7], **self.settings)
        image.from_numpy(np.asarray(self.last.colors, dtype=image.to_numpy().dtype))
        alpha.from_numpy(np.asarray(self.last.alphas, dtype=alpha.to_numpy().dtype))

    def backward(self, means, quats, scales, opacities, colors, viewmats, Ks, image, alpha,
                 backgrounds=None):  # fmt: skip
        """From ``image.grad`` and ``alpha.grad``, add the inputs' gradients into their
        ``.grad``."""
        grads = self.last.backward(image.grad.to_numpy(), alpha.grad.to_numpy())
        arrays = (means, quats, scales, opacities, colors, viewmats, Ks, backgrounds)
        for name, a in zip(INPUTS, arrays):
            if a is not None and a.grad is not None and name in grads:
                a.grad.from_numpy(a.grad.to_numpy() + grads[name].astype(a.grad.to_numpy().dtype))

    @ti.ad.grad_replaced
    def render(self, means, quats, scales, opacities, colors, viewmats, Ks, image, alpha,
               backgrounds=None):  # fmt: skip
        """:meth:`forward`, recorded by an enclosing ``ti.ad.Tape`` with :meth:`backward`."""
        self.forward(means, quats, scales, opacities, colors, viewmats, Ks, image, alpha,
                     backgrounds)  # fmt: skip

    @ti.ad.grad_for(render)
    def _render_grad(self, means, quats, scales, opacities, colors, viewmats, Ks, image, alpha,
                     backgrounds=None):  # fmt: skip
        self.backward(means, quats, scales, opacities, colors, viewmats, Ks, image, alpha,
                      backgrounds)  # fmt: skip
