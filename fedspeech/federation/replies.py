"""Replies of a round, one at a time as they arrive, never a list of them.

`Grid.send_and_receive` returns only when every reply is in, so the server would hold the whole
cohort's updates at once (cohort x model bytes). `ReplyStream` pushes the round's instructions
with `Grid.push_messages`, polls `Grid.pull_messages` and yields each reply as soon as it is there,
so the consumer can fold it into running sums and drop it. Optionally only `max_in_flight`
instructions are outstanding at a time (the simulation runs a handful of clients at once; each
pending instruction holds its own copy of the global model once it is serialised for a worker).

A message that gets no reply within `timeout` seconds of being sent is a straggler: it is given
up for this round and listed in `unanswered`. A reply that comes later is never pulled: Flower's
`pull_messages` only returns replies to the message ids it is asked for.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator

from flwr.app import Message
from flwr.serverapp import Grid

from fedspeech.federation.ray_transport import send_arrays_out_of_band


class ReplyStream:
    """Iterate over the replies to `messages`; afterwards `unanswered` names the stragglers."""

    def __init__(self, grid: Grid, messages: Iterable[Message], *, timeout: float,
                 max_in_flight: int | None = None, poll_interval: float = 0.05) -> None:
        if not timeout > 0:
            raise ValueError(f"round timeout must be > 0 s, got {timeout}")
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1 or null, got {max_in_flight}")
        self.grid = grid
        self._waiting: deque[Message] = deque(messages)
        self.timeout = float(timeout)
        self.max_in_flight = max_in_flight
        self.poll_interval = float(poll_interval)
        self.sent = len(self._waiting)
        #: node ids whose instruction got no reply in time (filled while iterating)
        self.unanswered: list[int] = []
        #: node ids whose instruction could not be delivered at all
        self.undeliverable: list[int] = []

    def _push_more(self, in_flight: dict[str, tuple[int, float]]) -> None:
        room = len(self._waiting) if self.max_in_flight is None else self.max_in_flight - len(in_flight)
        batch = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
        if not batch:
            return
        destinations = [m.metadata.dst_node_id for m in batch]
        send_arrays_out_of_band()     # in a simulation: the instructions' arrays cross Ray uncopied
        ids = [i for i in self.grid.push_messages(batch) if i]   # a grid may return None for a failed push
        now = time.monotonic()
        pushed = {m.metadata.message_id: m.metadata.dst_node_id for m in batch}
        for msg_id in ids:
            in_flight[msg_id] = (pushed.get(msg_id, -1), now + self.timeout)
        delivered = {in_flight[i][0] for i in ids}
        self.undeliverable.extend(n for n in destinations if n not in delivered)

    def __iter__(self) -> Iterator[Message]:
        in_flight: dict[str, tuple[int, float]] = {}
        self._push_more(in_flight)
        while in_flight:
            got_any = False
            for reply in self.grid.pull_messages(list(in_flight)):
                if in_flight.pop(reply.metadata.reply_to_message_id, None) is None:
                    continue          # not one of ours (cannot happen with Flower's grids)
                got_any = True
                yield reply
                self._push_more(in_flight)
            now = time.monotonic()
            for msg_id, (node_id, deadline) in list(in_flight.items()):
                if now >= deadline:
                    del in_flight[msg_id]
                    self.unanswered.append(node_id)
            self._push_more(in_flight)
            if in_flight and not got_any:
                time.sleep(self.poll_interval)
