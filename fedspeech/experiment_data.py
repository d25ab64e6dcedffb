"""The prepared data of one experiment as a process sees it: manifest, partition, tokenizer.

Loaded once per process (server or Ray worker) and shared by every client that process trains;
the cache is keyed by what the files are (inode, mtime, size), so a re-prepare in the same
process is seen.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from fedspeech.data.audio import AudioCache
from fedspeech.data.manifest import read_manifest
from fedspeech.data.partition import ClientIndex, read_partition
from fedspeech.data.text import CharTokenizer


@dataclass
class ExperimentData:
    manifest: pd.DataFrame
    clients: pd.DataFrame            # id, client (train utterances of the chosen partition)
    tokenizer: CharTokenizer
    audio_cache: AudioCache

    @property
    def num_clients(self) -> int:
        return int(self.clients["client"].max()) + 1

    @functools.cached_property
    def client_index(self) -> ClientIndex:
        return ClientIndex(self.manifest, self.clients)

    def client_rows(self, client: int) -> pd.DataFrame:
        """The manifest rows of one client (checked: the client exists, all its rows are there)."""
        return self.client_index.rows(client)

    def speakers_of(self, client: int) -> list[str]:
        """The speakers of one client (names a recorded update's speakers)."""
        return sorted(set(self.client_rows(client)["speaker"]))

    def train_rows(self) -> pd.DataFrame:
        """Every utterance of the partition (the pooled data of the centralised baseline)."""
        return self.manifest.loc[self.manifest["id"].isin(set(self.clients["id"]))]

    def split_rows(self, split: str, max_utterances: int | None = None) -> pd.DataFrame:
        rows = self.manifest.loc[self.manifest["split"] == split]
        if rows.empty:
            raise ValueError(f"the manifest has no '{split}' utterances")
        if max_utterances:
            rows = rows.sort_values("id").head(int(max_utterances))
        return rows


def prepared_files(cfg: DictConfig) -> dict[str, Path]:
    prepared = Path(cfg.paths.prepared)
    return {"manifest": prepared / "manifest.csv", "tokenizer": prepared / "tokenizer.json",
            "clients": Path(cfg.paths.partition) / "clients.csv"}


def file_identity(path: Path) -> tuple[int, int, int]:
    """(inode, mtime_ns, size): changes whenever the file is rewritten, atomically or not."""
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=2)
def _load(manifest: str, tokenizer: str, clients: str, cache_mb: float,
          identity: tuple) -> ExperimentData:
    """`identity` (of the three files) is only part of the key: a rewritten file is a new entry."""
    return ExperimentData(manifest=read_manifest(manifest), clients=read_partition(clients),
                          tokenizer=CharTokenizer.load(tokenizer), audio_cache=AudioCache(cache_mb))


def load_experiment_data(cfg: DictConfig) -> ExperimentData:
    files = prepared_files(cfg)
    for name, path in files.items():
        if not path.is_file():
            raise FileNotFoundError(f"missing {name} file {path}: run "
                                    f"`python -m fedspeech.dataset_preparation dataset={cfg.dataset.name} "
                                    f"partitioner={cfg.partitioner.name}`")
    identity = tuple(file_identity(path) for path in files.values())
    return _load(str(files["manifest"]), str(files["tokenizer"]), str(files["clients"]),
                 float(cfg.audio_cache_mb), identity)
