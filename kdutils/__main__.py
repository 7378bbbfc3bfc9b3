"""Command line: `python -m kdutils run|sweep|list|findings|report|bench|publish`."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from .errors import KDError


def _list() -> None:
    from .runner import notebook_parameters, notebooks

    for path in notebooks():
        print(path.stem)
        for name, spec in notebook_parameters(path).items():
            help_ = f"  # {spec['help']}" if spec.get("help") else ""
            print(f"    {name} = {spec['default']}{help_}")


def _bench(name: str) -> None:
    """Run one of the benchmarks/ folder beside the package (kept out of the library; not installed with it)."""
    from .paths import REPO_ROOT

    if not (REPO_ROOT / "benchmarks" / "__init__.py").is_file():
        raise KDError(f"`bench` runs the benchmarks/ folder of a clone of the repository; none in {REPO_ROOT}.")
    sys.path.insert(0, str(REPO_ROOT))
    from benchmarks import BENCHMARKS

    if name not in BENCHMARKS:
        for known, (_, _, what) in sorted(BENCHMARKS.items()):
            print(f"  {known}: {what}")
        if name == "list":
            return
        raise KDError(f"unknown benchmark {name!r}: choose one of the above.")
    module, func, _ = BENCHMARKS[name]
    getattr(importlib.import_module(module), func)()


def _findings(profile: str, root: Path | None, write_readme: bool) -> None:
    from . import ledger
    from .paths import default_output_root
    from .runner import notebooks

    root = root or default_output_root(profile)
    rows = ledger.collect(root, [p.stem for p in notebooks() if not p.stem.startswith("00")], profile)
    print(ledger.markdown(rows))
    if write_readme:
        print("README.md findings", "updated" if ledger.write_readme(rows) else "unchanged")


def _parser() -> argparse.ArgumentParser:
    from .paths import KERNEL_NAME  # torch-free imports: `report`, `list` and `--help` start fast
    from .progress import PROGRESS_MODES

    parser = argparse.ArgumentParser(prog="python -m kdutils", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="execute notebooks with papermill")
    run_p.add_argument("notebooks", nargs="*", help="names such as 00_overview or 04 (default: all)")
    run_p.add_argument("--profile", default="small", choices=("tiny", "small", "paper"))
    run_p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                       help="notebook parameter (a Python literal; repeatable)")
    run_p.add_argument("--output-root", type=Path, default=None,
                       help="figures/results go to OUTPUT_ROOT/<notebook> "
                            "(default: figures/ for small, runs/<profile>/ otherwise)")
    run_p.add_argument("--kernel", default=KERNEL_NAME)
    run_p.add_argument("--progress", choices=PROGRESS_MODES, default="bars",
                       help="a cell bar and a line per section, the lines only, or nothing")
    run_p.add_argument("--no-progress", action="store_true", help="the same as --progress none")
    run_p.add_argument("--force", action="store_true",
                       help="run studies whose results are already current (same code, profile and parameters)")
    run_p.add_argument("--jobs", type=int, default=1,
                       help="study notebooks run side by side, each in its own process (the overview last)")
    run_p.add_argument("--cell-timeout", type=int, default=None, metavar="SECONDS",
                       help="time limit of any one cell (default: the profile's cell_timeout)")
    sweep_p = sub.add_parser("sweep", help="one job per (seed, grid cell) on Ray, then merge the seeds")
    sweep_p.add_argument("notebook", help="a notebook name such as 04 or 04_tl_kd_shap")
    sweep_p.add_argument("--profile", default="small", choices=("tiny", "small", "paper"))
    sweep_p.add_argument("--seeds", required=True, help="comma-separated seeds, one job each: 0,7,42")
    sweep_p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                         help="a parameter of every job (a Python literal; repeatable)")
    sweep_p.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2",
                         help="a swept parameter; jobs run for every combination (repeatable)")
    sweep_p.add_argument("--address", default="local",
                         help="'local' (a private Ray on this machine), 'auto' or HOST:PORT of a Ray cluster")
    sweep_p.add_argument("--cpus-per-job", type=float, default=1.0)
    sweep_p.add_argument("--gpus-per-job", type=float, default=0.0)
    sweep_p.add_argument("--output-root", type=Path, default=None,
                         help="jobs in OUTPUT_ROOT/jobs/<notebook>/seedS, merged results in OUTPUT_ROOT/<notebook> "
                              "(default: runs/<profile>/sweeps; on a cluster a folder every node sees)")
    sweep_p.add_argument("--kernel", default=KERNEL_NAME)
    sub.add_parser("list", help="show the notebooks and their parameters")
    findings_p = sub.add_parser("findings", help="every study's claims and verdicts from its results.json")
    findings_p.add_argument("--profile", default="small", choices=("tiny", "small", "paper"))
    findings_p.add_argument("--results-root", type=Path, default=None,
                            help="folder of <study>/results.json (default: figures/ for small, runs/<profile>/)")
    findings_p.add_argument("--write-readme", action="store_true", help="regenerate the README's findings block")
    report_p = sub.add_parser("report", help="the executed notebooks of the last run as a static HTML site")
    report_p.add_argument("--from", dest="source", type=Path, default=None,
                          help="folder of executed notebooks (default: the newest runs/<profile>/)")
    report_p.add_argument("--out", type=Path, default=None, help="where to write it (default: <folder>/report)")
    bench_p = sub.add_parser("bench", help="speed benchmarks that print measured ratios")
    bench_p.add_argument("name", help="one of the repository's benchmarks/ (listed by `bench list`)")
    publish_p = sub.add_parser("publish", help="train the profile's stand-ins for published weights and ship "
                                              "them in published/ (kdutils.published)")
    publish_p.add_argument("names", nargs="*",
                           help="networks to train and ship (default: all of kdutils.published.REGISTRY)")
    publish_p.add_argument("--profile", default="small", choices=("tiny", "small"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    try:
        if args.command == "list":
            _list()
        elif args.command == "findings":
            _findings(args.profile, args.results_root, args.write_readme)
        elif args.command == "report":
            from .report import build

            build(args.source, args.out)
        elif args.command == "sweep":
            from .runner import parse_assignments
            from .sweep import parse_grid, parse_seeds, sweep

            outcome = sweep(args.notebook, args.profile, parse_seeds(args.seeds), parse_assignments(args.param),
                            parse_grid(args.grid), address=args.address, cpus_per_job=args.cpus_per_job,
                            gpus_per_job=args.gpus_per_job, output_root=args.output_root, kernel=args.kernel)
            return 1 if outcome["failed"] else 0
        elif args.command == "publish":
            from .profiles import load_profile
            from .published import REGISTRY, publish

            cfg = load_profile(args.profile)
            for name in args.names or list(REGISTRY):
                publish(name, cfg)
        elif args.command == "bench":
            _bench(args.name)
        else:
            from .runner import NotebookFailed, NotebooksFailed, parse_assignments, run

            try:
                run(args.notebooks, args.profile, parse_assignments(args.param), args.output_root,
                    args.kernel, progress="none" if args.no_progress else args.progress,
                    cell_timeout=args.cell_timeout, jobs=args.jobs, force=args.force)
            except (NotebookFailed, NotebooksFailed) as err:
                print(f"error: {err}", file=sys.stderr)
                return 1
    except KDError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
