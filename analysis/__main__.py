"""``python -m analysis {figures,list,verify,bench}``."""

from __future__ import annotations

import argparse
import sys
import time


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p_fig = sub.add_parser("figures", help="regenerate figures into figures/ (PNG, PDF, JSON)")
    p_fig.add_argument("--only", nargs="+", metavar="NAME", help="only these figures")
    p_fig.add_argument("--fast", action="store_true", help="small settings (for tests)")
    p_fig.add_argument("--out", default="figures", help="output folder (default: figures)")
    p_fig.add_argument("--no-verify", action="store_true", help="skip the verification report")

    sub.add_parser("list", help="list the registered figures")

    p_ver = sub.add_parser("verify", help="check every theory claim, print a table")
    p_ver.add_argument("--json", metavar="PATH", help="also write the rows as JSON")

    p_bench = sub.add_parser("bench", help="speed/accuracy/memory benchmark")
    p_bench.add_argument("--fast", action="store_true")
    p_bench.add_argument("--out", default="figures")

    args = parser.parse_args(argv)
    if args.command == "list":
        return _list()
    if args.command == "figures":
        return _figures(args)
    if args.command == "verify":
        from .verify import main as verify_main

        return verify_main(json_path=args.json)
    if args.command == "bench":
        from .bench import main as bench_main

        return bench_main(fast=args.fast, out=args.out)
    return 2


def _list():
    from .registry import load_all

    figures = load_all()
    width = max((len(n) for n in figures), default=0)
    for name, (desc, _) in sorted(figures.items()):
        print(f"{name:<{width}}  {desc}")
    if not figures:
        print("(no figures registered)")
    return 0


def _figures(args):
    import matplotlib

    matplotlib.use("Agg")
    from .registry import load_all, save

    status = 0
    if not args.no_verify and not args.only:
        try:
            from .verify import main as verify_main
        except ModuleNotFoundError:
            pass
        else:
            status = verify_main(json_path=None)
    figures = load_all()
    names = args.only or sorted(figures)
    unknown = [n for n in names if n not in figures]
    if unknown:
        print(f"unknown figure(s): {', '.join(unknown)}; see `python -m analysis list`")
        return 2
    for name in names:
        t0 = time.perf_counter()
        result = figures[name][1](fast=args.fast)
        paths = save(name, result, args.out)
        print(f"{name:<28} {time.perf_counter() - t0:7.1f} s  -> {paths[0].parent}/{name}.*")
    if not names:
        print("(no figures registered)")
    return status


if __name__ == "__main__":
    sys.exit(main())
