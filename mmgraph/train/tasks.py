"""Which of the model's losses one optimizer step optimises.

A stage's `losses = [...]` chooses a subset of the model's losses (all of them by default).
With `tasks = "joint"` (the default) every step optimises their weighted sum; with
`tasks = "alternate"` step i optimises only the (i mod k)-th of the k losses, weighted as
declared: IMP's alternating per-step task schedule, where each step trains one task and a
step's gradients never mix tasks (a loss listed twice gets twice the steps). The choice
depends on the step number alone, so a resumed run steps the same losses in the same order
as one never stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TaskSchedule:
    names: tuple[str, ...]  # the stage's losses, in the order written
    weights: dict[str, float]
    alternate: bool
    every_loss: bool  # the stage names each of the model's losses once: "total" is their sum

    def task(self, step: int) -> str | None:
        """The loss step `step` (0-based within the stage) optimises; None: all of them."""
        return self.names[step % len(self.names)] if self.alternate else None

    def objective(self, losses: dict[str, torch.Tensor], step: int) -> torch.Tensor:
        """The value to differentiate. The losses not stepped join with weight 0, so every
        parameter still gets a gradient (zero from them): DDP requires that, and it is what
        JAX's alternating loops (IMP) do."""
        task = self.task(step)
        stepped = (task,) if task is not None else self.names
        if task is None and self.every_loss:
            return losses["total"]  # the model's own weighted sum: every loss is in the stage
        total = sum(self.weights[name] * losses[name] for name in stepped)
        rest = [losses[name] for name in self.weights if name not in stepped]
        return total + 0.0 * sum(rest) if rest else total


def schedule_for(settings: dict, weights: dict[str, float]) -> TaskSchedule:
    """The stage's schedule: `settings` are its merged train settings, `weights` the model's
    losses and their weights."""
    names = tuple(settings.get("losses") or weights)
    # the model's losses dict holds `weights`' names and "total", so this is fixed per stage
    every_loss = sorted(names) == sorted(set(weights) - {"total"})
    return TaskSchedule(names, dict(weights), settings.get("tasks") == "alternate", every_loss)
