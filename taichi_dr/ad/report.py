"""``taichi-dr ad``: run every study of :mod:`taichi_dr.ad`, print its tables and write its
plots (PNG) and numbers (``ad.json``) to a folder."""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np

from ..io import atomic_write, save_json
from . import cost, discrete, dual, examples, finite_diff, symbolic
from .programs import METHODS, Chain2x2, ExpLoop

PLOTS = ("ad_step_size.png", "ad_swell.png", "ad_cost.png", "ad_switch.png")


def format_table(headers, rows, digits: int = 4) -> str:
    """A plain-text table: floats to ``digits`` significant digits, None as '-'; text columns
    left-aligned, numbers right-aligned."""

    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, (float, np.floating)):
            return f"{v:.{digits}g}"
        return str(v)

    cells = [[cell(v) for v in row] for row in rows]
    numeric = [all(not isinstance(r[i], str) for r in rows) for i in range(len(headers))]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(items):
        return "  ".join(
            c.rjust(w) if num else c.ljust(w) for c, w, num in zip(items, widths, numeric)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, cells)])


def _figure(ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * ncols, 3.3), dpi=90, layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig, path: Path) -> Path:
    buf = BytesIO()
    fig.savefig(buf, format="png")

    def write(tmp):
        Path(tmp).write_bytes(buf.getvalue())

    return atomic_write(path, write)


# ---------------------------------------------------------------- 1. finite differences
def step_size_section(out: Path, show: Callable) -> dict:
    studies = finite_diff.step_studies()
    rows, best = [], {}
    for s in studies:
        eps = np.finfo(s.dtype).eps
        theory = np.sqrt(eps) if s.scheme == "forward" else np.cbrt(eps)
        h, err = s.best
        rows.append([s.function, s.dtype, s.scheme, h, err, theory])
        best[f"{s.function} | {s.dtype} | {s.scheme}"] = {"h": h, "rel_err": err}
    show(
        "1. Finite differences: best step h for f'(x) "
        "(theory: h ~ sqrt(eps) forward, eps^(1/3) central)"
    )
    show(format_table(["function", "dtype", "scheme", "best h", "rel err", "theory h"], rows))
    count_rows = []
    for n in (1, 10, 100, 1000):
        x = np.linspace(-1.0, 1.0, n)
        counts = [
            finite_diff.gradient(lambda v: float(np.sin(v).sum()), x, 1e-6, s)[1]
            for s in finite_diff.SCHEMES
        ]
        count_rows.append([n, *counts])
    show("\nEvaluations of f for an n-input gradient")
    show(format_table(["n", "forward (n+1)", "central (2n)"], count_rows))

    fig, axes = _figure(len(finite_diff.STUDY_FUNCTIONS))
    for ax, fn in zip(axes, finite_diff.STUDY_FUNCTIONS):
        for s in studies:
            if s.function != fn.name:
                continue
            style = "-" if s.scheme == "central" else "--"
            color = "C0" if s.dtype == "float32" else "C1"
            ax.loglog(
                s.hs, np.maximum(s.errors, 1e-17), style, color=color, label=f"{s.scheme} {s.dtype}"
            )
            ax.plot(*s.best, "o", color=color, ms=4)
        ax.set_title(fn.name, fontsize=9)
        ax.set_xlabel("step h")
        ax.set_ylim(1e-14, 1e3)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("relative error of f'(x)")
    axes[0].legend(fontsize=7)
    _save(fig, out / "ad_step_size.png")
    return best


# ---------------------------------------------------------------- 2. symbolic vs algorithmic
def swell_section(out: Path, show: Callable) -> list:
    rows = symbolic.swell_study(range(1, 13))
    show("\n2. Symbolic vs algorithmic derivative of exp^k(x): operation counts")
    show(
        format_table(
            ["k", "f", "symbolic f'", "symbolic + CSE", "algorithmic"],
            [
                [r.k, r.function_ops, r.symbolic_ops, r.symbolic_cse_ops, r.algorithmic_ops]
                for r in rows
            ],
        )
    )
    fig, (ax,) = _figure()
    ks = [r.k for r in rows]
    ax.plot(ks, [r.symbolic_ops for r in rows], "o-", label="symbolic f' (expression tree)")
    ax.plot(ks, [r.symbolic_cse_ops for r in rows], "s--", label="symbolic f' after CSE")
    ax.plot(ks, [r.algorithmic_ops for r in rows], "^:", label="algorithmic (d_result *= result)")
    ax.set_xlabel("k (exp applied k times)")
    ax.set_ylabel("operations")
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    _save(fig, out / "ad_swell.png")
    return [r.__dict__ for r in rows]


# ---------------------------------------------------------------- 3. forward mode
def forward_section(show: Callable) -> dict:
    loop = ExpLoop()
    x0 = 0.1
    _, exact = examples.exp_chain_grad(x0, 3)
    _, d_dual = dual.derivative(examples.exp_chain, x0)
    _, d_fwd = loop.value_and_grad(x0, 3, "fwdmode")
    show("\n3. Forward mode: d/dx exp(exp(exp(x))) at x = 0.1")
    show(
        format_table(
            ["method", "derivative"],
            [["analytic", exact], ["dual numbers", d_dual], ["ti.ad.FwdMode", d_fwd]],
            digits=12,
        )
    )
    chain, xs = Chain2x2(), np.array([0.3, 0.7])
    jac = {
        "analytic": examples.chain_2x2_jacobian(*xs),
        "dual numbers (2 passes)": dual.jacobian(examples.chain_2x2, xs)[1],
        "FwdMode (2 passes, one per input)": chain.jacobian_forward(xs)[1],
        "Tape (2 passes, one per output)": chain.jacobian_reverse(xs)[1],
    }
    show(
        "\nJacobian of (w0, w1) = h(g(f(x0, x1))) at x = (0.3, 0.7) with\n"
        "f = x0*x1 + sin x0, g = exp(y/2), h = (cos z, log(1+z^2))"
    )
    show(
        format_table(
            ["method", "dw0/dx0", "dw0/dx1", "dw1/dx0", "dw1/dx1"],
            [[k, *v.ravel()] for k, v in jac.items()],
            digits=10,
        )
    )
    return {
        "exp3_x0.1": {"analytic": exact, "dual": d_dual, "fwdmode": d_fwd},
        "jacobian": {k: v.tolist() for k, v in jac.items()},
    }


# ---------------------------------------------------------------- 4-5. control flow, the bug
def reverse_section(show: Callable) -> dict:
    loop = ExpLoop()
    result, rows = {}, []
    for x0 in (0.1, 0.0):
        _, exact = examples.exp_chain_grad(x0, 3)
        rows.append(["analytic (product of results)", x0, exact, ""])
        for method, label in METHODS.items():
            _, g = loop.value_and_grad(x0, 3, method)
            ok = abs(g - exact) <= 1e-9 * abs(exact)
            rows.append([label, x0, g, "ok" if ok else "WRONG"])
            result[f"{method} x={x0}"] = g
    show("\n4-5. Reverse mode with control flow: r = x; 3 times r = exp(r); dr/dx")
    show(format_table(["method", "x", "dr/dx", ""], rows, digits=10))
    wrows = []
    for x0 in (0.05, 0.11, 0.5, 2.0, 9.0):
        _, exact, _ = examples.exp_while_grad(x0)
        _, g, n = loop.while_value_and_grad(x0)
        wrows.append([x0, n, exact, g])
        result[f"while x={x0}"] = g
    show(
        "\nWhile loop: r = exp(r) while 0.1 < r < 10, explicit stack "
        "(the reverse loop runs for the stack's length)"
    )
    show(format_table(["x", "steps", "analytic", "stack"], wrows, digits=10))
    return result


# ---------------------------------------------------------------- 6. cheap gradient
def cost_section(out: Path, show: Callable, sizes, max_forward_n: int) -> dict:
    rows = cost.cost_study(sizes, max_forward_n)
    reverse_ratios = [r.ratio(r.reverse_s) for r in rows]
    show(
        "\n6. Cheap gradient: time of the full gradient / time of one evaluation\n"
        "of L(x) = sum_i sin(x_i) cos(x_i+1)"
    )
    show(
        format_table(
            ["n", "eval [us]", "reverse/eval", "forward/eval", "central FD/eval"],
            [
                [
                    r.n,
                    r.eval_s * 1e6,
                    r.ratio(r.reverse_s),
                    r.ratio(r.forward_s),
                    r.ratio(r.central_s),
                ]
                for r in rows
            ],
        )
    )
    show(
        f"reverse/eval: median {np.median(reverse_ratios):.2f}, "
        f"max {max(reverse_ratios):.2f} (a constant, whatever n)"
    )
    fig, (ax,) = _figure()
    ns = np.array([r.n for r in rows])
    for attr, style, label in (
        ("forward_s", "o-", "forward mode (n FwdMode passes)"),
        ("central_s", "s--", "central differences (2n evaluations)"),
        ("reverse_s", "^-", "reverse mode (1 Tape pass)"),
    ):
        pts = [(r.n, r.ratio(getattr(r, attr))) for r in rows if getattr(r, attr) is not None]
        ax.loglog(*zip(*pts), style, label=label)
    ax.loglog(ns, ns, ":", color="gray", label="slope 1 (∝ n)")
    ax.set_xlabel("number of inputs n")
    ax.set_ylabel("gradient time / evaluation time")
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    _save(fig, out / "ad_cost.png")
    return {
        "rows": [r.__dict__ for r in rows],
        "reverse_over_eval_median": float(np.median(reverse_ratios)),
        "reverse_over_eval_max": float(max(reverse_ratios)),
    }


# ---------------------------------------------------------------- 7. discrete choices
def discrete_section(out: Path, show: Callable) -> dict:
    rows = discrete.agreement()
    show(
        "\n7. Discrete choices: record the choice (branch, neighbour, permutation) in the\n"
        "forward pass, replay it in reverse; AD against central differences (h = 1e-6)"
    )
    show(
        format_table(
            ["example", "where", "t", "AD", "central FD", "left", "right"],
            [[r["example"], r["where"], r["t"], r["ad"], r["central_fd"], r["left"], r["right"]]
             for r in rows],
            digits=8,
        )
    )  # fmt: skip
    away = [abs(r["ad"] - r["central_fd"]) / abs(r["ad"]) for r in rows if r["where"] == "away"]
    show(f"away from switching points: max relative difference {max(away):.1e}")
    data = discrete.sweep()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.4, 5.0), dpi=90, layout="constrained")
    axes = fig.subplots(2, 2, sharex="col")
    for col, (name, d) in enumerate(data.items()):
        axes[0, col].plot(d["t"], d["loss"], color="C0")
        axes[0, col].set_title(name, fontsize=9)
        axes[1, col].plot(d["t"], d["ad"], "-", color="C1", label="AD (choice replayed)")
        axes[1, col].plot(d["t"], d["fd"], "--", color="C2", label=f"central FD, h = {d['h']}")
        for ax in axes[:, col]:
            ax.axvline(d["switch"], color="gray", lw=0.8, ls=":")
        axes[1, col].set_xlabel("t")
        axes[1, col].grid(True, alpha=0.3)
    axes[0, 0].set_ylabel("loss L(t)")
    axes[1, 0].set_ylabel("dL/dt")
    axes[1, 0].legend(fontsize=7)
    _save(fig, out / "ad_switch.png")
    return {"agreement": rows, "max_rel_diff_away": max(away)}


def write_report(
    out, sizes=(1, 4, 16, 64, 256, 1024, 4096), max_forward_n: int = 1024, show: Callable = print
) -> dict:
    """Run all studies, ``show`` their tables, write PLOTS and ``ad.json`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "step_size": step_size_section(out, show),
        "swell": swell_section(out, show),
        "forward": forward_section(show),
        "reverse": reverse_section(show),
        "cost": cost_section(out, show, sizes, max_forward_n),
        "discrete": discrete_section(out, show),
    }
    save_json(out / "ad.json", summary)
    show(f"\nwrote {', '.join(PLOTS)} and ad.json to {out}")
    return summary
