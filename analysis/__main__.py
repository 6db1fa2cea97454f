"""python -m analysis: figures, theory checks and the benchmark of lowrank_prox.

Commands:
  figures   regenerate the figures (PNG, PDF and JSON) into figures/
  list      list the registered figures
  verify    check every theory claim and print a table
  bench     speed, accuracy and memory benchmark
  claims    the papers' empirical claims, one by one, with verdicts from figures/*.json

Run "python -m analysis COMMAND --help" for the options of a command.
"""

from __future__ import annotations

import argparse
import sys
import time

FIGURES_HELP = """\
Regenerate figures: each figure's experiment runs, and NAME.png, NAME.pdf and NAME.json are
written. Without --only every figure but the benchmark is built, after the theory checks.

Output folder: figures/ for a full run. With --fast (small settings, for tests and a quick
look) the files go to a new temporary folder, or to --out; --fast never replaces the
committed figures/ unless --force is given. A progress bar is shown on a terminal (not when
output is redirected or CI is set).

Examples:
  python -m analysis figures
  python -m analysis figures --only thm31_rate fig4_method_curves
  python -m analysis figures --fast --only ridge_effect --out /tmp/quick
  python -m analysis figures --only bench
  python -m analysis figures --redraw                  # images again from figures/*.json
  python -m analysis figures --redraw --only fig2_lr_robustness --out /tmp/quick

--redraw runs nothing: it draws NAME.png and NAME.pdf again from an existing NAME.json (in
figures/, or in --out), with the same drawing code as a build, and never writes the JSON.
For a change of the drawing code only.
"""

BENCH_HELP = """\
Speed, accuracy and memory benchmark: projections (full SVD, svds, randomized SVD, LoRSum),
optimizer steps and memory, scaling with the layer size. Ratios measured side by side are
the result; absolute times depend on the machine.

The run is checked for interference: the load average before and during the run and the
spread between repeats. A noisy run is repeated once (after waiting for the load to drop);
bench.json records whether it was accepted ("acceptance"), and a rejected run is never
written into the committed figures/ (it goes to a temporary folder) unless --force is given.
Output folder: figures/ for a full run, a temporary folder with --fast, or --out.

--redraw draws bench.png and bench.pdf again from the committed figures/bench.json (or
--json PATH) without running anything: for a change of the drawing code only.
"""

VERIFY_HELP = """\
Check every claim of the theory (Proposition 1, Theorem 3.1, the ridge, the scaled variant)
numerically and print one row per claim. Exit status 1 if any claim fails.
"""


CLAIMS_HELP = """\
The papers' empirical claims, one by one: every claim of the PSI-LoRA abstract and figure
captions 1-5, of its v1 (OPLoRA) abstract and of GeoLoRA's figures 2 and 5, next to the
experiment of this project that tests it, the measured numbers with their spread over seeds,
the rule that turns them into a verdict (holds / partly / does not hold here / not tested
here) and the likely reason when a claim does not hold.

Every number is read from the committed figures/*.json; nothing is re-run (about a second).
The exit status is 0 whatever the verdicts: this is a report, not a gate.

Examples:
  python -m analysis claims
  python -m analysis claims --markdown          # the README table
  python -m analysis claims --json              # JSON on stdout
  python -m analysis claims --json claims.json  # table on stdout, JSON into the file
  python -m analysis claims --write-readme      # refresh the README block after new figures
"""


def _add_figures(sub):
    p = sub.add_parser("figures", help="regenerate figures into figures/ (PNG, PDF, JSON)",
                       description=FIGURES_HELP, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", nargs="+", metavar="NAME",
                   help="only these figures (see: python -m analysis list)")
    p.add_argument("--fast", action="store_true",
                   help="small settings; writes to a temporary folder unless --out is given")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="output folder (default: figures/, or a temporary folder with --fast)")
    p.add_argument("--force", action="store_true",
                   help="allow --fast (or a rejected benchmark) to overwrite figures/")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the theory checks run before a full regeneration")
    p.add_argument("--redraw", action="store_true",
                   help="no run: redraw NAME.png/pdf from NAME.json in figures/ (or --out)")
    return p


def _add_list(sub):
    return sub.add_parser("list", help="list the registered figures",
                          description="List the registered figures with a one-line "
                                      "description; on-demand ones are marked.")


def _add_verify(sub):
    p = sub.add_parser("verify", help="check every theory claim, print a table",
                       description=VERIFY_HELP, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")
    return p


def _add_bench(sub):
    p = sub.add_parser("bench", help="speed/accuracy/memory benchmark",
                       description=BENCH_HELP, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--fast", action="store_true",
                   help="small sizes and few repeats; writes to a temporary folder")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="output folder (default: figures/, or a temporary folder with --fast)")
    p.add_argument("--force", action="store_true",
                   help="write into figures/ even for --fast or a run rejected as noisy")
    p.add_argument("--redraw", action="store_true",
                   help="no run: redraw bench.png/pdf from an existing bench.json")
    p.add_argument("--json", metavar="PATH", default=None,
                   help="with --redraw: the bench.json to draw (default: figures/bench.json)")
    return p


def _add_claims(sub):
    p = sub.add_parser("claims", help="the papers' empirical claims with verdicts",
                       description=CLAIMS_HELP, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", metavar="PATH", nargs="?", const="-", default=None,
                   help="machine-readable report: to stdout without PATH, else into PATH")
    p.add_argument("--markdown", action="store_true",
                   help="print the table as Markdown (the README's claims section)")
    p.add_argument("--figures", metavar="DIR", default=None,
                   help="read the figure JSON from DIR (default: figures/)")
    p.add_argument("--write-readme", action="store_true",
                   help="also rewrite the README block between the claims markers")
    return p


def build_parser():
    """The argument parser of ``python -m analysis`` (one ``_add_*`` per subcommand)."""
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_figures(sub)
    _add_list(sub)
    _add_verify(sub)
    _add_bench(sub)
    _add_claims(sub)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "list":
        return _list()
    if args.command == "figures":
        return _figures(args)
    if args.command == "verify":
        from .verify import main as verify_main

        return verify_main(json_path=args.json)
    if args.command == "bench":
        if args.redraw:
            from .bench import redraw

            print("wrote " + ", ".join(map(str, redraw(args.json, args.out))))
            return 0
        from .bench import main as bench_main

        return bench_main(fast=args.fast, out=args.out, force=args.force)
    if args.command == "claims":
        from .claims import main as claims_main

        return claims_main(json_path=args.json, markdown=args.markdown,
                           figures_dir=args.figures, write_readme=args.write_readme)
    return 2


def _list():
    from .registry import ON_DEMAND, load_all

    figures = load_all()
    width = max((len(n) for n in figures), default=0)
    for name, (desc, _) in sorted(figures.items()):
        tag = " [on demand: --only]" if name in ON_DEMAND else ""
        print(f"{name:<{width}}  {desc}{tag}")
    if not figures:
        print("(no figures registered)")
    return 0


def _figures(args):
    import matplotlib

    matplotlib.use("Agg")
    from .registry import build, default_names, is_committed, load_all, output_dir, progress, save

    if args.redraw:
        return _redraw(args)
    status = 0
    if not args.no_verify and not args.only:
        try:
            from .verify import main as verify_main
        except ModuleNotFoundError:
            pass
        else:
            status = verify_main(json_path=None)
    figures = load_all()
    names = args.only or default_names()
    unknown = [n for n in names if n not in figures]
    if unknown:
        print(f"unknown figure(s): {', '.join(unknown)}; see `python -m analysis list`")
        return 2
    base = output_dir(args.out, fast=args.fast, force=args.force)
    for name in progress(names, desc="figures"):
        t0 = time.perf_counter()
        result = build(name, fast=args.fast)
        target = base
        if is_committed(base) and not args.force:  # a rejected benchmark is not committed
            target = output_dir(base, fast=args.fast, result=result)
        paths = save(name, result, target)
        print(f"{name:<28} {time.perf_counter() - t0:7.1f} s  -> {paths[0].parent}/{name}.*",
              flush=True)
    if not names:
        print("(no figures registered)")
    return status


def _redraw(args):
    from .registry import COMMITTED_DIR, DRAW, default_names, load_all, redraw

    figures = load_all()
    names = args.only or [n for n in default_names() if n in DRAW]
    unknown = [n for n in names if n not in figures]
    if unknown:
        print(f"unknown figure(s): {', '.join(unknown)}; see `python -m analysis list`")
        return 2
    folder = args.out if args.out is not None else COMMITTED_DIR
    status = 0
    for name in names:
        try:
            paths = redraw(name, folder)
        except ValueError as exc:
            print(f"{name:<28} not redrawn: {exc}")
            status = 1
            continue
        print(f"{name:<28} redrawn -> {paths[0].parent}/{name}.png, .pdf", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
