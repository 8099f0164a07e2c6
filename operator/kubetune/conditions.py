"""kstatus conditions (Ready, Reconciling, Stalled), shared by both resources' status."""

from __future__ import annotations

from datetime import datetime

from kubetune.api import Condition


def kstatus_conditions(wanted: dict[str, str], reason: str, message: str, generation: int,
                       previous: list[Condition], now: datetime) -> list[Condition]:
    """One condition per type in `wanted` (type -> "True"/"False"), each with observedGeneration;
    lastTransitionTime moves only when that condition's status does."""
    before = {c.type: c for c in previous}
    out = []
    for ctype, status in wanted.items():
        old = before.get(ctype)
        changed = old is None or old.status != status
        out.append(Condition(
            type=ctype, status=status, reason=reason, message=message, observed_generation=generation,
            last_transition_time=now if changed else old.last_transition_time,
        ))
    return out
