"""Diverged training stops the stage: a loss or a weight that is not a finite number ends the run
with one line naming the step, before anything is saved, written or registered."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pipeline.errors import LineageError

HINT = "training diverged (a lower learning rate or grad_clip may help); nothing was written or registered"


def check_loss(losses: Mapping[str, float] | float, step: int) -> None:
    """Raise when a loss of optimiser step ``step`` (1-based) is NaN or infinite."""
    items = losses.items() if isinstance(losses, Mapping) else [("loss", losses)]
    for name, value in items:
        if not math.isfinite(float(value)):
            raise LineageError(f"{name} is {float(value)} at step {step}: {HINT}")


def check_weights(model: Any, step: int) -> None:
    """Raise when a parameter of ``model`` holds a NaN or an infinity: after step ``step``, or before
    any step (``step`` 0: the starting weights, e.g. an upstream stage's model, are already broken)."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if not torch.isfinite(p).all():
                if step == 0:
                    raise LineageError(
                        f"weight {name} of the starting model is not finite: the stage that made it "
                        "diverged; rerun it with sound params"
                    )
                raise LineageError(f"weight {name} is not finite after step {step}: {HINT}")


def check_value(value: float, name: str) -> None:
    """Raise when a figure computed from trained weights is not finite."""
    if not math.isfinite(float(value)):
        raise LineageError(f"{name} is {float(value)}: {HINT}")
