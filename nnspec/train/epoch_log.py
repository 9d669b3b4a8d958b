"""One epoch's training metrics, kept without host synchronization, and the non-finite-loss check.

Split out of the training loop (nnspec/train/trainer.py) because it is the
part with a performance argument of its own: a step only queues references,
and the device is read every ``EpochLog.FLUSH_STEPS`` steps.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from nnspec.train import distributed as D


class EpochLog:
    """One epoch's per-step losses and predictions on this rank: the epoch's metrics and the NaN check.

    Why it queues: every extra kernel in a step costs far more than its
    arithmetic (a dispatch, a launch on CUDA, cold caches after the backward
    pass), and a host read of the loss would stall the GPU. So a step only
    appends references to its outputs — no kernel, no sync. Every
    ``FLUSH_STEPS`` steps (fewer when the outputs are large: at most
    ``FLUSH_ELEMENTS`` values are held) one ``cat`` and one ``max`` turn them
    into predictions in a preallocated buffer; predictions are compared with
    the labels once, when the totals are read, and the non-finite check reads
    only the losses flushed since the last check.

    The loss is queued as a tensor on an accelerator but read at once on the
    CPU, where ``item()`` is a memory load, not a sync. There, holding tensors
    costs more than their size suggests: a step frees and reallocates large
    gradient buffers, and where they land (hot or cold memory) depends on
    what else the heap holds. Measured on the ablation's batch-size-1 MLP:
    holding each step's loss and outputs +4–14% per step, the outputs alone
    +2–4%, reading the loss under 1%.

    ``labels`` are the labels of the samples in the order this rank will see
    them, when known up front (one process: the epoch's order); otherwise (a
    shard of each batch under DDP) they are gathered from the queued steps.
    """

    FLUSH_STEPS = 64
    FLUSH_ELEMENTS = 1 << 22

    def __init__(self, device: torch.device, samples: int, steps: int, first_step: int,
                 carried: dict[str, float] | None = None, labels: Tensor | None = None):  # fmt: skip
        self.device = device
        self.first_step = first_step  # global step number of the first step logged here
        self.predictions = torch.empty(samples, dtype=torch.int64, device=device)
        self.known_labels = labels is not None
        self.labels = labels if labels is not None else torch.empty(samples, dtype=torch.int64, device=device)
        self.losses = torch.empty(steps, dtype=torch.float64, device=device)  # each step's mean loss
        self.sizes: list[int] = []  # each step's batch size on this rank
        self.count = self.steps = 0  # samples and steps already in the buffers
        self.checked = 0  # steps already checked for non-finite losses
        self.queue: list[tuple[Tensor | float, Tensor, Tensor]] = []
        self.read_losses = device.type == "cpu"  # see the class docstring
        self.flush_at = 1  # queued steps that trigger a flush; the first flush sets it from the outputs' size
        # Sums from before a mid-epoch resume: the steps they cover are not in the buffers.
        self.carried = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0, **(carried or {})}

    def add(self, loss: Tensor, outputs: Tensor, labels: Tensor) -> None:
        """One step's mean loss, outputs and labels, kept until the next flush (the loss read on the CPU).

        Not detached (a dispatch each, a measurable share of a small model's
        step): the step's backward pass has already freed the saved tensors of
        the graph behind them, so the queue holds only the graph's bookkeeping,
        and the flush runs under ``no_grad``.
        """
        queue = self.queue
        queue.append((loss.item() if self.read_losses else loss, outputs, labels))
        if len(queue) >= self.flush_at:
            self.flush()

    @torch.no_grad()
    def flush(self) -> None:
        """Move the queued steps into the buffers: one cat, one max, a few copies.

        ``max(dim).indices``, not ``argmax``: the same first-maximum index, and
        on the CPU about 1.5x (10 classes) to 3x (1000 classes) faster.
        """
        if not self.queue:
            return
        losses, outputs, labels = zip(*self.queue)
        sizes = [out.shape[0] for out in outputs]
        end, last = self.count + sum(sizes), self.steps + len(sizes)
        self.predictions[self.count:end] = torch.max(torch.cat(outputs), dim=-1).indices
        if not self.known_labels:
            torch.cat(labels, out=self.labels[self.count:end])
        self.losses[self.steps:last] = torch.tensor(losses) if self.read_losses else torch.stack(losses)
        self.sizes += sizes
        self.count, self.steps, self.queue = end, last, []
        self.flush_at = max(1, min(self.FLUSH_STEPS, self.FLUSH_ELEMENTS // max(outputs[0].numel(), 1)))

    def first_non_finite(self) -> tuple[int, float] | None:
        """(global step, loss) of the first non-finite loss logged since the last call, if any.

        This reads from the device: it is the check's one host sync.
        """
        self.flush()
        fresh = self.losses[self.checked:self.steps]
        start, self.checked = self.checked, self.steps
        if bool(torch.isfinite(fresh).all()):
            return None
        index = int(torch.nonzero(~torch.isfinite(fresh))[0])
        return self.first_step + start + index, float(fresh[index])

    def _sums(self) -> Tensor:
        """(loss sum, correct, samples) of this rank, carried sums included, as one float64 tensor."""
        self.flush()
        sizes = torch.tensor(self.sizes, dtype=torch.float64, device=self.device)
        loss_sum = torch.dot(self.losses[:self.steps], sizes)
        correct = (self.predictions[:self.count] == self.labels[:self.count]).sum().double()
        carried = torch.tensor([self.carried["loss_sum"], self.carried["correct"], self.carried["count"] + self.count],
                               dtype=torch.float64, device=self.device)  # fmt: skip
        return carried + torch.stack([loss_sum, correct, torch.zeros_like(loss_sum)])

    def mean_loss(self) -> float:
        loss_sum, _, count = self._sums().tolist()
        return loss_sum / max(count, 1.0)

    def state(self) -> dict[str, float]:
        loss_sum, correct, count = self._sums().tolist()
        return {"loss_sum": loss_sum, "correct": correct, "count": count}

    def curve(self, points: int) -> list[tuple[int, float, float]]:
        """The logged steps in at most ``points`` bins of consecutive steps: (steps so far, mean loss, accuracy).

        The x of a bin is the number of logged steps at its end; its loss is
        weighted by batch size, like the epoch's mean, and its accuracy counts
        the bin's samples. Read once per epoch (it reads the device), for the
        within-epoch curves in curves.png.
        """
        self.flush()
        n = self.steps
        if n == 0 or points < 1:
            return []
        losses = self.losses[:n].cpu()
        sizes = torch.tensor(self.sizes, dtype=torch.float64)
        hits = (self.predictions[:self.count] == self.labels[:self.count]).cpu()
        offsets = [0, *torch.cumsum(torch.tensor(self.sizes), 0).tolist()]
        bounds = torch.linspace(0, n, min(points, n) + 1).round().long().tolist()
        curve = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            if end > start:
                weights = sizes[start:end]
                loss = float((losses[start:end] * weights).sum() / weights.sum())
                curve.append((end, loss, float(hits[offsets[start]:offsets[end]].double().mean())))
        return curve

    def samples(self) -> int:
        """Samples logged so far this epoch on this rank (a progress bar's count; reads nothing from the device)."""
        return self.count + sum(outputs.shape[0] for _, outputs, _ in self.queue) + int(self.carried["count"])

    def totals(self, dist: D.Dist) -> tuple[float, float, int]:
        """(mean loss, accuracy, samples) over all ranks."""
        loss_sum, correct, count = D.all_reduce_sum(self._sums(), dist).tolist()
        return loss_sum / max(count, 1.0), correct / max(count, 1.0), int(count)


class EpochClock:
    """Wall and CPU seconds spent on one epoch's training steps, continuing across a resume.

    CPU time is recorded beside wall time because on a shared machine the two
    differ: wall time says how long the epoch took, CPU time how much work it was.
    """

    def __init__(self, spent: tuple[float, float] = (0.0, 0.0)):
        self.wall_start = time.perf_counter() - spent[0]
        self.cpu_start = time.process_time() - spent[1]

    def spent(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall_start, time.process_time() - self.cpu_start


class NonFinite(Exception):
    """The first non-finite loss, agreed over all ranks: its global step and (on the rank that saw it) value."""

    def __init__(self, global_step: int, value: float | None):
        super().__init__(global_step)
        self.global_step = global_step
        self.value = value


def check_finite(log: EpochLog, dist: D.Dist) -> None:
    """Raise at the first non-finite loss logged since the last check, agreed over all ranks."""
    found = log.first_non_finite()
    if not dist.enabled:
        if found is not None:
            raise NonFinite(*found)
        return
    never = 1 << 62
    first = torch.tensor(found[0] if found else never, dtype=torch.int64, device=log.device)
    step = int(D.all_reduce_min(first, dist))
    if step != never:
        raise NonFinite(step, found[1] if found and found[0] == step else None)
