"""No kept autotune configuration of the Linear+LeakyReLU kernels spills registers on sm_90.

Checked without a GPU: ``python -m nnspec.bench.precompile --aot`` records the launches
nnspec's own wrappers make at the shipped specs' layer shapes and batch sizes, keeps the
configurations the autotuner's pruner keeps there, compiles every one of them for sm_90 with
the argument specialisation a launch gets (16-divisible integers marked so: the MNIST layer
784 -> 200 is not, and that is what made most large tiles spill), and reads ``ptxas -v``.
A spilling configuration is a performance bug: the autotuner would time it, and on an
unlucky shape pick it.

Slow (minutes on 2 cores the first time: every config of every kernel, dtype and alignment
class is compiled, in parallel processes; results are cached by source digest); CI runs it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_kernels_compile import _nvidia_backend_present

REPO = Path(__file__).resolve().parents[2]
# Samples in the datasets the shipped specs train on (MNIST and Fashion-MNIST): the last
# batch of an epoch has dataset % batch_size rows.
TRAIN_SAMPLES, TEST_SAMPLES = 60000, 10000
# Results of earlier runs, keyed by Triton's version and the kernels' source: a rerun only
# compiles what changed (the first run on a machine compiles everything).
CACHE = os.environ.get("NNSPEC_AOT_CACHE") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nnspec", "aot-sm90.json")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not _nvidia_backend_present(), reason="triton's NVIDIA backend (ptxas) is not installed"),
]


def spec_layer_shapes() -> list[tuple[int, int, int]]:
    """(M, K, N) of every fused Linear+LeakyReLU launch the shipped specs make on CUDA."""
    import nnspec

    shapes = set()
    for path in sorted(REPO.glob("specs/**/*.yaml")):
        spec = nnspec.load_spec(path)
        rows = nnspec.plan(spec, "cuda").rows
        batches = {spec.train.batch_size, spec.train.eval_batch_size or spec.train.batch_size}
        batches |= {TRAIN_SAMPLES % spec.train.batch_size, TEST_SAMPLES % (spec.train.eval_batch_size or 1)}
        for i, row in enumerate(rows):
            if row.kernel != "triton:linear_leaky_relu":
                continue
            depth = row.path.count(".")
            before = next(r for r in reversed(rows[:i]) if r.path.count(".") == depth)
            k, n = math.prod(before.output), math.prod(row.output)
            shapes |= {(m, k, n) for m in batches if m > 0}
    return sorted(shapes)


def test_spec_shapes_include_the_unaligned_mnist_layer():
    shapes = spec_layer_shapes()
    assert any((k, n) == (784, 200) for _, k, n in shapes)  # the MNIST MLP layer
    assert (1, 784, 200) in shapes  # the ablation baseline trains at batch 1
    assert any(n % 16 for _, _, n in shapes) and any(m % 16 == 0 and n % 16 == 0 for m, _, n in shapes)


def test_no_kept_config_spills_at_the_spec_shapes(tmp_path):
    shapes = spec_layer_shapes() + [(4096, 4096, 4096)]  # + the bench's large shape
    out = tmp_path / "aot.json"
    cmd = [sys.executable, "-m", "nnspec.bench.precompile", "--aot", "--dtypes", "bfloat16,float32",
           "--json", str(out), "--fail-on-spills", "--cache", CACHE]  # fmt: skip
    for m, k, n in shapes:
        cmd += ["--shape", f"{m},{k},{n}"]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=3000)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    bad = [f"{r['job']} {r['kernel']} {r['config']} [{r['specialisation']}]: "
           + (r["error"] or f"{r['spill_stores']} B spill stores / {r['spill_loads']} B loads at {r['regs']} registers")
           for r in rows if r["error"] or r["spill_stores"] or r["spill_loads"]]  # fmt: skip
    assert not bad, "kept autotune configs that spill or fail on sm_90:\n" + "\n".join(bad)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    # every kernel of every dtype was compiled, and both alignment classes were met
    seen = {(r["kernel"], r["job"].split(" ", 1)[1]) for r in rows}
    assert seen == {(k, d) for k in ("fwd", "dx", "dw") for d in ("bfloat16", "float32 ieee", "float32 tf32")}
    assert any("N%16" not in r["specialisation"] for r in rows if r["kernel"] == "fwd")
