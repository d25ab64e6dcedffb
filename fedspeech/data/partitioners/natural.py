"""Natural clients: one per speaker, or whole speakers grouped into N clients balanced in seconds."""

from __future__ import annotations

import heapq
from typing import Any

import pandas as pd

from .base import Partitioner, PartitionError, check_num_clients, excluded_rows, natural_key, require_column


class SpeakerPartitioner(Partitioner):
    """One client per speaker (natural partition); `key=client_id` for Common Voice contributors."""

    kind = "speaker"
    uses_seed = False

    def __init__(self, key: str = "speaker", **common: Any) -> None:
        super().__init__(**common)
        self.key = key

    def _labels(self, rows: pd.DataFrame, seed: int, *,
                all_rows: pd.DataFrame) -> tuple[pd.Series, pd.DataFrame | None, dict]:
        require_column(rows, self.key, "speaker key")
        values = rows[self.key].astype(str).str.strip()
        empty = values.isin(["", "nan", "None"]) | rows[self.key].isna()
        extra = excluded_rows(rows.loc[empty, "id"], f"missing_{self.key}", duration=rows.loc[empty, "duration"])
        return values.where(~empty, None), extra, {}


class GroupedSpeakersPartitioner(Partitioner):
    """`num_clients` clients of whole speakers, dealt largest first to the client with the least
    audio (LPT), so clients' seconds differ by at most one speaker's seconds. No randomness."""

    kind = "grouped_speakers"
    uses_seed = False

    def __init__(self, num_clients: int, key: str = "speaker", **common: Any) -> None:
        super().__init__(**common)
        self.num_clients = check_num_clients(num_clients)
        self.key = key

    def _labels(self, rows: pd.DataFrame, seed: int, *,
                all_rows: pd.DataFrame) -> tuple[pd.Series, pd.DataFrame | None, dict]:
        require_column(rows, self.key, "speaker key")
        seconds = rows.groupby(rows[self.key].astype(str))["duration"].sum()
        if self.num_clients > len(seconds):
            raise PartitionError(f"grouped_speakers: {self.num_clients} clients requested but only "
                                 f"{len(seconds)} speakers have train audio")
        order = sorted(seconds.index, key=lambda s: (-seconds[s], natural_key(s)))
        heap = [(0.0, c) for c in range(self.num_clients)]
        owner: dict[str, int] = {}
        for speaker in order:
            load, client = heapq.heappop(heap)
            owner[speaker] = client
            heapq.heappush(heap, (load + float(seconds[speaker]), client))
        return rows[self.key].astype(str).map(owner), None, {}
