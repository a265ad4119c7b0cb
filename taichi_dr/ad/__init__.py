"""Derivatives from first principles (``taichi-dr ad``) and a reusable gradient check.

Modules: ``gradcheck`` (float64 central differences, :func:`gradcheck`), ``finite_diff``
(step-size study), ``dual`` (dual numbers), ``symbolic`` (expression swell, needs SymPy),
``examples`` (the example functions and their analytic derivatives), ``programs`` (the
same as Taichi kernels under Tape / FwdMode / explicit stacks), ``cost`` (the
cheap-gradient measurement), ``discrete`` (programs with discrete choices: branch,
nearest neighbour, permutation; record the choice, replay it), ``report`` (tables and
plots). Importing starts no Taichi.
"""

from .gradcheck import GradCheck, central_difference, gradcheck

__all__ = ["GradCheck", "central_difference", "gradcheck"]
