"""Many simulated clients on a few simulated SuperNodes: a population costs data, not nodes.

Flower's Simulation Engine looks for pending messages node by node, and for each node it walks
every stored message, every 0.1 s; each node takes at most one message per pass. With one
SuperNode per client, start-up (one identity query per node) and every round therefore cost
population x messages: 2,000 clients took 3.7x as long as 20 to get ready. With
`simulation.nodes=K` the simulation starts K SuperNodes (carriers) and `VirtualClientGrid`
shows the server one virtual node per client, whose id is the client's partition id:

- each message to a virtual node goes to the least-busy carrier, with the partition id added to
  its config (`KEY_PARTITION`); the client trains or answers for that partition
  (`message_partition`), and its reply comes back as from the virtual node;
- the server knows each client's data sizes from the partition on disk, as the client would
  report them (`Task.client_sizes`), so no identity query is sent at all.

Results do not depend on which carrier ran a client: a client's round is seeded by its partition
and the round (`client_app.client_seed`), and every worker loads the full global model. Simulation
only: a deployment's SuperNodes hold their own data, and train only their own partition whatever a
message names (the deployment ClientApp is never `carried`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid

from fedspeech.federation.grid_proxy import GridProxy
from fedspeech.federation.replies import ReplyStream

#: config key of a message that names the partition a carrier node works for
KEY_PARTITION = "partition-id"


def message_partition(msg: Message, context: Context, *, carried: bool) -> int:
    """The partition a message is for. A carrier node (`carried`, simulation only) works for the
    one the message names; any other node only ever for its own, whatever a message says."""
    if not carried:
        return int(context.node_config["partition-id"])
    if "config" not in msg.content or KEY_PARTITION not in msg.content["config"]:
        raise ValueError(f"a message to a carrier node must name its client ('{KEY_PARTITION}' "
                         "in its config): is the server running with simulation.nodes too?")
    return int(msg.content["config"][KEY_PARTITION])


class VirtualClientGrid(GridProxy):
    """The simulation's grid, seen by the server as one node per client (ids = partition ids)."""

    def __init__(self, grid: Grid, population: int, carriers: int) -> None:
        if carriers < 1:
            raise ValueError(f"simulation.nodes must be >= 1, got {carriers}")
        super().__init__(grid)
        self.population = int(population)
        self.expected_carriers = int(carriers)
        #: carrier message id -> (what the reply answers, carrier); the stand-in holds no content, so a
        #: straggler's entry (never pulled) keeps no copy of the model alive
        self._sent: dict[str, tuple[Message, int]] = {}
        self._busy: Counter[int] = Counter()

    def carriers(self) -> list[int]:
        return sorted(self.grid.get_node_ids())

    def get_node_ids(self) -> Iterable[int]:
        """Every client, once all carrier nodes are connected (none before)."""
        if len(self.carriers()) < self.expected_carriers:
            return []
        return list(range(self.population))

    def _carrier_message(self, msg: Message, carrier: int) -> Message:
        client = int(msg.metadata.dst_node_id)
        if not 0 <= client < self.population:
            raise ValueError(f"no client {client}: the population is {self.population}")
        content = RecordDict(dict(msg.content.items()))       # arrays shared, not copied
        config = dict(content["config"]) if "config" in content else {}
        content["config"] = ConfigRecord({**config, KEY_PARTITION: client})
        return Message(content=content, dst_node_id=carrier,
                       message_type=msg.metadata.message_type, group_id=msg.metadata.group_id,
                       ttl=msg.metadata.ttl)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        carriers = self.carriers()
        if not carriers:
            raise RuntimeError("no simulated SuperNode is connected to carry the clients")
        ids: list[str] = []
        for msg in messages:
            carrier = min(carriers, key=lambda c: (self._busy[c], c))
            out = self._carrier_message(msg, carrier)
            pushed = [i for i in self.grid.push_messages([out]) if i]
            if not pushed:
                continue
            msg_id = pushed[0]
            # the caller pulls by the id of the message it pushed, as with Flower's own grids
            msg.metadata.__dict__["_message_id"] = msg_id
            answered = Message(content=RecordDict(), dst_node_id=int(msg.metadata.dst_node_id),
                               message_type=msg.metadata.message_type, group_id=msg.metadata.group_id,
                               ttl=msg.metadata.ttl)
            answered.metadata.__dict__["_message_id"] = msg_id
            self._sent[msg_id] = (answered, carrier)
            self._busy[carrier] += 1
            ids.append(msg_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = []
        for reply in self.grid.pull_messages(message_ids):
            original, carrier = self._sent.pop(reply.metadata.reply_to_message_id, (None, None))
            if original is None:
                continue
            self._busy[carrier] -= 1
            # the same reply, as from the virtual node the message was for
            if reply.has_error():
                replies.append(Message(error=reply.error, reply_to=original))
            else:
                replies.append(Message(content=reply.content, reply_to=original))
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> Iterable[Message]:
        return list(ReplyStream(self, messages, timeout=timeout or 86_400.0))
