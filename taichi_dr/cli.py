"""``taichi-dr``: the single command-line entry point (also ``python -m taichi_dr``).

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args)``; every one gets the common flags ``--arch --headless --out --seed``. The
output folder is checked (and cleaned of killed runs' temporary files) before a command
starts, unless its module sets ``WRITES_OUTPUT = False``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .backend import ARCHS
from .errors import UserError
from .io import prepare_output

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "render": ("taichi_dr.commands.render", "render a mesh to image.png and aov.npz"),
    "check-grads": ("taichi_dr.commands.check_grads", "gradcheck every differentiable op"),
    "ad": ("taichi_dr.commands.ad", "derivatives from first principles: tables and plots"),
    "view": ("taichi_dr.commands.view", "interactive viewer (GGUI window, or --headless PNG)"),
    "smoke": ("taichi_dr.commands.smoke", "optimise a differentiable smoke simulation"),
    "fit": ("taichi_dr.commands.fit", "inverse rendering: recover scene parameters"),
}


def add_common(parser: argparse.ArgumentParser, out: str = "out") -> None:
    parser.add_argument("--arch", choices=ARCHS, default="cpu", help="Taichi backend")
    parser.add_argument("--headless", action="store_true", help="no window; write files only")
    parser.add_argument("--out", default=out, help="output folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taichi-dr", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add_common(p, out=f"out/{name}")
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv=None) -> int:
    """Run ``taichi-dr`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status:
    2 with one ``error:`` line for bad input, 130 after Ctrl-C."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        command = importlib.import_module(COMMANDS[args.command][0])
        if getattr(command, "WRITES_OUTPUT", True):
            prepare_output(args.out)  # before any work: never compute, then fail to save
        return command.run(args) or 0
    except KeyboardInterrupt:
        print(f"{args.command}: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except Exception as exc:
        cause = user_error(exc)
        if cause is None:
            raise  # a bug: the traceback is the useful report
        print(f"error: {cause}", file=sys.stderr)
        return 2


def user_error(exc: BaseException) -> UserError | None:
    """``exc`` if it is a :class:`UserError`, else the first one it was raised while
    handling (e.g. a library that failed again while cleaning up after our error)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
