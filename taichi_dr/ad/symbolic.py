"""Symbolic vs algorithmic derivatives of f(x) = exp applied k times (needs SymPy, the
``symbolic`` extra).

The symbolic derivative, a single expression tree, is the product exp(x)·exp(exp(x))⋯ of
all k nested exponentials: k(k+1)/2 exp operations plus k − 1 products, quadratic in k
(expression swell). The algorithmic derivative is a straight-line program that keeps each
intermediate result once and updates ``d_result *= result`` after each step: one exp and one
multiply per step, linear in k. Common-subexpression elimination turns the tree back into
such a program.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError


def _sympy():
    try:
        import sympy
    except ImportError:
        raise UserError(
            "the symbolic study needs SymPy; install it with pip install 'taichi-dr[symbolic]'"
        ) from None
    return sympy


def symbolic_derivative(k: int):
    """(x, f, df/dx) as SymPy expressions for f = exp applied ``k`` times."""
    sp = _sympy()
    x = sp.Symbol("x")
    f = x
    for _ in range(k):
        f = sp.exp(f)
    return x, f, sp.diff(f, x)


def algorithmic_program(k: int):
    """The algorithmic derivative of the k-fold exp as a list of SymPy assignments
    ``(target, expression)``: r_i = exp(r_{i−1}), d_i = d_{i−1}·r_i; the last d is f'."""
    sp = _sympy()
    r, d = sp.Symbol("x"), sp.Integer(1)
    program = []
    for i in range(1, k + 1):
        r_i, d_i = sp.Symbol(f"r{i}"), sp.Symbol(f"d{i}")
        program += [(r_i, sp.exp(r)), (d_i, d * r_i)]
        r, d = r_i, d_i
    return program


def evaluate_program(program, x: float) -> float:
    """Run an assignment list on ``x``; returns the value of the last target."""
    sp = _sympy()
    env = {sp.Symbol("x"): x}
    for target, expr in program:
        env[target] = float(expr.subs(env))
    return env[program[-1][0]]


@dataclass(frozen=True)
class SwellRow:
    """Operation counts (SymPy ``count_ops``) for the k-fold exp."""

    k: int
    function_ops: int
    symbolic_ops: int
    symbolic_cse_ops: int
    algorithmic_ops: int


def swell_study(ks=range(1, 11)) -> list[SwellRow]:
    """Operation counts of f, of its symbolic derivative (as a tree, and after CSE) and of the
    algorithmic derivative program, for each k in ``ks``."""
    sp = _sympy()
    rows = []
    for k in ks:
        if not isinstance(k, int) or k < 1:
            raise UserError(f"k={k!r}: the number of nested exps must be an integer ≥ 1")
        _, f, df = symbolic_derivative(k)
        replacements, reduced = sp.cse(df)
        cse_ops = sum(sp.count_ops(e) for _, e in replacements) + sp.count_ops(reduced[0])
        alg_ops = sum(sp.count_ops(e) for _, e in algorithmic_program(k))
        rows.append(SwellRow(k, sp.count_ops(f), sp.count_ops(df), cse_ops, alg_ops))
    return rows
