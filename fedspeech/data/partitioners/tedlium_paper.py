"""The TED-LIUM 3 client map of the wav2vec 2.0 federated ASR paper (Nguyen et al., ICASSP 2023).

Read from the authors' per-client CSV folders or the compact `all_clients.csv.gz`; gives the
partitioner, the paper's held-out 5-minute sets for per-speaker evaluation, and statistics of
the map that need no audio.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .base import (Partitioner, PartitionError, check_num_clients, concat_excluded, excluded_rows,
                   natural_key)

MAP_COLUMNS = ["client", "file", "ID", "talk", "start", "end", "duration"]
PAPER_TRAIN = "ted_train"
PAPER_EVAL_SETS = ("ted_train_full5", "ted_train_wo5")
_ORIGINAL_COLUMNS = {"ID": "ID", "spk_id": "talk", "start_seg": "start", "end_seg": "end", "duration": "duration"}


def read_paper_map(path: str | Path, verbose: bool = True) -> pd.DataFrame:
    """The published client map as one table `client, file, ID, talk, start, end, duration,
    client_index` (`file` without `.csv`; `client_index` is -1 for the `server` set).

    `path` is either the compact `all_clients.csv(.gz)` or a folder of `client_<i>/ted_*.csv`
    (the authors' format)."""
    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"no TED-LIUM client map at {path}")
    if path.is_dir():  # a folder's mtime misses edits inside it: always read afresh
        return _parse_paper_map(path, verbose)
    stat = path.stat()
    return _read_compact_cached(path, stat.st_mtime_ns, stat.st_size).copy()


@functools.lru_cache(maxsize=2)
def _read_compact_cached(path: Path, mtime_ns: int, size: int) -> pd.DataFrame:
    """Parsing the 454k-row map takes seconds; partition, held-out sets and statistics share it."""
    return _parse_paper_map(path, verbose=False)


def _parse_paper_map(path: Path, verbose: bool) -> pd.DataFrame:
    if path.is_dir():
        frame = _read_paper_folder(path, verbose)
    elif path.is_file():
        frame = pd.read_csv(path, dtype={"client": str, "file": str, "ID": str, "talk": str})
        missing = [c for c in MAP_COLUMNS if c not in frame.columns]
        if missing:
            raise PartitionError(f"{path} is not a client map: it lacks columns {missing}")
        frame = frame[MAP_COLUMNS]
    else:
        raise FileNotFoundError(f"no TED-LIUM client map at {path}")
    frame["file"] = frame["file"].str.replace(r"\.csv$", "", regex=True)
    bad = ~frame["client"].str.fullmatch(r"client_\d+|server")
    if bad.any():
        raise PartitionError(f"{path}: unexpected client names, e.g. {list(frame.loc[bad, 'client'][:3])}")
    index = pd.to_numeric(frame["client"].str.extract(r"client_(\d+)")[0])
    frame["client_index"] = index.fillna(-1).astype(int)
    return frame


def _read_paper_folder(root: Path, verbose: bool) -> pd.DataFrame:
    dirs = sorted((d for d in root.iterdir() if d.is_dir() and re.fullmatch(r"client_\d+|server", d.name)),
                  key=lambda d: natural_key(d.name))
    if not dirs:
        raise PartitionError(f"{root} holds no client_<i>/ or server/ folders")
    parts = []
    for n, folder in enumerate(dirs, 1):
        for csv_path in sorted(folder.glob("*.csv")):
            part = pd.read_csv(csv_path, usecols=list(_ORIGINAL_COLUMNS), dtype={"ID": str, "spk_id": str})
            part = part.rename(columns=_ORIGINAL_COLUMNS)
            part.insert(0, "file", csv_path.name)
            part.insert(0, "client", folder.name)
            parts.append(part)
        if verbose and (n % 250 == 0 or n == len(dirs)):
            print(f"  read {n}/{len(dirs)} client folders of {root}")
    return pd.concat(parts, ignore_index=True)[MAP_COLUMNS]


def _time_key(talk: pd.Series, start: pd.Series, end: pd.Series) -> pd.Series:
    """`talk|start_cs|end_cs`: matches ids whose times are written differently (214 vs 214.0)."""
    cs = lambda t: (pd.to_numeric(t, errors="coerce") * 100).round().astype("Int64").astype(str)
    return talk.astype(str) + "|" + cs(start) + "|" + cs(end)


def _paper_clients(frame: pd.DataFrame, num_clients: int | None) -> pd.DataFrame:
    frame = frame[frame["client_index"] >= 0]
    if num_clients is not None:
        available = int(frame["client_index"].max()) + 1
        if check_num_clients(num_clients) > available:
            raise PartitionError(f"num_clients={num_clients} but the map has {available} clients")
        frame = frame[frame["client_index"] < num_clients]
    return frame


def paper_eval_sets(map_path: str | Path, num_clients: int | None = None) -> dict[str, pd.DataFrame]:
    """The paper's per-speaker sets: `ted_train_full5` (about 5 minutes of each of clients
    0-1340) and `ted_train_wo5` (the rest of those clients' training data). Each frame has
    `id, client, talk, duration`; empty dict if the map has none."""
    frame = _paper_clients(read_paper_map(map_path, verbose=False), num_clients)
    out = {}
    for name in PAPER_EVAL_SETS:
        rows = frame[frame["file"] == name]
        if len(rows):
            out[name] = rows.rename(columns={"ID": "id"})[["id", "client", "talk", "duration"]].reset_index(drop=True)
    return out


def paper_eval_ids(map_path: str | Path, name: str = "ted_train_full5",
                   num_clients: int | None = None) -> list[str]:
    """Utterance ids of one of the paper's held-out sets (see `paper_eval_sets`)."""
    if name not in PAPER_EVAL_SETS:
        raise PartitionError(f"unknown held-out set {name!r}; choose from {list(PAPER_EVAL_SETS)}")
    sets = paper_eval_sets(map_path, num_clients)
    if name not in sets:
        raise PartitionError(f"the map at {map_path} has no {name} rows")
    return sets[name]["id"].tolist()


class TedliumPaperPartitioner(Partitioner):
    """The published 1,983-client TED-LIUM 3 map (clients 0..K-1 with `num_clients=K`).

    Manifest rows are matched to the map by id (`talk_start_end`), else by talk (speaker column,
    then the audio file's stem) and start/end to the centisecond. An id held by several clients
    in the map stays with the first (lowest index) one; the other copies are reported.
    `exclude_heldout=True` keeps the `ted_train_full5` utterances out of training.
    """

    kind = "tedlium_paper"
    uses_seed = False

    def __init__(self, map_path: str, num_clients: int | None = None, exclude_heldout: bool = False,
                 **common: Any) -> None:
        super().__init__(**common)
        if num_clients is not None:
            check_num_clients(num_clients)
        self.map_path = str(map_path)
        self.num_clients = num_clients
        self.exclude_heldout = bool(exclude_heldout)

    @staticmethod
    def _match(rows: pd.DataFrame, known: set, time_to_id: pd.Series) -> tuple[pd.Series, pd.Series]:
        """Map id per manifest row (NaN if none) and the rule that matched it."""
        ids = rows["id"].astype(str)
        matched = ids.where(ids.isin(known))
        how = pd.Series(np.where(matched.notna(), "id", ""), index=rows.index, dtype=object)
        if {"start", "end"} <= set(rows.columns):
            talks = {"speaker_time": rows["speaker"]}
            if "audio" in rows.columns:
                talks["audio_time"] = rows["audio"].astype(str).map(lambda a: Path(a).stem)
            for rule, talk in talks.items():
                candidate = _time_key(talk, rows["start"], rows["end"]).map(time_to_id)
                found = matched.isna() & candidate.notna()
                matched[found] = candidate[found]
                how[found] = rule
        return matched, how

    def _labels(self, rows: pd.DataFrame, seed: int, *,
                all_rows: pd.DataFrame) -> tuple[pd.Series, pd.DataFrame | None, dict]:
        print(f"reading the TED-LIUM client map {self.map_path}")
        whole = read_paper_map(self.map_path)
        clients = whole[whole["client_index"] >= 0]
        map_train = clients[clients["file"] == PAPER_TRAIN].sort_values("client_index", kind="stable")
        first = ~map_train["ID"].duplicated()
        owner = map_train[first].set_index("ID")
        in_scope = _paper_clients(clients, self.num_clients)
        dup = map_train[~first & map_train["client"].isin(set(in_scope["client"]))]
        parts = [excluded_rows(dup["ID"], "map_duplicate_id", client=dup["client"].to_numpy(),
                               detail=("kept in " + owner.loc[dup["ID"], "client"]).to_numpy(),
                               duration=dup["duration"].to_numpy())]

        by_time = clients.drop_duplicates("ID")
        time_to_id = pd.Series(by_time["ID"].to_numpy(),
                               index=_time_key(by_time["talk"], by_time["start"], by_time["end"]))
        time_to_id = time_to_id[~time_to_id.index.duplicated()]
        matched_all, how = self._match(all_rows, set(clients["ID"]), time_to_id)
        matched = matched_all.loc[rows.index]
        info = {f"matched_by_{rule}": int((how.loc[rows.index] == rule).sum())
                for rule in ("id", "speaker_time", "audio_time")}
        ids = rows["id"].astype(str)

        label = matched.map(owner["client"])
        index = matched.map(owner["client_index"])
        dur = rows["duration"]
        unmatched = matched.isna()
        parts.append(excluded_rows(ids[unmatched], "not_in_map", duration=dur[unmatched]))
        elsewhere = matched.notna() & label.isna()
        where = clients.drop_duplicates("ID").set_index("ID")
        parts.append(excluded_rows(ids[elsewhere], "map_client_heldout_split",
                                   client=matched[elsewhere].map(where["client"]).to_numpy(),
                                   detail=matched[elsewhere].map(where["file"]).to_numpy(),
                                   duration=dur[elsewhere]))
        beyond = label.notna() & (self.num_clients is not None) & (index >= (self.num_clients or 0))
        parts.append(excluded_rows(ids[beyond], "map_client_beyond_num_clients", client=label[beyond].to_numpy(),
                                   detail=f"num_clients={self.num_clients}", duration=dur[beyond]))
        label[beyond] = np.nan
        if self.exclude_heldout:
            full5 = set(clients.loc[clients["file"] == PAPER_EVAL_SETS[0], "ID"])
            held = label.notna() & matched.isin(full5)
            parts.append(excluded_rows(ids[held], "paper_heldout_5min", client=label[held].to_numpy(),
                                       detail=PAPER_EVAL_SETS[0], duration=dur[held]))
            label[held] = np.nan

        scope_ids = owner[owner["client"].isin(set(in_scope["client"]))]
        seen = set(matched_all.dropna())
        absent = scope_ids[~scope_ids.index.isin(seen)]
        parts.append(excluded_rows(absent.index, "map_id_not_in_manifest", client=absent["client"].to_numpy(),
                                   detail=PAPER_TRAIN, duration=absent["duration"].to_numpy()))
        info["map_train_rows_in_scope"] = int(map_train["client"].isin(set(in_scope["client"])).sum())
        info["map_clients_in_scope"] = int(in_scope["client"].nunique())
        return label, concat_excluded(parts), info


def map_statistics(path: str | Path) -> dict:
    """Statistics of the published map from its tables alone (no audio needed)."""
    frame = read_paper_map(path)
    clients = frame[frame["client_index"] >= 0]
    train = clients[clients["file"] == PAPER_TRAIN]
    minutes = train.groupby("client")["duration"].sum() / 60
    stats: dict[str, Any] = {
        "map": str(path),
        "clients": int(train["client"].nunique()),
        "utterances": int(len(train)),
        "unique_utterance_ids": int(train["ID"].nunique()),
        "ids_in_several_clients": int((train.groupby("ID")["client"].nunique() > 1).sum()),
        "hours": round(float(train["duration"].sum() / 3600), 3),
        "hours_unique_ids": round(float(train.drop_duplicates("ID")["duration"].sum() / 3600), 3),
        "talks": int(train["talk"].nunique()),
        "talks_in_several_clients": int((train.groupby("talk")["client"].nunique() > 1).sum()),
        "minutes_per_client": {
            "median": round(float(minutes.median()), 3), "mean": round(float(minutes.mean()), 3),
            "min": round(float(minutes.min()), 3), "max": round(float(minutes.max()), 3),
            "argmin": str(minutes.idxmin()), "argmax": str(minutes.idxmax()),
        },
        "rows_per_file": {k: int(v) for k, v in clients["file"].value_counts().sort_index().items()},
        "server_rows_per_file": {k: int(v) for k, v in
                                 frame.loc[frame["client_index"] < 0, "file"].value_counts().sort_index().items()},
    }
    for name in PAPER_EVAL_SETS:
        part = clients[clients["file"] == name]
        if len(part):
            per = part.groupby("client")["duration"].sum() / 60
            stats[name] = {"clients": int(part["client"].nunique()), "utterances": int(len(part)),
                           "hours": round(float(part["duration"].sum() / 3600), 3),
                           "median_minutes_per_client": round(float(per.median()), 3)}
    return stats
