"""What every partitioner shares: the train-table checks, the common filters (duration bounds,
minimum utterances per client) and the exclusion records, so that each partition reports what it
left out in the same way."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

EXCLUDED_COLUMNS = ["id", "client", "reason", "detail", "duration"]
MAX_LISTED_SPEAKERS = 200_000  # above this many (client, speaker) pairs summary.json gives counts only


class PartitionError(ValueError):
    """A partition request that cannot be met: bad parameter, missing column, too few speakers."""


@dataclass
class Assignment:
    """Result of a partitioner on a train table.

    `labels` is aligned with the train index (None where the row is excluded); `excluded` lists
    every left-out train row, plus map entries that matched no row, with a reason each.
    """

    labels: pd.Series
    excluded: pd.DataFrame
    info: dict = field(default_factory=dict)


def excluded_rows(ids: Any, reason: str, client: Any = "", detail: Any = "",
                  duration: Any = np.nan) -> pd.DataFrame:
    frame = pd.DataFrame({"id": pd.Series(ids, dtype=object).astype(str).to_numpy()})
    frame["client"] = client if np.ndim(client) == 0 else np.asarray(client, dtype=object)
    frame["reason"] = reason
    frame["detail"] = detail if np.ndim(detail) == 0 else np.asarray(detail, dtype=object)
    frame["duration"] = duration if np.ndim(duration) == 0 else np.asarray(duration, dtype=float)
    return frame[EXCLUDED_COLUMNS]


def concat_excluded(parts: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame(columns=EXCLUDED_COLUMNS)
    return pd.concat(parts, ignore_index=True)[EXCLUDED_COLUMNS]


def natural_key(label: Any) -> tuple:
    """Sort key that orders `client_2` before `client_10` and 2 before 10."""
    parts = re.split(r"(\d+)", str(label))
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p != "")


def shuffled_positions(rows: pd.DataFrame, seed: int) -> np.ndarray:
    """Row positions in a seeded random order that does not depend on the manifest's row order."""
    by_id = np.argsort(rows["id"].astype(str).to_numpy(), kind="stable")
    return by_id[np.random.default_rng(seed).permutation(len(by_id))]


def require_column(rows: pd.DataFrame, column: str, what: str) -> None:
    if column not in rows.columns:
        raise PartitionError(f"{what} column {column!r} is not in the manifest; "
                             f"available columns: {list(rows.columns)}")


def check_num_clients(num_clients: Any) -> int:
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise PartitionError(f"num_clients must be a positive integer, got {num_clients!r}")
    return int(num_clients)


class Partitioner:
    """Base: validates the train table, applies the common filters, asks `_labels` for clients.

    Subclasses implement `_labels(rows, seed, all_rows=...) -> (labels, excluded, info)` where
    `labels` is indexed like `rows` and None marks a row the subclass left out (it must then be
    listed in `excluded` with its reason).
    """

    kind: ClassVar[str] = "partitioner"
    uses_seed: ClassVar[bool] = True

    def __init__(self, *, name: str | None = None, min_duration: float = 0.0,
                 max_duration: float | None = None, min_utterances: int = 1) -> None:
        if min_duration is None or min_duration < 0:
            raise PartitionError(f"min_duration must be >= 0, got {min_duration!r}")
        if max_duration is not None and max_duration <= min_duration:
            raise PartitionError(f"max_duration ({max_duration}) must exceed min_duration ({min_duration})")
        if isinstance(min_utterances, bool) or not isinstance(min_utterances, (int, np.integer)) \
                or min_utterances < 1:
            raise PartitionError(f"min_utterances must be an integer >= 1, got {min_utterances!r}")
        self.name = name or self.kind
        self.min_duration = float(min_duration)
        self.max_duration = None if max_duration is None else float(max_duration)
        self.min_utterances = int(min_utterances)

    def params(self) -> dict:
        """Constructor parameters, as recorded in summary.json."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def _labels(self, rows: pd.DataFrame, seed: int, *,
                all_rows: pd.DataFrame) -> tuple[pd.Series, pd.DataFrame | None, dict]:
        raise NotImplementedError

    def assign(self, train: pd.DataFrame, seed: int) -> Assignment:
        """Assign the train rows to clients, with every left-out row listed in `excluded`."""
        check_train(train)
        duration = pd.to_numeric(train["duration"], errors="coerce")
        missing = duration.isna()
        short = ~missing & (duration < self.min_duration)
        long = ~missing & (self.max_duration is not None) & (duration > (self.max_duration or 0))
        parts = [
            excluded_rows(train.loc[missing, "id"], "duration_missing"),
            excluded_rows(train.loc[short, "id"], "duration_below_min", detail=f"< {self.min_duration} s",
                          duration=duration[short]),
            excluded_rows(train.loc[long, "id"], "duration_above_max", detail=f"> {self.max_duration} s",
                          duration=duration[long]),
        ]
        rows = train.loc[~(missing | short | long)]
        if rows.empty:
            raise PartitionError("no train utterance is left after the duration filter "
                                 f"[{self.min_duration}, {self.max_duration}] s")
        labels, extra, info = self._labels(rows, seed, all_rows=train)
        labels = labels.reindex(rows.index).astype(object)
        labels = labels.where(labels.notna(), None)
        extra = extra if extra is not None else pd.DataFrame(columns=EXCLUDED_COLUMNS)
        unexplained = set(rows.loc[labels.isna(), "id"].astype(str)) - set(extra["id"])
        if unexplained:
            raise RuntimeError(f"{self.kind} left {len(unexplained)} rows without a client or a reason")
        parts.append(extra)
        counts = labels.dropna().map(str).value_counts()
        small = set(counts[counts < self.min_utterances].index)
        if small:
            drop = labels.notna() & labels.map(str).isin(small)
            parts.append(excluded_rows(rows.loc[drop, "id"], "client_below_min_utterances",
                                       client=labels[drop].map(str).to_numpy(),
                                       detail=f"< {self.min_utterances} utterances",
                                       duration=duration[rows.index][drop]))
            labels[drop] = None
        excluded = concat_excluded(parts)
        if labels.notna().sum() == 0:
            counts = excluded.loc[excluded["id"].isin(set(train["id"].astype(str))), "reason"].value_counts()
            raise PartitionError(f"{self.kind}: all {len(train)} train utterances were excluded ("
                                 + ", ".join(f"{n} {reason}" for reason, n in counts.items()) + ")")
        full = pd.Series([None] * len(train), index=train.index, dtype=object)
        full.loc[rows.index] = labels
        return Assignment(full, excluded, info)


def check_train(train: pd.DataFrame) -> None:
    for column in ("id", "duration", "speaker"):
        require_column(train, column, "required")
    if "split" in train.columns:
        others = sorted(set(train["split"].astype(str)) - {"train"})
        if others:
            raise PartitionError(f"partitioners take train rows only; got splits {others} "
                                 "(write_partition selects the train split)")
    if train.empty:
        raise PartitionError("the manifest has no train utterances")
    dup = train["id"][train["id"].duplicated()]
    if len(dup):
        raise PartitionError(f"duplicate utterance ids in the train split, e.g. {list(dup[:3])}")
