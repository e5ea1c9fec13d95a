"""Failed trials: a search stops when its last few trials all failed for the same reason
(the rest of the budget would buy nothing)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

__all__ = ["FAIL_REASON", "SAME_FAILURE_LIMIT", "repeated_failure"]

FAIL_REASON = "fail_reason"  # trial user attribute: why it failed, one line
SAME_FAILURE_LIMIT = 3  # trials failed in a row for the same reason that stop a search


def repeated_failure(study: optuna.Study) -> str | None:
    """The reason shared by the study's last SAME_FAILURE_LIMIT trials if each failed with it."""
    from optuna.trial import TrialState

    last = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)[-SAME_FAILURE_LIMIT:]
    if len(last) < SAME_FAILURE_LIMIT or any(t.state != TrialState.FAIL for t in last):
        return None
    reasons = {t.user_attrs.get(FAIL_REASON) for t in last}
    if len(reasons) != 1 or None in reasons:
        return None
    return str(next(iter(reasons)))
