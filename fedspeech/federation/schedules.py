"""Learning-rate schedules indexed by server round.

One small class per shape. The same classes serve the client learning rate (sent to
clients in the train ConfigRecord) and the server optimiser's learning rate. A
schedule is a callable ``schedule(server_round) -> float`` with ``server_round``
starting at 1, as Flower numbers rounds. Schedules hold no state, so resuming a run
at round ``r`` only needs ``r``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Schedule(Protocol):
    """Anything that maps a server round (1-based) to a learning rate."""

    def __call__(self, server_round: int) -> float: ...


def _check_round(server_round: int) -> int:
    if int(server_round) < 1:
        raise ValueError(f"server_round starts at 1, got {server_round}")
    return int(server_round)


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not value > 0.0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


class Constant:
    """The same learning rate every round."""

    def __init__(self, value: float) -> None:
        self.value = _check_positive("value", value)

    def __call__(self, server_round: int) -> float:
        _check_round(server_round)
        return self.value

    def __repr__(self) -> str:
        return f"Constant(value={self.value:g})"


class StepDecay:
    """``value * gamma ** (r // every)`` with ``r = server_round - 1``.

    ``r`` is the number of rounds already completed, so the first ``every`` rounds run
    at ``value`` and the rate is multiplied by ``gamma`` after every ``every`` rounds.
    """

    def __init__(self, value: float, gamma: float, every: int) -> None:
        self.value = _check_positive("value", value)
        self.gamma = _check_positive("gamma", gamma)
        if int(every) < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = int(every)

    def __call__(self, server_round: int) -> float:
        r = _check_round(server_round) - 1
        return self.value * self.gamma ** (r // self.every)

    def __repr__(self) -> str:
        return f"StepDecay(value={self.value:g}, gamma={self.gamma:g}, every={self.every})"


class LinearWarmup:
    """Ramp linearly to ``value`` over ``warmup_rounds``, then follow ``then``.

    Round ``r <= warmup_rounds`` gets ``value * r / warmup_rounds`` (never zero, so the
    first round already moves the model). Afterwards ``then(r - warmup_rounds)`` is used
    when given (e.g. a ``StepDecay`` that starts counting after warm-up), else
    ``value``. Warm-up matters for large speech encoders where a full server or client
    step on the first rounds can diverge.
    """

    def __init__(self, value: float, warmup_rounds: int, then: Schedule | None = None) -> None:
        self.value = _check_positive("value", value)
        if int(warmup_rounds) < 1:
            raise ValueError(f"warmup_rounds must be >= 1, got {warmup_rounds}")
        self.warmup_rounds = int(warmup_rounds)
        self.then = then

    def __call__(self, server_round: int) -> float:
        r = _check_round(server_round)
        if r <= self.warmup_rounds:
            return self.value * r / self.warmup_rounds
        if self.then is None:
            return self.value
        return float(self.then(r - self.warmup_rounds))

    def __repr__(self) -> str:
        return (
            f"LinearWarmup(value={self.value:g}, warmup_rounds={self.warmup_rounds}, "
            f"then={self.then!r})"
        )


def as_schedule(value: float | int | Schedule) -> Schedule:
    """Accept a bare number (constant rate) or a schedule object."""
    if isinstance(value, bool):
        raise TypeError("a learning rate cannot be a bool")
    if isinstance(value, (int, float)):
        return Constant(float(value))
    if callable(value):
        return value
    raise TypeError(f"expected a number or a schedule, got {type(value).__name__}")
