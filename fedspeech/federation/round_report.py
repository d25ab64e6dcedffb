"""What happened to each sampled client in one training round, in words a researcher can check."""

from __future__ import annotations

from dataclasses import dataclass, field

#: the reason given to a sampled client that never answered in time
NO_REPLY = "no reply before the round timeout"
#: reply metrics kept per client in the round's record (small: a few numbers per client)
#: (`client-compute-s`: its training loop; `client-total-s`: its whole call, from the global model
#: received to the reply built)
CLIENT_METRIC_KEYS = ("num-seconds", "train-steps", "train-loss", "client-compute-s", "client-total-s",
                      "gpu-peak-mb", "skipped-utterances")


@dataclass
class RoundReport:
    """Who was asked, whose update counted, and why the others' did not (node ids)."""

    server_round: int
    sampled: list[int] = field(default_factory=list)
    #: replies folded into the aggregate, in arrival order
    accepted: list[int] = field(default_factory=list)
    #: the client failed: it reported an error, sent nothing, or never answered
    failed: dict[int, str] = field(default_factory=dict)
    #: the client answered, but screening refused its update
    rejected: dict[int, str] = field(default_factory=dict)
    #: why the global model was left unchanged this round (None: it was updated)
    skipped: str | None = None
    #: a few scalars of each accepted reply (node id -> metric -> value), e.g. its step time
    client_metrics: dict[int, dict[str, float]] = field(default_factory=dict)

    @property
    def timed_out(self) -> list[int]:
        """Sampled clients that never answered within the round timeout."""
        return [n for n, why in self.failed.items() if why == NO_REPLY]

    def problems(self) -> dict[int, str]:
        """Every sampled client whose update did not count, with the reason."""
        return {**self.failed, **self.rejected}
