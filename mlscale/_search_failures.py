"""Failed trials: each one's reason on the trial, and a search that stops when its last
few trials all failed for the same reason (the rest of the budget would buy nothing)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mlscale.errors import MlscaleError

if TYPE_CHECKING:
    import optuna

__all__ = ["FAILURE", "FAILURE_LIMIT", "QuietKnownFailures", "record_failure",
           "repeated_failure"]

FAILURE = "failure"  # trial user attribute: why it failed, one line
FAILURE_LIMIT = 3  # trials failed in a row for the same reason that stop a search


def record_failure(trial: optuna.Trial, error: BaseException) -> None:
    """Keep a failed trial's reason where progress lines and resumed searches read it."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    reason = text if isinstance(error, MlscaleError) else f"{type(error).__name__}: {text}"
    trial.set_user_attr(FAILURE, reason[:500])


def repeated_failure(study: optuna.Study) -> str | None:
    """The reason shared by the study's last FAILURE_LIMIT trials if each failed with it."""
    from optuna.trial import TrialState

    last = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)[-FAILURE_LIMIT:]
    reasons = {t.user_attrs.get(FAILURE) for t in last if t.state == TrialState.FAIL}
    if len(last) < FAILURE_LIMIT or len(reasons) != 1 or None in reasons:
        return None
    if any(t.state != TrialState.FAIL for t in last):
        return None
    return str(next(iter(reasons)))


class QuietKnownFailures(logging.Filter):
    """Drops Optuna's two warnings (the traceback, then "failed with value None") about a
    trial that failed with an MlscaleError: the search's progress line already gives that
    reason on one line. Other failures, defects, keep Optuna's traceback."""

    def __init__(self) -> None:
        super().__init__()
        self.follow_up: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and isinstance(record.exc_info[1], MlscaleError):
            self.follow_up = " ".join(message.split()[:2]) + " failed with value"
            return False
        if self.follow_up is not None and message.startswith(self.follow_up):
            self.follow_up = None
            return False
        return True
