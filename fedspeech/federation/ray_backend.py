"""Flower's Ray backend with each hand-over off the actors' clock (`StagedRayBackend`).

Flower's `RayBackend` runs one engine thread per actor. A thread pickles its message into the
object store, submits it to an idle actor, waits for the result *and deserialises the reply*
(`ray.get`) and only then hands the actor back, takes the next message and pickles that: the
actor idles through all of it. Measured on the utilisation benchmark (cohort 32, 29 M model,
2 actors): 0.15-0.23 s between one client's call and the next on the same actor, about 3 % of
the workers' time.

`StagedRayBackend` keeps Flower's pool, actors and message flow and changes only the hand-over:
twice as many engine threads as actors, so a thread puts its message into the object store
while the actors are still busy and waits for an idle one with it ready; an actor goes back to
the idle set as soon as its task is done (`ray.wait`), before its reply is deserialised; the
ClientApp loader is put into the object store once, not pickled with every call. A task is only
ever given to an idle actor, so nothing queues behind a slow client: a straggler times out
alone, as with Flower's backend. Flower runs the engine threads in a default `ThreadPoolExecutor`
(at most 32, or the cores + 4), as it does its own.

Flower 1.42's Simulation Engine builds its backend by importing `RayBackend` from
`flwr.server.superlink.fleet.vce.backend.raybackend` when it starts (`vce_api.start_vce`), with
no registry to add one to; `staged_backend()` puts this class under that name for one
simulation and restores Flower's afterwards. `tests/test_simulation_runtime.py` pins that
lookup, so a Flower upgrade that changes it fails there first.
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Callable, Iterator
from typing import Any

import ray
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import PARTITION_ID_KEY
from flwr.server.superlink.fleet.vce.backend import raybackend

#: engine threads per actor: one running, one staged
THREADS_PER_ACTOR = 2


class StagedRayBackend(raybackend.RayBackend):
    """Flower's `RayBackend` whose actors never wait for the server's side of a hand-over."""

    def build(self, app_fn: Callable[[], ClientApp]) -> None:
        super().build(app_fn)
        self._app_ref = ray.put(app_fn)
        self._idle: queue.Queue[Any] = queue.Queue()
        for actor in self.pool.pool:          # Flower's pool keeps its list (terminate uses it)
            self._idle.put(actor)

    @property
    def num_workers(self) -> int:
        """Engine threads: THREADS_PER_ACTOR per actor."""
        return THREADS_PER_ACTOR * self.pool.num_actors if self.pool else 0

    def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
        """Run the ClientApp on `message` on the next idle actor; the reply and its context."""
        if self.pool is None:
            raise ValueError("The actor pool is empty, unfit to process messages.")
        partition_id = str(context.node_config[PARTITION_ID_KEY])
        staged = ray.put(message)            # while the actors are still busy
        actor = self._idle.get()
        try:
            future = actor.run.remote(self._app_ref, staged, partition_id, context)
            ray.wait([future])
        finally:
            self._idle.put(actor)             # free before the reply is deserialised
        _, out_message, updated_context = ray.get(future)
        return out_message, updated_context


@contextlib.contextmanager
def staged_backend() -> Iterator[None]:
    """Flower's Simulation Engine builds a `StagedRayBackend` while this is open."""
    flower_backend = raybackend.RayBackend
    raybackend.RayBackend = StagedRayBackend
    try:
        yield
    finally:
        raybackend.RayBackend = flower_backend
