"""Every command in the README's and docs/'s command blocks runs, so an example can never break silently.

A command block is a fenced block marked ``bash``/``sh``/``shell``/``console``,
or an unmarked one whose lines are commands (``nnspec …``, ``python …``,
``$ …`` transcripts). Each command is either run — in a scratch directory with
the repository's ``specs/`` beside it, in the order the page gives them (a
``--resume`` follows the ``train`` it continues), with tiny overrides so that
training takes seconds (:data:`TINY_TRAIN`, :data:`TINY_BENCH`) — or skipped
for a stated reason (network, the test suite itself, an hour-long study, a
file the page only imagines). A command the classifier does not know fails
:func:`test_every_example_is_run_or_skipped_with_a_reason`: teach it here.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_INFO = {"bash", "sh", "shell", "console"}
COMMAND_WORDS = {"nnspec", "python", "python3", "torchrun", "pip"}

#: Added to every `nnspec train` / `nnspec eval`: one epoch on 512 samples.
TINY_TRAIN = ["--set", "train.epochs=1", "--set", "data.train_samples=512", "--set", "data.test_samples=512",
              "--set", "data.val=64"]  # fmt: skip
#: Added to every `nnspec bench` run: the smallest shapes and short timings; kernel runs also time one kernel
#: against eager PyTorch only, model runs the plain torch variant (torch.compile alone takes minutes on a CPU).
TINY_BENCH = ["--suite", "tiny", "--budget", "0.01"]
TINY_KERNELS = ["--only", "batch_norm", "--peers", "eager"]
TINY_MODELS = ["--variants", "torch"]


@dataclass
class Example:
    page: str
    line: int
    text: str  # the command as written (comments stripped)
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    skip: str | None = None  # the reason it is not run

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def _is_command(line: str) -> bool:
    first = line.split()[0]
    return line.startswith("$ ") or first in COMMAND_WORDS or re.match(r"^[A-Z_]+=", first) is not None


def command_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, command) for every command in the page's command blocks, `&&` chains split."""
    lines = path.read_text().splitlines()
    found: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        fence = re.match(r"^(\s*)```(\S*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        indent, info = fence.group(1), fence.group(2)
        body_start = i + 1
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        body = [(n + 1, line[len(indent):] if line.startswith(indent) else line.strip())
                for n, line in enumerate(lines[body_start:i], start=body_start)]  # fmt: skip
        i += 1
        text = [(n, line) for n, line in body if line.strip() and not line.lstrip().startswith("#")]
        transcript = any(line.startswith("$ ") for _, line in text)
        if info not in SHELL_INFO and not (info == "" and text and all(_is_command(line) for _, line in text[:1])):
            continue
        for n, line in text:
            if transcript and not line.startswith("$ "):
                continue  # the output shown after a command
            command = line[2:] if line.startswith("$ ") else line
            for part in command.split("&&"):
                found.append((n, part.strip()))
    return found


def _words(text: str) -> list[str]:
    return shlex.split(text, comments=True)


def classify(page: str, line: int, text: str) -> Example:
    """How the test runs (or why it skips) one documented command."""
    words = _words(text)
    example = Example(page, line, " ".join(words))
    env: dict[str, str] = {}
    while words and re.match(r"^[A-Z_]+=", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    example.env = env
    # Optional parts (`[--accuracy]`, `[--threshold 5]`) are left out: the page's command without them.
    words = [w for w in words if not (w.startswith("[") or w.endswith("]"))]
    if not words:
        example.skip = "no command"
        return example
    program, args = words[0], words[1:]
    if program == "pip":
        example.skip = "installs packages from the network"
    elif program in ("python", "python3") and args[:2] == ["-m", "pytest"]:
        example.skip = "runs the test suite, which this test is part of"
    elif program in ("python", "python3") and args[:2] == ["-m", "nnspec.bench.study"]:
        example.skip = "the full reproduction takes about an hour; tests/test_ablation_short.py runs its short version"
    elif program in ("python", "python3") and (args[:2] == ["-m", "nnspec.bench"] or args[:1] == ["nnspec/bench/__main__.py"]):
        given = args[2:] if args[0] == "-m" else args[1:]
        example.argv = [sys.executable, *args[: len(args) - len(given)], *_bench_args(given)]
    elif program == "nnspec":
        example.argv = [sys.executable, "-m", "nnspec", *args]
        if args[:1] == ["validate"] and any(not (REPO / a).exists() for a in args[1:] if not a.startswith("-")):
            example.skip = "a transcript of a file the page imagines (not in the repository)"
        elif args[:1] in (["train"], ["eval"]):
            example.argv += TINY_TRAIN
        elif args[:1] == ["bench"]:
            example.argv = [sys.executable, "-m", "nnspec", "bench", *_bench_args(args[1:])]
    elif program == "torchrun":
        # One process: the CLI path under torchrun is what the example shows; the 2-process numerics are
        # tests/test_distributed.py's. torch ships torchrun as torch.distributed.run.
        nproc = [a for a in args if a.startswith("--nproc_per_node")]
        rest = [a if a not in nproc else "--nproc_per_node=1" for a in args]
        example.argv = [sys.executable, "-m", "torch.distributed.run", *rest, *TINY_TRAIN]
    # Anything else is left with neither argv nor skip: the test below reports it as unknown.
    return example


def _bench_args(args: list[str]) -> list[str]:
    args = [a for a in args if a != "--quick"]  # --quick's shapes take minutes here; tiny ones run the same code
    if args[:1] == ["compare"]:
        return args
    return args + TINY_BENCH + (TINY_MODELS if args[:1] == ["models"] else TINY_KERNELS) + ["--out", "BENCH_OUT"]


def all_examples() -> list[Example]:
    return [classify(str(path.relative_to(REPO)), n, text) for path in PAGES for n, text in command_lines(path)]


def test_every_example_is_run_or_skipped_with_a_reason():
    examples = all_examples()
    assert len(examples) >= 20, [e.where for e in examples]  # the parser finds the pages' commands
    unknown = [f"{e.where}: {e.text}" for e in examples if not e.argv and not e.skip]
    assert not unknown, "commands this test does not know how to run; teach tests/test_docs_examples.py:\n" + "\n".join(unknown)  # fmt: skip
    run = {e.text for e in examples if not e.skip}
    assert "nnspec compile specs/mlp.yaml" in run and "nnspec train specs/mlp.yaml --seeds 3" in run


def test_the_parser_finds_commands_in_every_kind_of_block(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```bash\npip install x && nnspec compile a.yaml  # note\n```\n\n```yaml\nnnspec: 1\n```\n\n"
                    "```\n$ nnspec validate bad.yaml\nbad.yaml:1:1: oops\n```\n\n  ```sh\n  nnspec train s.yaml\n  ```\n"
                    "```\nnot a command\n```\n")  # fmt: skip
    assert [text for _, text in command_lines(page)] == [
        "pip install x", "nnspec compile a.yaml  # note", "nnspec validate bad.yaml", "nnspec train s.yaml",
    ]  # fmt: skip


def _newest(pattern: str, cwd: Path) -> str:
    matches = sorted(cwd.glob(pattern), key=lambda p: p.stat().st_mtime)
    assert matches, f"no {pattern} to stand for the page's placeholder"
    return str(matches[-1].relative_to(cwd))


def _resolve_placeholders(argv: list[str], cwd: Path, bench_outs: list[str]) -> list[str]:
    resolved = []
    for word in argv:
        if "<time>" in word:
            word = _newest(word.replace("<time>", "*").rstrip("/"), cwd)
        elif word == "BENCH_OUT":
            word = f"bench-{len(bench_outs)}"
            bench_outs.append(word)
        elif re.fullmatch(r"(bench-reports/|reports/)?[AB](\.json|/report\.json)?", word):
            assert len(bench_outs) >= 2, "bench compare needs two earlier bench runs on the page"
            word = bench_outs[-2] if "A" in word else bench_outs[-1]  # a folder: compare accepts report folders
        resolved.append(word)
    return resolved


@pytest.mark.slow
@pytest.mark.parametrize("page", [str(p.relative_to(REPO)) for p in PAGES])
def test_the_page_examples_run(page, tmp_path):
    examples = [e for e in all_examples() if e.page == page and not e.skip]
    if not examples:
        pytest.skip(f"{page} has no command to run")
    for name in ("specs", "nnspec", "kernels"):  # the checkout as the page's reader sees it
        (tmp_path / name).symlink_to(REPO / name)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("NNSPEC_DATA", str(REPO.parent / "shared" / "data"))
    failures, bench_outs = [], []
    for example in examples:
        argv = _resolve_placeholders(example.argv, tmp_path, bench_outs)
        extra_env = {k: (str(tmp_path) if v == "." else v) for k, v in example.env.items() if k != "NNSPEC_DATA"}
        result = subprocess.run(argv, cwd=tmp_path, env={**env, **extra_env}, capture_output=True, text=True,
                                timeout=600)  # fmt: skip
        if result.returncode != 0:
            failures.append(f"{example.where}: `{example.text}` exited {result.returncode}:\n"
                            f"{(result.stderr or result.stdout)[-1500:]}")  # fmt: skip
    assert not failures, "\n\n".join(failures)


def test_the_readme_plan_table_is_what_compile_prints(capsys, monkeypatch):
    """The README shows `nnspec compile specs/mlp.yaml`'s output; it must be the real output, line numbers included."""
    from nnspec.cli import main

    readme = (REPO / "README.md").read_text()
    shown = re.search(r"`nnspec compile specs/mlp\.yaml` shows exactly.*?```\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(REPO)
    assert main(["compile", "specs/mlp.yaml"]) == 0
    assert capsys.readouterr().out == shown
