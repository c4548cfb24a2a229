"""The loop driver shared by pretraining (a step is an optimizer step) and fine-tuning (a step is an epoch).

``drive`` owns the cadence only: run ``step`` for each index, evaluate, log and checkpoint at their intervals (and
always after the last step), stop early when asked. What a step, an evaluation or a save does is the job's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Metrics = dict[str, float]


@dataclass
class Cadence:
    """Every how many steps to evaluate, log and save (0: only after the last step)."""

    evaluate: int = 0
    log: int = 1
    save: int = 0

    @staticmethod
    def due(every: int, done: int, last: bool) -> bool:
        return last or (every > 0 and done % every == 0)


def drive(
    start: int,
    stop: int,
    step: Callable[[int], Metrics],
    cadence: Cadence,
    *,
    evaluate: Callable[[int], Metrics] | None = None,
    log: Callable[[int, Metrics], None] | None = None,
    save: Callable[[int, Metrics], None] | None = None,
    should_stop: Callable[[int, Metrics], bool] | None = None,
) -> Metrics:
    """Run steps ``start .. stop-1``; callbacks get the number of steps done. -> the last step's metrics."""
    metrics: Metrics = {}
    for i in range(start, stop):
        metrics = dict(step(i))
        done = i + 1
        last = done == stop
        if evaluate is not None and Cadence.due(cadence.evaluate, done, last):
            metrics.update(evaluate(done))
        stopping = should_stop is not None and should_stop(done, metrics)
        if log is not None and Cadence.due(cadence.log, done, last or stopping):
            log(done, metrics)
        if save is not None and Cadence.due(cadence.save, done, last or stopping):
            save(done, metrics)
        if stopping:
            break
    return metrics
