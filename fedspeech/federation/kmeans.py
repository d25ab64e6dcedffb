"""Federated k-means: the server holds the centroids, clients return sufficient statistics.

Every Lloyd step the server sends the centroids in a QUERY message; each client assigns its own
frames to the nearest centroid and answers with per-cluster sums and counts (and its inertia),
never a frame. The server adds the statistics up and moves each centroid to the mean of its
frames, which is exactly a Lloyd step over the pooled frames. Seeding: each client summarises
its frames by a local k-means (centres + counts) and the server runs weighted k-means++ over
those summaries. Cluster ids therefore mean the same on every client, which HuBERT's shared
prediction head needs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from fedspeech.federation.parameters import array_view, numpy_record
from fedspeech.federation.replies import ReplyStream

logger = logging.getLogger(__name__)

SEED_QUERY = "kmeans-seed"
STATS_QUERY = "kmeans-stats"
QUERIES = (SEED_QUERY, STATS_QUERY)


# ---- the maths, on one client's frames ----------------------------------------------------------
def nearest(frames: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest centroid of each frame and its squared distance (float64)."""
    x = np.asarray(frames, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64)
    d2 = (x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
    labels = d2.argmin(1)
    return labels, np.maximum(d2[np.arange(len(x)), labels], 0.0)


def assignment_statistics(frames: np.ndarray, centroids: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-cluster sums (K, D), counts (K,) and inertia of `frames` under `centroids`."""
    k, dim = centroids.shape
    labels, d2 = nearest(frames, centroids)
    sums = np.zeros((k, dim), dtype=np.float64)
    np.add.at(sums, labels, np.asarray(frames, dtype=np.float64))
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    return sums, counts, float(d2.sum())


def update_centroids(centroids: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The Lloyd update; a cluster no frame chose keeps its centroid."""
    new = np.array(centroids, dtype=np.float64, copy=True)
    filled = counts > 0
    new[filled] = sums[filled] / counts[filled, None]
    return new


def local_summary(frames: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A client's frames summarised by at most `k` local k-means centres and their counts."""
    from sklearn.cluster import MiniBatchKMeans

    k_local = min(k, len(frames))
    if k_local < k:
        logger.warning("only %d frames on this client for %d clusters: %d local centres",
                       len(frames), k, k_local)
    km = MiniBatchKMeans(n_clusters=k_local, random_state=seed, n_init=1, batch_size=1024).fit(frames)
    counts = np.bincount(km.labels_, minlength=k_local).astype(np.float64)
    return km.cluster_centers_.astype(np.float64), counts


def fit_local_kmeans(frames: np.ndarray, k: int, seed: int) -> np.ndarray:
    """`task.targets=local_kmeans`: one client's own MiniBatchKMeans (ids not aligned across
    clients); K larger than the frames is an error."""
    from sklearn.cluster import MiniBatchKMeans

    if len(frames) < k:
        raise ValueError(f"{len(frames)} frames cannot make {k} clusters (model.num_clusters)")
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=1024).fit(frames)
    return km.cluster_centers_.astype(np.float64)


# ---- client side ----------------------------------------------------------------------------
def skipped_reply(reason: str) -> RecordDict:
    return RecordDict({"config": ConfigRecord({"skipped": reason})})


def answer_kmeans(msg: Message, frames: np.ndarray, seed: int) -> RecordDict:
    """The reply content of a client to a k-means QUERY, from its own frames."""
    conf = msg.content["config"]
    query = conf["query"]
    if len(frames) == 0:
        reason = "no unlabelled audio"
        logger.warning("skipping the k-means phase: %s", reason)
        return skipped_reply(reason)
    metrics = MetricRecord({"frames": int(len(frames))})
    if query == SEED_QUERY:
        centres, counts = local_summary(frames, int(conf["k"]), seed)
        return RecordDict({"stats": numpy_record({"centres": centres, "counts": counts}),
                           "metrics": metrics})
    if query == STATS_QUERY:
        centroids = np.array(array_view(msg.content["centroids"]["centroids"]))
        sums, counts, inertia = assignment_statistics(frames, centroids)
        metrics["inertia"] = inertia
        return RecordDict({"stats": numpy_record({"sums": sums, "counts": counts}),
                           "metrics": metrics})
    raise ValueError(f"unknown k-means query {query!r}")


# ---- server side ----------------------------------------------------------------------------
@dataclass
class KMeansResult:
    centroids: np.ndarray
    #: one record per step: step 0 = seeding, then inertia (before the step's update) per step
    steps: list[dict] = field(default_factory=list)
    #: partition id -> why it took no part
    skipped: dict[int, str] = field(default_factory=dict)


class _Phase:
    """Sends one kind of QUERY to nodes and collects the statistics replies."""

    def __init__(self, grid: Grid, node_partitions: dict[int, int], timeout: float) -> None:
        self.grid = grid
        self.node_partitions = node_partitions
        self.timeout = timeout
        self.skipped: dict[int, str] = {}

    def ask(self, nodes: list[int], content: RecordDict) -> list[tuple[int, dict, dict]]:
        messages = [Message(content=content, dst_node_id=n, message_type=MessageType.QUERY)
                    for n in nodes]
        replies = []
        stream = ReplyStream(self.grid, messages, timeout=self.timeout)
        for reply in stream:
            pid = self.node_partitions.get(reply.metadata.src_node_id, reply.metadata.src_node_id)
            if reply.has_error():
                raise RuntimeError(f"partition {pid} failed in federated k-means: {reply.error.reason}")
            if "config" in reply.content and "skipped" in reply.content["config"]:
                why = str(reply.content["config"]["skipped"])
                if pid not in self.skipped:
                    log(WARNING, "federated k-means: partition %s skipped (%s)", pid, why)
                self.skipped[pid] = why
                continue
            arrays = {k: np.array(array_view(v)) for k, v in reply.content["stats"].items()}
            replies.append((pid, arrays, dict(reply.content["metrics"])))
        if stream.unanswered:
            raise RuntimeError(f"nodes {sorted(stream.unanswered)[:10]} did not answer the k-means "
                               f"query within {self.timeout:.0f} s")
        # in partition order, not arrival order: k-means++ seeding draws from the concatenated
        # summaries and the float sums depend on their order, so this keeps a run reproducible
        return sorted(replies, key=lambda r: r[0])


def seed_centroids(summaries: list[tuple[np.ndarray, np.ndarray]], k: int, seed: int) -> np.ndarray:
    """Weighted k-means++ over the clients' local centres (weights = their frame counts)."""
    from sklearn.cluster import kmeans_plusplus

    centres = np.concatenate([c for c, _ in summaries])
    weights = np.concatenate([w for _, w in summaries])
    if len(centres) < k:
        raise ValueError(f"the clients hold {len(centres)} distinct frame summaries, fewer than "
                         f"model.num_clusters={k}: lower it or give the clients more audio")
    chosen, _ = kmeans_plusplus(centres, k, sample_weight=weights, random_state=seed)
    return chosen.astype(np.float64)


def federated_kmeans(grid: Grid, node_partitions: dict[int, int], k: int, *, steps: int,
                     seed: int, timeout: float, init: np.ndarray | None = None,
                     clients_per_step: int | None = None) -> KMeansResult:
    """`steps` Lloyd steps over the frames of the nodes in `node_partitions` (node -> partition).

    `init`: starting centroids (else federated k-means++ seeding). `clients_per_step`: sample
    that many clients per step (mini-batch steps over clients); None = all (exact Lloyd).
    """
    phase = _Phase(grid, node_partitions, timeout)
    nodes = sorted(node_partitions)
    result = KMeansResult(centroids=np.zeros((0, 0)))
    if init is None:
        replies = phase.ask(nodes, RecordDict({"config": ConfigRecord({"query": SEED_QUERY, "k": k})}))
        if not replies:
            raise RuntimeError("federated k-means: no client has unlabelled audio "
                               f"(skipped: {phase.skipped})")
        centroids = seed_centroids([(a["centres"], a["counts"]) for _, a, _ in replies], k, seed)
        result.steps.append({"step": 0, "clients": len(replies),
                             "frames": int(sum(m["frames"] for _, _, m in replies))})
    else:
        centroids = np.array(init, dtype=np.float64)
    rng = np.random.default_rng(seed)
    active = [n for n in nodes if node_partitions[n] not in phase.skipped]
    for step in range(1, steps + 1):
        cohort = active
        if clients_per_step is not None and clients_per_step < len(active):
            cohort = sorted(rng.choice(active, clients_per_step, replace=False).tolist())
        content = RecordDict({"config": ConfigRecord({"query": STATS_QUERY}),
                              "centroids": numpy_record({"centroids": centroids})})
        replies = phase.ask(cohort, content)
        if not replies:
            raise RuntimeError("federated k-means: no client answered with statistics")
        sums = sum(a["sums"] for _, a, _ in replies)
        counts = sum(a["counts"] for _, a, _ in replies)
        frames = int(sum(m["frames"] for _, _, m in replies))
        inertia = float(sum(m["inertia"] for _, _, m in replies))
        centroids = update_centroids(centroids, sums, counts)
        result.steps.append({"step": step, "clients": len(replies), "frames": frames,
                             "inertia": inertia, "inertia_per_frame": inertia / max(frames, 1),
                             "empty_clusters": int((counts == 0).sum())})
        log(INFO, "federated k-means step %d/%d: %d clients, %d frames, inertia/frame %.4f",
            step, steps, len(replies), frames, inertia / max(frames, 1))
    result.centroids = centroids
    result.skipped = dict(phase.skipped)
    return result


def centroid_record(centroids: np.ndarray) -> ArrayRecord:
    """How the centroids travel with each train message (float32 is plenty for assignment)."""
    return numpy_record({"centroids": np.asarray(centroids, dtype=np.float32)})
