"""Data-parallel training: 2 CPU processes (torchrun, gloo) follow the single-process loss curve.

``train.batch_size`` is the global batch; each rank takes a contiguous shard
and the loss of an uneven shard is reweighted, so for a model without dropout
or BatchNorm the two runs take the same steps up to float rounding (gradient
averaging adds in a different order). The last global batch of each epoch here
is uneven on purpose (260 = 10 * 25 + 10 training samples, then 5 + 5; and a
batch of 25 splits 13 + 12).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nnspec.train import train
from nnspec.train import checkpoint as ckpt
from nnspec.train.distributed import Dist, shard
from nnspec.train.loop import rank_batches

SPEC = """\
nnspec: 1
name: data-parallel
input: [1, 8, 8]
model: [flatten, {linear: 32}, tanh, {linear: 10}]
loss: cross_entropy
optimizer: {sgd: {lr: 0.2, momentum: 0.9}}
data:
  dataset: synthetic
  synthetic: {samples: 300, test_samples: 64}
  val: 40
train: {epochs: 3, batch_size: 25}
"""


def metrics(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_follow_the_single_process_loss_curve(tmp_path: Path):
    spec_file = tmp_path / "dp.yaml"
    spec_file.write_text(SPEC)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "nnspec", "train", str(spec_file), "--out", str(tmp_path / "two"), "-q"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stderr[-3000:]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train(spec_file, out=tmp_path / "one", quiet=True)
    finally:
        torch.set_num_threads(threads)

    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [m["step"] for m in two] == [m["step"] for m in one] == [11, 22, 33]
    for a, b in zip(one, two):
        for key in ("train_loss", "val_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["epoch"], key)
        assert b["train_accuracy"] == a["train_accuracy"]
    assert one[-1]["train_loss"] < one[0]["train_loss"] / 4  # it did learn, so the curves are not trivially equal
    w1, w2 = ckpt.load_weights(tmp_path / "one" / ckpt.WEIGHTS), ckpt.load_weights(tmp_path / "two" / ckpt.WEIGHTS)
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-5)
    # Only rank 0 wrote: one set of files, and the summary knows it ran on 2 processes.
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2 and single["world_size"] == 1
    assert summary["test_accuracy"] == pytest.approx(single["test_accuracy"], abs=1 / 64)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


@pytest.mark.parametrize(("batch", "world"), [(25, 2), (10, 2), (7, 3), (2, 4), (64, 1)])
def test_shards_partition_each_global_batch(batch: int, world: int):
    indices = torch.randperm(1000)[:batch]
    parts = [shard(indices, Dist(rank, world)) for rank in range(world)]
    assert torch.equal(torch.cat(parts), indices)  # contiguous, in order, nothing lost or repeated
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(("samples", "batch", "world"), [(25, 25, 2), (53, 10, 2), (53, 10, 3), (31, 4, 4)])
def test_reweighted_shard_losses_average_to_the_global_mean(samples: int, batch: int, world: int):
    """What DDP's gradient average sees, from the runner's own rank_batches: for every step,
    the mean over ranks of (loss weight * shard mean) is the global batch's mean - also for
    a short last batch split unevenly."""
    losses = torch.rand(samples, dtype=torch.float64)
    order = torch.randperm(samples, generator=torch.Generator().manual_seed(0))
    per_rank = [rank_batches(order, batch, Dist(rank, world)) for rank in range(world)]
    global_batches = order.split(batch)
    assert all(len(steps) == len(global_batches) for steps in per_rank)
    for step, indices in enumerate(global_batches):
        mine = [per_rank[rank][step] for rank in range(world)]
        assert torch.equal(torch.cat([rows for rows, _ in mine]), indices)
        weighted = [weight * losses[rows].mean() for rows, weight in mine if len(rows)]
        assert torch.isclose(sum(weighted) / world, losses[indices].mean()), step
    assert [weight for _, weight in rank_batches(order, batch, Dist(0, 1))] == [1.0] * len(global_batches)
