"""What a checkpoint carries besides the Trainer's own files: kubetune-state.json.

The Trainer restores weights, optimizer, scheduler, RNG and data position itself; this is
the rest a resumed run needs to behave as if it had never stopped: the best evaluation so
far (which checkpoint to keep and export), the early-stopping patience, and the metrics
history up to the checkpoint's step (steps after it were lost and are redone, once).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

RESUME_STATE = "kubetune-state.json"  # inside each checkpoint directory


@dataclass
class TrainingState:
    best_eval_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    eval_loss: float | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        # camelCase keys: the format checkpoints already in storage were written with.
        return json.dumps({"bestEvalLoss": self.best_eval_loss, "bestStep": self.best_step,
                           "evalsWithoutImprovement": self.evals_without_improvement, "evalLoss": self.eval_loss,
                           "metrics": self.metrics})

    @classmethod
    def from_json(cls, text: str) -> "TrainingState":
        d = json.loads(text)
        return cls(best_eval_loss=d["bestEvalLoss"], best_step=d["bestStep"],
                   evals_without_improvement=d["evalsWithoutImprovement"], eval_loss=d["evalLoss"],
                   metrics=list(d["metrics"]))
