"""The round loop: configure -> stream replies -> screen and fold -> apply -> evaluate -> record.

It follows Flower's `Strategy.start` line for line (same arguments, same `Result`), with what a
long speech run needs on top: `start_round` to continue a checkpointed run, `on_round_end` to
record and checkpoint after every round, and replies streamed into the strategy's
`aggregate_train` one at a time (`ReplyStream`) instead of collected into a list.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from flwr.supercore import log

from fedspeech.federation.parameters import record_nbytes
from fedspeech.federation.replies import ReplyStream
from fedspeech.federation.round_report import RoundReport

EvaluateFn = Callable[[int, ArrayRecord], "MetricRecord | None"]


@dataclass
class RoundOutcome:
    """Everything one round produced, handed to `on_round_end`."""

    server_round: int
    arrays: ArrayRecord                   # the global model after the round
    train_config: ConfigRecord            # what the sampled clients were sent
    train_metrics: MetricRecord | None    # aggregated client metrics (+ strategy statistics)
    evaluate_metrics: MetricRecord | None
    report: RoundReport | None
    bytes_down: int
    bytes_up: int
    train_wall_s: float
    wall_s: float


class _CountingStream:
    """Counts the tensor bytes that arrive, as they pass through to the strategy."""

    def __init__(self, stream: ReplyStream) -> None:
        self.stream = stream
        self.bytes_up = 0

    def __iter__(self):
        for reply in self.stream:
            if reply.has_content():
                self.bytes_up += sum(record_nbytes(r) for r in reply.content.array_records.values())
            yield reply


def run_rounds(strategy: Strategy, grid: Grid, initial_arrays: ArrayRecord, *, num_rounds: int,
               timeout: float, train_config: ConfigRecord | None = None,
               evaluate_fn: EvaluateFn | None = None, start_round: int = 1,
               on_round_end: Callable[[RoundOutcome], None] | None = None,
               max_in_flight: int | None = None) -> Result:
    """Run rounds `start_round..num_rounds` of `strategy` on `grid` from `initial_arrays`."""
    result = Result()
    arrays = initial_arrays
    config = train_config or ConfigRecord()
    for server_round in range(start_round, num_rounds + 1):
        t0 = time.perf_counter()
        log(INFO, "[ROUND %d/%d]", server_round, num_rounds)
        messages: list[Message] = list(strategy.configure_train(server_round, arrays, config, grid))
        sent_config = messages[0].content["config"] if messages else ConfigRecord(dict(config))
        bytes_down = sum(record_nbytes(r) for r in messages[0].content.array_records.values()) \
            * len(messages) if messages else 0
        stream = _CountingStream(ReplyStream(grid, messages, timeout=timeout,
                                             max_in_flight=max_in_flight))
        del messages        # the stream owns them and drops each once it is sent
        new_arrays, train_metrics = strategy.aggregate_train(server_round, stream)
        if new_arrays is not None:
            arrays = new_arrays
        if train_metrics is not None:
            result.train_metrics_clientapp[server_round] = train_metrics
        train_wall = time.perf_counter() - t0
        evaluate_metrics = evaluate_fn(server_round, arrays) if evaluate_fn is not None else None
        if evaluate_metrics is not None:
            result.evaluate_metrics_serverapp[server_round] = evaluate_metrics
        if on_round_end is not None:
            on_round_end(RoundOutcome(
                server_round=server_round, arrays=arrays, train_config=sent_config,
                train_metrics=train_metrics, evaluate_metrics=evaluate_metrics,
                report=getattr(strategy, "last_round", None), bytes_down=bytes_down,
                bytes_up=stream.bytes_up, train_wall_s=train_wall,
                wall_s=time.perf_counter() - t0))
    result.arrays = arrays
    return result
