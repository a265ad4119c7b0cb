"""``taichi-dr check-grads``: gradcheck every differentiable op in float64 against
central differences and print a table; exit status 1 if any check fails."""

from .. import backend
from ..checks import HEADER, OPS, run_checks

WRITES_OUTPUT = False  # prints a table only


def add_arguments(p) -> None:
    p.add_argument("--op", choices=OPS, default=None, help="check only this op")


def run(args) -> int:
    backend.init(args.arch, "f64")
    backend.require_autodiff()
    results = run_checks(args.op, seed=args.seed)
    print(HEADER)
    for r in results:
        print(r.row())
    failed = [r for r in results if not r.ok]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0
