"""``taichi-dr ad``: derivatives from first principles — finite differences, symbolic vs
algorithmic, forward and reverse mode, the Taichi 1.7.4 exp-in-loop bug, and the measured
cost of a gradient, programs with discrete choices. Prints tables; writes ad_step_size.png,
ad_swell.png, ad_cost.png, ad_switch.png and ad.json to --out. Runs in float64 (cpu or cuda)."""

from .. import backend
from ..ad.cost import check_size
from ..errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument(
        "--max-n", type=int, default=4096, help="largest input count of the cost study"
    )
    parser.add_argument(
        "--max-forward-n",
        type=int,
        default=1024,
        help="largest n timed by forward mode and finite differences (O(n^2) work)",
    )


def run(args) -> int:
    from ..ad.report import write_report

    max_n = check_size(args.max_n)
    if args.max_forward_n < 1:
        raise UserError(f"--max-forward-n {args.max_forward_n} must be ≥ 1; try 1024")
    backend.init(args.arch, precision="f64")
    backend.require_autodiff()
    sizes = [4**i for i in range(8) if 4**i <= max_n]
    if sizes[-1] != max_n:
        sizes.append(max_n)
    write_report(args.out, sizes=sizes, max_forward_n=args.max_forward_n)
    return 0
