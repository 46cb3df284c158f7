"""A job's pace, measured by its driver: samples trained per second and the time left, from the work the
tasks have done (optimiser steps, and samples as steps x batch size), not from each task's own rate, which a
short task never gets to report and which stops counting the moment a task ends.

Throughput is the work of the last WINDOW_S seconds over that time; the ETA is the steps left over a rate
smoothed with a SMOOTH_S time constant, so one burst of finishing tasks does not make it jump.
"""

from __future__ import annotations

import math
from collections import deque

from orchestrator.state import FINISHED, TaskState

WINDOW_S = 20.0
SMOOTH_S = 30.0
MIN_SPAN_S = 2.0  # a rate over less than this is noise


class Pace:
    """Feed it the job's tasks after every pull (`update`); `figures()` is what JobState.pace holds."""

    def __init__(self, planned_steps: dict[str, int], batch_sizes: dict[str, int]):
        self.planned, self.batch = planned_steps, batch_sizes  # the tasks this run trains
        self.counted: dict[str, tuple[int, int]] = {}  # name -> (attempt, step) already counted
        self.steps = self.samples = 0.0  # work done since the start, every attempt counted
        self.points: deque = deque()  # (time, steps, samples)
        self.rate: float | None = None  # smoothed steps per second
        self.left = sum(planned_steps.values())
        self.at: float | None = None

    def update(self, tasks: dict[str, TaskState], now: float) -> None:
        left = 0
        for name, planned in self.planned.items():
            task = tasks[name]
            attempt, step = self.counted.get(name, (0, 0))
            if task.attempts != attempt:  # a new attempt counts from its own step 0
                step = 0
            done = max(task.step - step, 0)
            if done:
                self.steps += done
                self.samples += done * self.batch.get(name, 0)
            self.counted[name] = (task.attempts, max(task.step, step))
            if task.status not in FINISHED:
                left += max(max(planned, task.total) - task.step, 0)
        self.left = left
        self.points.append((now, self.steps, self.samples))
        while len(self.points) > 2 and now - self.points[1][0] >= WINDOW_S:
            self.points.popleft()
        steps_per_s = self._windowed(1)
        if steps_per_s is not None:
            if self.rate is None or self.at is None:
                self.rate = steps_per_s
            else:
                keep = math.exp(-(now - self.at) / SMOOTH_S)
                self.rate = keep * self.rate + (1 - keep) * steps_per_s
        self.at = now

    def _windowed(self, column: int) -> float | None:
        (t0, *first), (t1, *last) = self.points[0], self.points[-1]
        if t1 - t0 < MIN_SPAN_S:
            return None
        return (last[column - 1] - first[column - 1]) / (t1 - t0)

    def figures(self) -> dict:
        """samples_per_s and steps_per_s (None until MIN_SPAN_S of work is seen), steps_left, eta_s, at."""
        samples_per_s = self._windowed(2) if self.points else None
        eta = self.left / self.rate if self.rate and self.rate > 0 else (0.0 if self.left == 0 else None)
        return {"samples_per_s": samples_per_s, "steps_per_s": self.rate, "steps_left": self.left,
                "eta_s": eta, "at": self.at}
