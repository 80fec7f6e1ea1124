"""The ``structlab`` command.

Top-level commands: ``data``, ``reproduce``, ``report``, ``evidence``. Each part adds its own command group from
``structlab/<part>/cli.py``, which defines ``register(subparsers) -> None``; a part that has none yet
is left out of ``--help``. Errors print as one line (``error: ...``) unless ``--debug`` is given. Output
piped into a reader that stops early (``structlab ... | head``) ends the command quietly with status 141.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from structlab import runtime
from structlab.errors import StructlabError
from structlab.jobs import EXECUTORS
from structlab.reproduce import DEFAULT_RESULTS, PARTS, SCALES

# Errors that come from the user's input or environment: shown as one line without a traceback.
USER_ERRORS = (StructlabError, ValueError, TypeError, FileNotFoundError, PermissionError, KeyError)


# What a command stopped by SIGPIPE reports: 128 + the signal's number.
BROKEN_PIPE_STATUS = 141


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples in epilogs as written."""


class _Parser(argparse.ArgumentParser):
    """An argument parser that reads every negative number as a value.

    argparse takes only ``-1`` and ``-0.5`` as numbers; ``-inf`` (as in ``--output-constraint 0 -inf 0.2``)
    or ``-1e-3`` would be read as an unknown option. No structlab option looks like a number, so anything
    that ``float`` reads is a value. Sub-commands inherit the class from the top-level parser.
    """

    def _parse_optional(self, arg_string: str):  # type: ignore[no-untyped-def]
        if arg_string.startswith("-") and _is_number(arg_string):
            return None  # argparse's answer for "a positional value"
        return super()._parse_optional(arg_string)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def add_command(subparsers, name: str, help: str, examples: str = "", description: str = "") -> argparse.ArgumentParser:
    """Add a sub-command with its help text and an ``Examples:`` epilog (used by every part's cli)."""
    epilog = "Examples:\n" + textwrap.indent(textwrap.dedent(examples).strip(), "  ") if examples else None
    return subparsers.add_parser(
        name, help=help, description=description or help, epilog=epilog, formatter_class=_Formatter
    )


def _data_commands(subparsers) -> None:
    data = add_command(
        subparsers, "data", "list, verify and fetch the data sets",
        examples="""
            structlab data list
            structlab data verify ssvep-exo
            structlab data fetch shakespeare
            STRUCTLAB_DATA=../shared/data structlab data list
        """,
    )
    sub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    add_command(sub, "list", "show each data set, where it resolved, its size and licence",
                examples="structlab data list").set_defaults(func=_data_list)
    verify = add_command(sub, "verify", "check data sets' files against their recorded checksums",
                         examples="structlab data verify\nstructlab data verify audio shakespeare")
    verify.add_argument("names", nargs="*", help="data sets to verify (default: all that are present)")
    verify.set_defaults(func=_data_verify)
    fetch = add_command(sub, "fetch", "download data sets from their publishers (checksummed, resumable)",
                        examples="structlab data fetch shakespeare\n"
                                 "structlab data fetch fashion-mnist --dest /tmp/data")
    fetch.add_argument("names", nargs="+", help="data sets to download")
    fetch.add_argument("--dest", type=Path, help="folder to download into (default: the data folder)")
    fetch.set_defaults(func=_data_fetch)


def _data_list(args: argparse.Namespace) -> int:
    from structlab import data

    print(f"data folder: {data.data_root()} (set {data.DATA_ENV} to change it)")
    rows = []
    for name, ds in data.REGISTRY.items():
        found = data.find(name)
        if found is None:
            where = "missing" + (" (downloadable: structlab data fetch)" if ds.downloads else "")
            size = "-"
        else:
            where = f"{found.origin}: {found.path}"
            nbytes = data.resolved_size(name, found)
            size = _human(nbytes) if nbytes is not None else "(package)"
        rows.append((name, ds.kind, where, size, ds.licence, ds.used_by))
    for name, kind, where, size, licence, used_by in rows:
        print(f"\n{name}\n  kind:    {kind}\n  where:   {where}\n  size:    {size}\n  licence: {licence}\n"
              f"  used by: {used_by}")
    return 0


def _data_verify(args: argparse.Namespace) -> int:
    from structlab import data

    names = args.names or [n for n in data.REGISTRY if data.find(n) is not None]
    failed = 0
    for name in names:
        report = data.verify(name)
        print(report.summary())
        failed += not report.ok
    return 1 if failed else 0


def _data_fetch(args: argparse.Namespace) -> int:
    from structlab import data

    for name in args.names:
        folder = data.fetch(name, dest=args.dest / data.get(name).folder if args.dest else None)
        print(f"{name}: {folder}")
    return 0


def _human(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _reproduce_command(subparsers) -> None:
    rep = add_command(
        subparsers, "reproduce", "run every part's studies at a scale, then write the report",
        examples="""
            structlab reproduce --scale quick
            structlab reproduce --scale full --only relumip
            structlab reproduce --only tucker --study charlm --force
            structlab reproduce --scale full --executor ray --workers 8
            structlab reproduce --scale full --executor ray --address 10.0.0.5:6379
        """,
    )
    rep.add_argument("--scale", choices=SCALES, default="quick", help="quick (minutes) or full (hours)")
    rep.add_argument("--only", action="append", choices=PARTS, help="run only this part (repeatable)")
    rep.add_argument("--study", action="append", help="run only this study (repeatable)")
    rep.add_argument("--force", action="store_true", help="rerun studies whose results are current")
    rep.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="results folder (default: results)")
    rep.add_argument("--executor", choices=EXECUTORS, default="local",
                     help="where the studies' independent jobs run: local processes (default) or Ray tasks "
                          "(needs the 'cluster' extra)")
    rep.add_argument("--address", metavar="HOST:PORT",
                     help="with --executor ray: join the Ray cluster whose head listens there "
                          "(default: start a local Ray instance)")
    rep.add_argument("--workers", type=_positive_int, metavar="N",
                     help="jobs at once (default: each study's choice locally, every CPU of the Ray instance "
                          "or cluster)")
    rep.set_defaults(func=_reproduce)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return value


def _reproduce(args: argparse.Namespace) -> int:
    from structlab import jobs, report, reproduce

    executor = jobs.make_executor(args.executor, args.address, args.workers)
    outcomes = reproduce.run(args.scale, args.only, args.study, args.force, args.results, executor=executor)
    html, md = report.write_report(args.results)
    failed = [o for o in outcomes if o.status == "failed"]
    for o in failed:
        print(f"FAILED {o.part}/{o.study}: {o.error}", file=sys.stderr)
    print(f"report: {html.resolve()}")
    return 1 if failed else 0


def _report_command(subparsers) -> None:
    rep = add_command(
        subparsers, "report",
        "render stored evidence and your results into results/report.html and report.md; --docs: regenerate "
        "the evidence blocks of README.md and docs/*.md",
        examples="""
            structlab report
            structlab report --results /tmp/results
            structlab report --docs            # rewrite the marked blocks of README.md and docs/*.md
            structlab report --docs --check    # only say which blocks differ from the evidence (exit 1)
        """,
    )
    rep.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="results folder (default: results)")
    rep.add_argument("--evidence", type=Path, default=None,
                     help="evidence folder (default: the checkout's evidence/)")
    rep.add_argument("--docs", action="store_true",
                     help="regenerate the <!-- evidence:... --> blocks of README.md and docs/*.md instead")
    rep.add_argument("--check", action="store_true", help="with --docs: write nothing, exit 1 if a block differs")
    rep.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from structlab import docblocks, report

    if args.check and not args.docs:
        raise ValueError("--check: only with --docs")
    if args.docs:
        differences = docblocks.update_docs(evidence_dir=args.evidence, check=args.check)
        for diff in differences:
            print(("differs: " if args.check else "updated: ") + str(diff))
        if not differences:
            print("every evidence block of README.md and docs/*.md matches the evidence")
        return 1 if args.check and differences else 0
    html, md = report.write_report(args.results, args.evidence)
    print(f"report: {html.resolve()}\nmarkdown: {md.resolve()}")
    return 0


def _evidence_commands(subparsers) -> None:
    ev = add_command(
        subparsers, "evidence", "store full-scale results in evidence/ (what README and docs quote) and list them",
        examples="""
            structlab evidence list
            structlab evidence save tucker/charlm
            structlab evidence save --results /work/runs/full/results tucker/vit relumip/peaks
            structlab evidence save tucker/charlm \\
                --command "OMP_NUM_THREADS=1 structlab reproduce --scale full --only {part} --study {study}"
        """,
    )
    sub = ev.add_subparsers(dest="evidence_command", required=True, metavar="COMMAND")
    save = add_command(
        sub, "save",
        "copy full-scale results files (studies and benchmarks) with their figures into evidence/<part>/",
        examples="""
            structlab evidence save                       # every full-scale results file in results/
            structlab evidence save tucker/charlm subject/bench_layers
            structlab evidence save relumip/peaks --results ../runs/results \\
                --command "structlab reproduce --scale full --only {part} --study {study}"
        """,
        description="Copy full-scale results files with their figures into evidence/<part>/, recording the commit "
        "(and whether the checkout was dirty), the command, the machine, wall time and package versions. "
        "Quick-scale results, results whose last run failed and results made by code other than their "
        "recorded commit are refused; nothing is written unless every named file passes.",
    )
    save.add_argument("studies", nargs="*", metavar="PART/STUDY",
                      help="results to store (default: every full-scale results file in --results)")
    save.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="results folder (default: results)")
    save.add_argument("--evidence", type=Path, default=None, help="evidence folder (default: the checkout's evidence/)")
    save.add_argument("--command", default=None,
                      help="the command that made results files which do not record one ({part} and {study} are "
                           "filled in per file)")
    save.add_argument("--replace-newer", action="store_true",
                      help="replace stored evidence even when it was made later than the results file")
    save.set_defaults(func=_evidence_save)
    lst = add_command(sub, "list", "show the stored evidence (commit, date, scale) and the studies that have none",
                      examples="structlab evidence list")
    lst.add_argument("--evidence", type=Path, default=None, help="evidence folder (default: the checkout's evidence/)")
    lst.set_defaults(func=_evidence_list)


def _evidence_save(args: argparse.Namespace) -> int:
    from structlab import evidence

    saved = evidence.save(args.studies, args.results, args.evidence, args.command, args.replace_newer)
    print(f"{len(saved)} evidence file(s) saved; regenerate the docs with: structlab report --docs")
    return 0 if saved else 1


def _evidence_list(args: argparse.Namespace) -> int:
    from structlab import evidence

    rows, missing = evidence.listing(args.evidence)
    print(evidence.format_listing(rows, missing))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="structlab",
        description="Tucker Attention, subject-conditioned layers, ReLU networks in MILPs and AudioPairBank.",
        epilog="Examples:\n  structlab data list\n  structlab reproduce --scale quick\n  structlab tucker --help",
        formatter_class=_Formatter,
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--quiet", action="store_true", help="hide progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _data_commands(sub)
    _reproduce_command(sub)
    _report_command(sub)
    _evidence_commands(sub)
    for part in PARTS:
        module = f"structlab.{part}.cli"
        try:
            importlib.import_module(module).register(sub)
        except ModuleNotFoundError as err:
            if err.name not in (module, f"structlab.{part}"):
                raise
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command in ``argv`` (default: ``sys.argv``); returns the exit status."""
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # a reader that went away shows here rather than at interpreter exit
    except BrokenPipeError:
        # the reader stopped (``structlab ... | head``): no traceback, and no second error when Python
        # flushes stdout on exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return BROKEN_PIPE_STATUS


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quiet:
        runtime.set_progress(False)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if args.debug:
            raise
        message = str(err) if not isinstance(err, KeyError) else str(err.args[0])
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
