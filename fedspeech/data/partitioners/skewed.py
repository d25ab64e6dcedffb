"""Non-natural clients from a seeded shuffle: IID, Dirichlet skew over an attribute, power-law sizes.

flwr-datasets has IID and Dirichlet partitioners, but they work on Hugging Face `datasets`
tables (its IID shards contiguously and leaves shuffling to the caller, its Dirichlet cuts each
class in table order) and installing it would change the hub and fsspec versions the models use.
The few lines of numpy below run the same algorithms on the pandas manifest directly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .base import (Partitioner, PartitionError, check_num_clients, excluded_rows, natural_key,
                   require_column, shuffled_positions)


class IidPartitioner(Partitioner):
    """`num_clients` clients of near-equal utterance counts from a seeded shuffle."""

    kind = "iid"

    def __init__(self, num_clients: int, **common: Any) -> None:
        super().__init__(**common)
        self.num_clients = check_num_clients(num_clients)

    def _labels(self, rows: pd.DataFrame, seed: int, *,
                all_rows: pd.DataFrame) -> tuple[pd.Series, pd.DataFrame | None, dict]:
        if self.num_clients > len(rows):
            raise PartitionError(f"iid: {self.num_clients} clients but only {len(rows)} utterances")
        client = np.empty(len(rows), dtype=int)
        for c, chunk in enumerate(np.array_split(shuffled_positions(rows, seed), self.num_clients)):
            client[chunk] = c
        return pd.Series(client, index=rows.index), None, {}


class DirichletPartitioner(Partitioner):
    """Label-free skew over an attribute column (gender, accent, language ...).

    For each attribute value, its utterances (in seeded random order) are cut among the clients
    in proportions drawn from Dirichlet(alpha): small alpha -> each client dominated by few
    values. Same algorithm as flwr-datasets' DirichletPartitioner (resampling until every client
    has `min_partition_size` utterances; optional self-balancing), on a pandas table.
    Missing attribute values form their own value `<missing>` (missing="keep") or are excluded.
    """

    kind = "dirichlet"

    def __init__(self, num_clients: int, attribute: str, alpha: float, min_partition_size: int = 1,
                 self_balancing: bool = False, missing: str = "keep", max_tries: int = 10,
                 **common: Any) -> None:
        super().__init__(**common)
        self.num_clients = check_num_clients(num_clients)
        if alpha is None or not np.isfinite(alpha) or alpha <= 0:
            raise PartitionError(f"dirichlet: alpha must be > 0, got {alpha!r}")
        if missing not in ("keep", "exclude"):
            raise PartitionError(f"dirichlet: missing must be 'keep' or 'exclude', got {missing!r}")
        if min_partition_size < 0 or max_tries < 1:
            raise PartitionError("dirichlet: min_partition_size must be >= 0 and max_tries >= 1")
        self.attribute = attribute
        self.alpha = float(alpha)
        self.min_partition_size = int(min_partition_size)
        self.self_balancing = bool(self_balancing)
        self.missing = missing
        self.max_tries = int(max_tries)

    def _labels(self, rows: pd.DataFrame, seed: int, *,
                all_rows: pd.DataFrame) -> tuple[pd.Series, pd.DataFrame | None, dict]:
        require_column(rows, self.attribute, "dirichlet attribute")
        values = rows[self.attribute].astype(str).str.strip()
        empty = values.isin(["", "nan", "None"]) | rows[self.attribute].isna()
        extra = None
        if self.missing == "exclude":
            extra = excluded_rows(rows.loc[empty, "id"], f"missing_{self.attribute}",
                                  duration=rows.loc[empty, "duration"])
            rows, values = rows.loc[~empty], values[~empty]
        else:
            values = values.where(~empty, "<missing>")
        if self.num_clients > len(rows):
            raise PartitionError(f"dirichlet: {self.num_clients} clients but only {len(rows)} utterances")
        rng = np.random.default_rng(seed)
        order = shuffled_positions(rows, seed)
        vals = values.to_numpy()[order]
        classes = sorted(set(vals), key=natural_key)
        average = len(rows) / self.num_clients
        for attempt in range(1, self.max_tries + 1):
            client = np.empty(len(order), dtype=int)
            counts = np.zeros(self.num_clients, dtype=int)
            for value in classes:
                members = np.flatnonzero(vals == value)
                share = rng.dirichlet(np.full(self.num_clients, self.alpha))
                if self.self_balancing:
                    share[counts > average] = 0.0
                    share = share / share.sum() if share.sum() > 0 else np.full(self.num_clients, 1 / self.num_clients)
                cuts = (np.cumsum(share) * len(members)).astype(int)[:-1]
                sizes = np.diff(np.concatenate([[0], cuts, [len(members)]]))
                client[members] = np.repeat(np.arange(self.num_clients), sizes)
                counts += sizes
            if counts.min() >= self.min_partition_size:
                break
        else:
            raise PartitionError(
                f"dirichlet: after {self.max_tries} draws some client still had fewer than "
                f"{self.min_partition_size} utterances (alpha={self.alpha}, {self.num_clients} clients); "
                "raise alpha or max_tries, or lower num_clients or min_partition_size")
        labels = np.empty(len(rows), dtype=int)
        labels[order] = client
        return pd.Series(labels, index=rows.index), extra, {"draws": attempt, "values": classes}


class SizeSkewPartitioner(Partitioner):
    """Power-law client sizes: client k (0-based) gets utterances ~ (k+1)^-exponent of a seeded
    shuffle (exponent 0 = equal sizes), at least `min_size` each. Sizes are utterance counts;
    on a shuffle they track audio seconds closely."""

    kind = "size_skew"

    def __init__(self, num_clients: int, exponent: float = 1.0, min_size: int = 1, **common: Any) -> None:
        super().__init__(**common)
        self.num_clients = check_num_clients(num_clients)
        if exponent is None or not np.isfinite(exponent) or exponent < 0:
            raise PartitionError(f"size_skew: exponent must be >= 0, got {exponent!r}")
        if min_size < 1:
            raise PartitionError(f"size_skew: min_size must be >= 1, got {min_size!r}")
        self.exponent = float(exponent)
        self.min_size = int(min_size)

    def sizes(self, total: int) -> np.ndarray:
        """Client sizes summing to `total` (largest-remainder rounding of the power law)."""
        spare = total - self.num_clients * self.min_size
        if spare < 0:
            raise PartitionError(f"size_skew: {self.num_clients} clients x min_size {self.min_size} "
                                 f"exceeds the {total} utterances")
        weight = np.arange(1, self.num_clients + 1, dtype=float) ** -self.exponent
        exact = spare * weight / weight.sum()
        size = np.floor(exact).astype(int)
        size[np.argsort(-(exact - size), kind="stable")[: spare - size.sum()]] += 1
        return size + self.min_size

    def _labels(self, rows: pd.DataFrame, seed: int, *,
                all_rows: pd.DataFrame) -> tuple[pd.Series, pd.DataFrame | None, dict]:
        sizes = self.sizes(len(rows))
        client = np.empty(len(rows), dtype=int)
        client[shuffled_positions(rows, seed)] = np.repeat(np.arange(self.num_clients), sizes)
        return pd.Series(client, index=rows.index), None, {"target_sizes": sizes.tolist()}
