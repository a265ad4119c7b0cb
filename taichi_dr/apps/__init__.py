"""The application wing: what is built on the library rather than part of it.

``fit`` (the inverse-rendering engine: a :class:`~taichi_dr.apps.fit.Problem` of views and
parameters, run by :class:`~taichi_dr.apps.fit.Fit`), ``inverse`` (the fit applications —
geometry, pose, texture, material, lighting, joint — built from
:class:`~taichi_dr.apps.inverse.FitOptions`), ``splat_fit`` and ``voxel_fit`` (3D Gaussians and
voxel grids fitted to images), ``smoke`` (the smoke applications, built from
:class:`~taichi_dr.apps.smoke.SmokeOptions`), ``runner`` (iterations, checkpoints, metrics
and the live window for any application), ``live`` (the live view's panels and loss curve),
``orbit`` (the orbit camera, no renderer behind it) and ``viewer`` (the interactive
viewer). The command line (:mod:`taichi_dr.commands`) only parses options and wires these.
Nothing in the library below imports this package.
"""
