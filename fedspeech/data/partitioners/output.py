"""Writing a partition (clients.csv, summary.json, excluded.csv, client_sizes.png) and reading it back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedspeech.files import atomic_write_text, atomic_write_with

from .base import MAX_LISTED_SPEAKERS, Partitioner, PartitionError, natural_key


def write_partition(manifest: pd.DataFrame, partitioner: Partitioner, seed: int, out_dir: str | Path) -> dict:
    """Partition the manifest's train split and write clients.csv, summary.json, excluded.csv and
    client_sizes.png into `out_dir`. Returns the summary."""
    out_dir = Path(out_dir)
    if "split" not in manifest.columns:
        raise PartitionError("the manifest has no 'split' column")
    train = manifest[manifest["split"] == "train"]
    assignment = partitioner.assign(train, seed)
    kept = assignment.labels.notna()
    labels = assignment.labels[kept].map(str)
    order = sorted(labels.unique(), key=natural_key)
    client_of = {label: i for i, label in enumerate(order)}
    clients = pd.DataFrame({"id": train.loc[kept, "id"].astype(str).to_numpy(),
                            "client": labels.map(client_of).to_numpy()})
    clients = clients.sort_values(["client", "id"], kind="stable").reset_index(drop=True)

    rows = train.loc[kept].assign(client=labels.map(client_of).to_numpy())
    rows["speaker"] = rows["speaker"].astype(str)
    seconds = rows.groupby("client")["duration"].sum()
    utts = rows.groupby("client").size()
    speakers = rows.groupby("client")["speaker"].unique()
    list_speakers = int(sum(len(s) for s in speakers)) <= MAX_LISTED_SPEAKERS
    per_client = []
    for c, label in enumerate(order):
        entry = {"client": c, "label": label, "utterances": int(utts[c]),
                 "seconds": round(float(seconds[c]), 3), "num_speakers": int(len(speakers[c]))}
        if list_speakers:
            entry["speakers"] = sorted(speakers[c], key=natural_key)
        per_client.append(entry)
    excluded = assignment.excluded
    minutes = seconds.to_numpy() / 60
    summary = {
        "partitioner": {"name": partitioner.name, "kind": partitioner.kind,
                        "class": f"{type(partitioner).__module__}.{type(partitioner).__qualname__}",
                        "params": partitioner.params(), "uses_seed": partitioner.uses_seed},
        "seed": int(seed),
        "num_clients": len(order),
        "totals": {
            "utterances": int(len(clients)), "seconds": round(float(seconds.sum()), 3),
            "hours": round(float(seconds.sum() / 3600), 3), "speakers": int(rows["speaker"].nunique()),
            "minutes_per_client": {"min": round(float(minutes.min()), 3),
                                   "median": round(float(np.median(minutes)), 3),
                                   "max": round(float(minutes.max()), 3)},
            "train_rows_in_manifest": int(len(train)),
            "non_train_rows_ignored": int(len(manifest) - len(train)),
            "excluded": int(len(excluded)),
            "excluded_by_reason": {k: int(v) for k, v in excluded["reason"].value_counts().sort_index().items()},
            "speakers_listed": list_speakers,
        },
        "info": _jsonable(assignment.info),
        "clients": per_client,
    }
    atomic_write_with(out_dir / "clients.csv", lambda tmp: clients.to_csv(tmp, index=False))
    atomic_write_with(out_dir / "excluded.csv", lambda tmp: excluded.to_csv(tmp, index=False))
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    from fedspeech.analysis.plots import plot_client_sizes   # matplotlib only when writing
    plot_client_sizes(summary, [], out_dir / "client_sizes.png")
    _print_summary(summary, out_dir)
    return summary


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _print_summary(summary: dict, out_dir: Path) -> None:
    t = summary["totals"]
    m = t["minutes_per_client"]
    print(f"partition {summary['partitioner']['name']} (seed {summary['seed']}) -> {out_dir}")
    print(f"  {'clients':>8} {'utts':>9} {'hours':>8} {'min/client: min':>16} {'median':>8} {'max':>8}")
    print(f"  {summary['num_clients']:>8d} {t['utterances']:>9d} {t['hours']:>8.2f} "
          f"{m['min']:>16.2f} {m['median']:>8.2f} {m['max']:>8.2f}")
    if t["excluded"]:
        print(f"  excluded: {t['excluded']} (reasons in {out_dir / 'excluded.csv'})")
        for reason, n in t["excluded_by_reason"].items():
            print(f"    {n:8d}  {reason}")


def read_partition(out_dir: str | Path) -> pd.DataFrame:
    """`clients.csv` of a partition folder (or the file itself), checked: unique ids, clients 0..N-1."""
    path = Path(out_dir)
    path = path / "clients.csv" if path.is_dir() or path.suffix != ".csv" else path
    if not path.is_file():
        raise FileNotFoundError(f"no partition at {path}; run `python -m fedspeech.dataset_preparation`")
    clients = pd.read_csv(path, dtype={"id": str}, keep_default_na=False)
    if list(clients.columns[:2]) != ["id", "client"]:
        raise PartitionError(f"{path} must start with columns id, client; got {list(clients.columns)}")
    clients["client"] = clients["client"].astype(int)
    if clients["id"].duplicated().any():
        raise PartitionError(f"{path} lists some utterance ids more than once")
    present = np.unique(clients["client"].to_numpy())
    if not np.array_equal(present, np.arange(len(present))):
        raise PartitionError(f"{path}: client ids are not consecutive from 0")
    return clients


class ClientIndex:
    """Where each client's utterances are in the manifest, found in one pass over the partition,
    so that looking up every client of a population of thousands costs one join, not one scan
    of the manifest per client."""

    def __init__(self, manifest: pd.DataFrame, clients: pd.DataFrame) -> None:
        self.manifest = manifest
        self.last_client = int(clients["client"].max())
        self._durations = manifest["duration"].to_numpy(dtype=np.float64)
        position = pd.Series(np.arange(len(manifest)), index=manifest["id"].astype(str).to_numpy())
        position = position[~position.index.duplicated()]
        found = clients["id"].astype(str).map(position)
        self._expected = clients.groupby("client").size().to_dict()
        located = pd.DataFrame({"client": clients["client"].to_numpy(), "pos": found.to_numpy()}).dropna()
        self._positions = {int(c): np.sort(g["pos"].to_numpy(dtype=np.int64))
                           for c, g in located.groupby("client")}

    def positions(self, client: int) -> np.ndarray:
        """Manifest row positions of one client, in manifest order (checked: the client exists and
        every one of its utterances is in the manifest)."""
        expected = self._expected.get(client, 0)
        if not expected:
            raise PartitionError(f"client {client} is not in the partition (clients 0..{self.last_client})")
        found = self._positions.get(client, np.empty(0, dtype=np.int64))
        if len(found) != expected:
            raise PartitionError(f"client {client}: {expected - len(found)} of its {expected} utterances "
                                 "are not in this manifest (partition written from another manifest?)")
        return found

    def rows(self, client: int) -> pd.DataFrame:
        """The manifest rows of one client (in manifest order)."""
        return self.manifest.iloc[self.positions(client)]

    def sizes(self, client: int) -> dict[str, float]:
        """How much training data a client has (what it reports at start): its utterances and
        their seconds, summed in manifest order as `rows(client)["duration"].sum()` does."""
        positions = self.positions(client)
        return {"num-examples": float(len(positions)),
                "num-seconds": float(pd.Series(self._durations[positions]).sum())}


def client_rows(manifest: pd.DataFrame, clients: pd.DataFrame, client: int) -> pd.DataFrame:
    """The manifest rows of one client (in manifest order); for many clients use `ClientIndex`."""
    return ClientIndex(manifest, clients).rows(client)
