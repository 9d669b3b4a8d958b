"""Command-line options of ``nnspec bench`` (and ``python -m nnspec.bench``).

Only argparse here: ``nnspec --help`` builds this parser without importing torch.

    nnspec bench [--quick] [options]            kernels + models, default suite
    nnspec bench kernels [options]              the kernel suite (the full sweep on a GPU)
    nnspec bench models SPEC... [--accuracy]    the model suite
    nnspec bench compare A.json B.json [--threshold PCT] [--fail-on-regression]
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

SUITE_NAMES = ("tiny", "quick", "default", "gpu-check", "full")


def _csv(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _common(p: argparse.ArgumentParser, sub: bool) -> None:
    # In a sub-command the options default to SUPPRESS so that a value given before the
    # sub-command (``nnspec bench --out X kernels``) is not overwritten by the default.
    d = (lambda v: argparse.SUPPRESS) if sub else (lambda v: v)
    g = p.add_argument_group("run options")
    g.add_argument("--quick", action="store_true", default=d(False),
                   help="small shapes, about 2 minutes on a 2-core CPU (same as --suite quick)")  # fmt: skip
    g.add_argument("--suite", choices=SUITE_NAMES, default=d(None),
                   help="shape set; default: 'default' (bench) or 'full' (bench kernels) on CUDA, 'quick' on a CPU")
    g.add_argument("--out", metavar="DIR", default=d(None), help="report folder (default bench-reports/<device>-<date>/ in the current directory)")
    g.add_argument("--device", choices=("auto", "cuda", "cpu"), default=d("auto"))
    g.add_argument("--threads", type=int, default=d(None), metavar="N",
                   help="torch threads (CPU timing); default: torch's current setting")  # fmt: skip
    g.add_argument("--budget", type=float, default=d(None), metavar="SECONDS",
                   help="timing budget per row (default 0.1 s on CUDA, 0.15-0.5 s on a CPU by suite)")  # fmt: skip
    g.add_argument("--seed", type=int, default=d(0))
    g.add_argument("-q", "--quiet", action="store_true", default=d(False), help="no progress lines")


def _kernel_opts(p: argparse.ArgumentParser, sub: bool) -> None:
    d = (lambda v: argparse.SUPPRESS) if sub else (lambda v: v)
    g = p.add_argument_group("kernel suite")
    g.add_argument("--only", type=_csv, default=d(None), metavar="KERNEL[,KERNEL]",
                   help="linear_leaky_relu, softmax_cross_entropy, batch_norm")  # fmt: skip
    g.add_argument("--dtypes", type=_csv, default=d(None), metavar="DTYPE[,DTYPE]",
                   help="float32, bfloat16, float16 (default: float32,bfloat16 on CUDA; float32 on a CPU)")  # fmt: skip
    g.add_argument("--peers", type=_csv, default=d(None), metavar="PEER[,PEER]",
                   help="eager, compile, liger (default: all; liger only where installed, CUDA)")  # fmt: skip
    g.add_argument("--no-compile", action="store_true", default=d(False), help="drop the torch.compile peers")
    g.add_argument("--graph-below-us", type=float, default=d(50.0), metavar="US",
                   help="CUDA: re-time a group with CUDA graphs when eager takes less than this (default 50)")  # fmt: skip
    g.add_argument("--interpreter-check", action=argparse.BooleanOptionalAction, default=d(None),
                   help="CPU: also run the Triton kernels through Triton's interpreter on tiny shapes "
                        "(correctness only, never timed; default on for CPU runs of the quick suite)")  # fmt: skip


def _model_opts(p: argparse.ArgumentParser, sub: bool) -> None:
    d = (lambda v: argparse.SUPPRESS) if sub else (lambda v: v)
    g = p.add_argument_group("model suite")
    g.add_argument("--batch-size", type=int, default=d(None), metavar="N", help="default: the spec's train.batch_size")
    g.add_argument("--variants", type=_csv, default=d(None), metavar="V[,V]",
                   help="nnspec-triton, torch, torch+compile, torch+step-compile (default: all)")  # fmt: skip
    g.add_argument("--accuracy", action="store_true", default=d(False),
                   help="also train each spec fully (nnspec.train): test accuracy, time to accuracy")  # fmt: skip
    g.add_argument("--target-accuracy", type=float, default=d(None), metavar="FRACTION",
                   help="with --accuracy: report the training time until validation accuracy first reaches this "
                        "(e.g. 0.97); default: the whole run's wall time")  # fmt: skip
    g.add_argument("--set", action="append", default=d([]), metavar="KEY.PATH=VALUE",
                   help="override passed to the --accuracy training runs; repeatable")  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every option and sub-command of ``bench`` to ``parser``."""
    _common(parser, sub=False)
    _kernel_opts(parser, sub=False)
    _model_opts(parser, sub=False)
    parser.add_argument("--specs", nargs="+", default=None, metavar="SPEC",
                        help="specs for the model part of the default suite (default: specs/mlp.yaml, "
                             "specs/cnn_residual.yaml; only mlp.yaml with --quick)")  # fmt: skip
    sub = parser.add_subparsers(dest="bench_command", metavar="{kernels,models,compare}")
    k = sub.add_parser("kernels", help="each kernel vs PyTorch eager / torch.compile / Liger, fwd and fwd+bwd")
    _common(k, sub=True)
    _kernel_opts(k, sub=True)
    m = sub.add_parser("models", help="training-step throughput (and --accuracy) of compiled specs")
    m.add_argument("model_specs", nargs="+", metavar="SPEC")
    _common(m, sub=True)
    _model_opts(m, sub=True)
    c = sub.add_parser("compare", help="what changed between two report.json files; flags regressions")
    c.add_argument("report_a", metavar="A.json")
    c.add_argument("report_b", metavar="B.json")
    c.add_argument("--threshold", type=float, default=5.0, metavar="PCT",
                   help="flag changes beyond this many percent (accuracy: percentage points); default 5")  # fmt: skip
    c.add_argument("--fail-on-regression", action="store_true", help="exit 1 when any row regressed")
    c.add_argument("--all", action="store_true", dest="show_all", help="list every matched row, not only changes")


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    """Execute parsed ``bench`` arguments; returns the exit code."""
    if getattr(args, "bench_command", None) == "compare":
        from nnspec.bench.compare import main as compare_main

        return compare_main(args.report_a, args.report_b, threshold_pct=args.threshold,
                            fail_on_regression=args.fail_on_regression, show_all=args.show_all)  # fmt: skip
    from nnspec.bench.suite import run_suite

    return run_suite(args, list(sys.argv if argv is None else argv))


def main(argv: Sequence[str] | None = None, prog: str = "python -m nnspec.bench") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Benchmark nnspec's kernels and compiled specs.")
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
        command = [prog, *(sys.argv[1:] if argv is None else argv)]
        return run(args, command)
    except BrokenPipeError:  # `… | head`: stop quietly, as Unix tools do (see nnspec.cli)
        import os

        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
