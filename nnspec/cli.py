"""The ``nnspec`` command line: a thin layer over the Python API.

Exit codes: 0 success; 1 a run failed (e.g. the loss went non-finite);
2 bad input (spec, override, data) — reported one line per problem, never a
traceback; 130 interrupted (a resumable checkpoint is left behind); 141 the
reader of our output went away (``nnspec compile … | head``): like other Unix
tools, we then stop quietly instead of printing a BrokenPipeError traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from nnspec import __version__
from nnspec.errors import SpecError

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 1, 2, 130, 141


def _print_warnings(spec) -> None:
    for warning in spec.warnings:
        print(warning, file=sys.stderr)


def cmd_validate(args: argparse.Namespace) -> int:
    from nnspec.spec import load_spec

    failed = False
    for path in args.specs:
        try:
            spec = load_spec(path)
        except SpecError as exc:
            print(exc, file=sys.stderr)
            failed = True
            continue
        _print_warnings(spec)
        if not args.quiet:
            print(f"{path}: ok")
    return EXIT_BAD_INPUT if failed else 0


def cmd_compile(args: argparse.Namespace) -> int:
    from nnspec.compiler import plan
    from nnspec.spec import load_spec

    spec = load_spec(args.spec)
    _print_warnings(spec)
    result = plan(spec, device=args.device, kernels=args.kernels)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(result.table())
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from nnspec.spec.jsonschema import spec_json_schema

    text = json.dumps(spec_json_schema(), indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from nnspec.train import train

    overrides = list(args.set)
    if args.threads is not None:  # --threads N is --set train.threads=N: validated and recorded like one
        overrides.append(f"train.threads={args.threads}")
    train(args.spec, overrides=overrides, out=args.out, resume=args.resume, seeds=args.seeds, quiet=args.quiet)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from nnspec.train import evaluate
    from nnspec.train.evaluation import result_table

    # -q never hides the metrics: they are what eval is for (it has no progress to hide).
    result = evaluate(args.spec, checkpoint=args.checkpoint, overrides=args.set, quiet=True)
    print(result_table(result))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from nnspec.search.run import search

    search(args.spec, overrides=args.set, trials=args.trials, jobs=args.jobs, storage=args.storage,
           study=args.study, out=args.out, heartbeat=args.heartbeat, quiet=args.quiet)  # fmt: skip
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from nnspec.bench import run

    return run(args, ["nnspec", *sys.argv[1:]])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnspec", description="Declarative model specs compiled to PyTorch, trained and benchmarked."
    )
    parser.add_argument("--version", action="version", version=f"nnspec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("validate", help="check spec files; print every error as file:line:col")
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    p.set_defaults(run=cmd_validate)

    p = sub.add_parser("compile", help="show what a spec compiles to: ops, kernels, shapes, parameters, FLOPs")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--device", default="cpu", help="plan for this device (cpu or cuda; no GPU needed to plan)")
    p.add_argument("--kernels", choices=["auto", "torch", "triton"], default="auto")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(run=cmd_compile)

    p = sub.add_parser("schema", help="print the JSON Schema of spec files (draft 2020-12)")
    p.add_argument("--out", help="write to this file instead of stdout")
    p.set_defaults(run=cmd_schema)

    for name, helptext, run in (
        ("train", "train a spec and write a run directory", cmd_train),
        ("eval", "evaluate a trained run's checkpoint on the test set", cmd_eval),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("spec", metavar="SPEC", nargs="?", default=None,
                       help="the spec file (default: the run's own spec.yaml, in DIR)")  # fmt: skip
        p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override a spec value (YAML syntax), e.g. --set optimizer.lr=0.1; repeatable")  # fmt: skip
        if name == "train":
            p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
            p.add_argument("--out", help="run directory (default runs/<name>-<time>)")
            p.add_argument("--resume", metavar="DIR", help="continue the stopped run in DIR")
            p.add_argument("--seeds", type=int, default=1, metavar="N", help="repeat with N seeds; report mean ± std")
            p.add_argument("--threads", metavar="N|auto", default=None,
                           help="torch CPU threads (same as --set train.threads=N); default: the spec's "
                                "train.threads, 'auto' (1 for small steps, more for large ones)")  # fmt: skip
        else:
            p.add_argument("-q", "--quiet", action="store_true",
                           help="accepted like train's -q; eval shows no progress and always prints its metrics")  # fmt: skip
            p.add_argument("--checkpoint", required=True, metavar="DIR", help="run directory (or weights file)")
        p.set_defaults(run=run)

    p = sub.add_parser("search", help="search hyperparameters from the spec's search section (Optuna)")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--trials", type=int, metavar="N", help="finished trials wanted (default: search.trials)")
    p.add_argument("--jobs", type=int, default=1, metavar="J", help="worker processes on this machine (default 1)")
    p.add_argument("--storage", metavar="URL",
                   help="database shared by every machine of the search, e.g. postgresql://user@host/db "
                        "(default: a journal file in --out)")  # fmt: skip
    p.add_argument("--study", metavar="NAME", help="study name in the storage (default: the spec's name)")
    p.add_argument("--out", metavar="DIR", help="where trials and the report go (default searches/<name>-<time>); "
                   "run again with the same --out to continue")  # fmt: skip
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a spec value before searching, e.g. --set train.epochs=1; repeatable")  # fmt: skip
    p.add_argument("--heartbeat", type=int, default=10, metavar="S",
                   help="a worker's heartbeat, in seconds; a trial silent for 3x this is failed and retried")  # fmt: skip
    p.add_argument("-q", "--quiet", action="store_true", help="no per-trial lines")
    p.set_defaults(run=cmd_search)

    from nnspec.bench.options import add_arguments as add_bench_arguments  # argparse only

    p = sub.add_parser("bench", help="benchmark the kernels and compiled specs; write a report (md, json, png)")
    add_bench_arguments(p)
    p.set_defaults(run=cmd_bench)

    return parser


def _stop_writing_stdout() -> None:
    """After EPIPE: point stdout at /dev/null, so that the flush at interpreter exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (captured, closed): nothing to flush
        pass


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # every command's output may go to `head`
        _stop_writing_stdout()
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "train" and args.spec is None and args.resume is None:
        parser.error("train needs a SPEC (or --resume DIR, which reuses the run's own spec.yaml)")
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("nnspec: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 — user-facing errors of the runner carry .exit_code
        code = getattr(exc, "exit_code", None)
        if code is None:
            raise
        print(f"nnspec: {exc}", file=sys.stderr)
        return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
