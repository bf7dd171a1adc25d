"""Per-sample early exit over time steps (SEENN-I, as ASTER's ``main.py`` runs it), and its sweeps and oracles.

The model returns per-step logits ``[T, B, C]`` (``TET=True``).  For each sample the logits are summed over the
first t steps (a cumulative sum, as the reference: the sum sharpens the softmax as t grows); the score is the
max softmax probability (``confidence``) or ``1 - H / ln C`` (``entropy``); the sample exits at the first t whose
score exceeds the threshold, else at T, and predicts the argmax of its partial sum.  Because every layer of the
SDT model is causal in time (LIF neurons, per-step convolutions and attention), the prediction at exit step t is
the prediction of a run of only t steps (tested).  STAtten's chunked attention mixes the steps of a chunk, so
there the equality holds only at chunk boundaries.

One forward per batch serves any number of thresholds (:class:`EarlyExitSweep`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

__all__ = ["EXIT_METRICS", "exit_scores", "exit_decisions", "EarlyExitMeter", "EarlyExitSweep", "oracle_aet"]

EXIT_METRICS = ("confidence", "entropy")


def exit_scores(per_step_logits: torch.Tensor, metric: str = "confidence") -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores [T, B], cumulative logits [T, B, C])`` for per-step logits ``[T, B, C]``."""
    if metric not in EXIT_METRICS:
        raise ValueError(f"exit metric {metric!r} is not supported; choose one of {EXIT_METRICS}")
    cumulative = per_step_logits.float().cumsum(0)
    probs = cumulative.softmax(-1)
    if metric == "confidence":
        return probs.max(-1).values, cumulative
    entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1)
    return 1.0 - entropy / math.log(probs.shape[-1]), cumulative


def exit_decisions(scores: torch.Tensor, cumulative: torch.Tensor,
                   threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(exit step in 1..T [B], prediction [B])``: first t with score > threshold, else T."""
    exceed = scores > threshold
    exceed[-1] = True
    first = exceed.to(torch.int8).argmax(0)  # index of the first True
    predictions = cumulative.argmax(-1).gather(0, first.unsqueeze(0)).squeeze(0)
    return first + 1, predictions


@dataclass
class _Counts:
    correct: torch.Tensor
    exits: torch.Tensor  # [T] samples exiting at each step


class EarlyExitSweep:
    """Accuracy and average time steps for many thresholds, plus fixed-t accuracies, from one forward per batch."""

    def __init__(self, thresholds: list[float], T: int, metric: str = "confidence"):
        self.thresholds, self.T, self.metric = list(thresholds), T, metric
        self.total = 0
        self._counts: list[_Counts] | None = None
        self._fixed_correct: torch.Tensor | None = None

    def update(self, per_step_logits: torch.Tensor, labels: torch.Tensor) -> None:
        scores, cumulative = exit_scores(per_step_logits, self.metric)
        if self._counts is None:
            device = per_step_logits.device
            self._counts = [_Counts(torch.zeros((), dtype=torch.long, device=device),
                                    torch.zeros(self.T, dtype=torch.long, device=device)) for _ in self.thresholds]
            self._fixed_correct = torch.zeros(self.T, dtype=torch.long, device=device)
        for counts, threshold in zip(self._counts, self.thresholds):
            steps, predictions = exit_decisions(scores, cumulative, threshold)
            counts.correct += (predictions == labels).sum()
            counts.exits += torch.bincount(steps - 1, minlength=self.T)
        self._fixed_correct += (cumulative.argmax(-1) == labels.unsqueeze(0)).sum(1)
        self.total += labels.numel()

    def all_reduce(self) -> None:
        """Sum the counts of every process (each saw its share of the samples) into every process."""
        import torch.distributed as dist

        for counts in self._counts:
            dist.all_reduce(counts.correct)
            dist.all_reduce(counts.exits)
        dist.all_reduce(self._fixed_correct)
        total = self._fixed_correct.new_tensor(self.total)
        dist.all_reduce(total)
        self.total = int(total.item())

    def fixed_step_accuracy(self) -> list[float]:
        """Accuracy (%) with exactly t steps for t = 1..T (SEENN's ``--test-all``)."""
        return (100.0 * self._fixed_correct.double() / self.total).tolist()

    def rows(self) -> list[dict]:
        """One row per threshold: accuracy (%), average time steps and the fraction exiting at each t."""
        rows = []
        for counts, threshold in zip(self._counts, self.thresholds):
            portion = (counts.exits.double() / self.total).tolist()
            rows.append({"threshold": threshold, "metric": self.metric,
                         "accuracy": 100.0 * counts.correct.item() / self.total,
                         "avg_timesteps": sum((t + 1) * p for t, p in enumerate(portion)),
                         "portion": portion})
        return rows

    def oracle(self) -> dict:
        """The oracle numbers: accuracy at every fixed t and the theoretical AET (see :func:`oracle_aet`)."""
        correct = self._fixed_correct.tolist()
        return {"fixed_step_accuracy": self.fixed_step_accuracy(), "aet": oracle_aet(correct, self.total, self.T)}


def oracle_aet(correct_at_step: list[int], total: int, T: int) -> float:
    """SEENN's theoretical average exit time: ``[acc_1 + sum_{t>=2} t (acc_t - acc_{t-1}) + T (N - acc_T)] / N``.

    ``correct_at_step[t-1]`` is the number of samples classified correctly with exactly t steps.
    """
    acc = correct_at_step
    aet = acc[0] + sum(t * (acc[t - 1] - acc[t - 2]) for t in range(2, T + 1)) + T * (total - acc[T - 1])
    return aet / total


@dataclass
class EarlyExitMeter:
    """Early exit at one threshold with per-sample records (exit steps for the hardware model, per-class stats)."""

    T: int
    threshold: float = 0.9
    metric: str = "confidence"
    confidence_samples: int = 100  # the reference: 10 on ImageNet, 100 elsewhere
    exit_steps: list[int] = field(default_factory=list)
    predictions: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    _confidence: list[list[float]] = field(default_factory=list)  # per sample, the scores of the steps it ran
    sample_ids: list[int] | None = None  # the samples' validation-set indices once gathered (None: 0, 1, ...)

    def update(self, per_step_logits: torch.Tensor, labels: torch.Tensor) -> None:
        scores, cumulative = exit_scores(per_step_logits, self.metric)
        steps, predictions = exit_decisions(scores, cumulative, self.threshold)
        room = self.confidence_samples - len(self._confidence)
        if room > 0:
            self._confidence += [row[:t] for row, t in zip(scores[:, :room].transpose(0, 1).tolist(),
                                                           steps[:room].tolist())]
        self.exit_steps += steps.tolist()
        self.predictions += predictions.tolist()
        self.labels += labels.tolist()

    @property
    def total(self) -> int:
        return len(self.labels)

    def gather(self, sample_ids: list[int]) -> None:
        """Merge the records of every process into this one, in the order of the samples' global indices;
        ``sample_ids`` are this process's (its i-th sample's index in the validation set)."""
        import torch.distributed as dist

        mine = (sample_ids[:self.total], self.exit_steps, self.predictions, self.labels, self._confidence)
        shares = [None] * dist.get_world_size()
        dist.all_gather_object(shares, mine)
        rows = sorted((i, step, pred, label) for ids, steps, preds, labels, _ in shares
                      for i, step, pred, label in zip(ids, steps, preds, labels))
        scored = sorted((i, row) for ids, _, _, _, confidence in shares for i, row in zip(ids, confidence))
        self.sample_ids = [row[0] for row in rows]
        self.exit_steps, self.predictions, self.labels = ([row[k] for row in rows] for k in (1, 2, 3))
        self._confidence = [row for _, row in scored[:self.confidence_samples]]

    def overall(self) -> dict:
        correct = sum(p == y for p, y in zip(self.predictions, self.labels))
        counts = [self.exit_steps.count(t) for t in range(1, self.T + 1)]
        return {"accuracy": 100.0 * correct / self.total, "avg_timestep": sum(self.exit_steps) / self.total,
                "exit_timestep_ratio": [c / self.total for c in counts], "threshold": self.threshold,
                "metric": self.metric}

    def log_line(self) -> str:
        """The reference's summary line."""
        o = self.overall()
        return (f"[Early Exit] Threshold: {self.threshold}, Avg Time: {o['avg_timestep']:.4f}, "
                f"Acc: {o['accuracy']:.4f}, Portion: {[round(r, 4) for r in o['exit_timestep_ratio']]}")

    def per_class(self) -> dict:
        """Per class: samples, accuracy (%), mean and std of the exit step; the steps themselves if <= 100 (the
        reference's keys, ``std_dev`` and ``"too many to store"`` included)."""
        stats = {}
        for c in sorted(set(self.labels)):
            idx = [i for i, y in enumerate(self.labels) if y == c]
            steps = torch.tensor([self.exit_steps[i] for i in idx], dtype=torch.float64)
            entry = {"samples": len(idx),
                     "accuracy": 100.0 * sum(self.predictions[i] == c for i in idx) / len(idx),
                     "avg_timestep": steps.mean().item(),
                     "std_dev": steps.std(unbiased=False).item(),
                     "exit_timesteps": steps.long().tolist() if len(idx) <= 100 else "too many to store"}
            stats[str(c)] = entry
        return stats

    def confidence_summary(self) -> dict:
        """Score statistics per step over the first ``confidence_samples`` samples, each while it still ran (as the
        reference: a step no sample reached is left out)."""
        summary = {}
        for t in range(self.T):
            values = [row[t] for row in self._confidence if len(row) > t]
            if values:
                summary[f"timestep_{t + 1}"] = {"avg": sum(values) / len(values), "min": min(values),
                                                "max": max(values), "values": values[:20]}
        return summary

    def class_stats(self) -> dict:
        """The content of ``early_exit_class_stats.json``."""
        return {"overall": self.overall(), "per_class": self.per_class(), "confidence": self.confidence_summary()}

    def exit_record(self, sample_ids: list | None = None) -> dict:
        """Per-sample exit steps for the hardware model (``exit_steps.json``)."""
        return {"format": "early-exit/1", "T": self.T, "metric": self.metric, "threshold": self.threshold,
                "sample_ids": sample_ids or self.sample_ids or list(range(self.total)),
                "exit_steps": self.exit_steps, "predictions": self.predictions, "labels": self.labels}
