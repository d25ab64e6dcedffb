"""Opt-in recording of the client updates the server receives (`record_updates=true`).

What is written is exactly what an honest-but-curious server (or anyone who reads its disk) sees
in a round: the global model the round started from and each client's returned parameters. It
exists for privacy analyses (`python -m fedspeech.analysis.leakage`) and is off by default; the
files never leave `<run_dir>/updates/`:

    updates/index.csv                                one row per recorded client update
    updates/round_0003/global.safetensors            the global model round 3 started from
    updates/round_0003/client_00007.safetensors      partition 7's reply in round 3

Each reply is written when it arrives and then forgotten, so recording costs O(model) memory
whatever the cohort size. Every file goes through `fedspeech.files` (temp file, fsync, rename):
a killed run leaves whole files, and a resumed run rewrites the rounds it repeats.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.numpy import load_file, save_file

from fedspeech.experiment_data import ExperimentData
from fedspeech.files import atomic_write_text, atomic_write_with

UPDATES_DIR = "updates"
INDEX_FILE = "index.csv"
GLOBAL_FILE = "global.safetensors"
#: Index columns: `speakers` is space-separated; `gender` is one value, `mixed`, or empty when
#: unknown; `weight` is the reply's aggregation-weight metric as the client reported it.
INDEX_COLUMNS = ["round", "partition_id", "file", "speakers", "gender", "weight", "num_examples",
                 "num_seconds", "train_loss"]


def round_folder(updates_dir: Path, rnd: int) -> Path:
    return Path(updates_dir) / f"round_{int(rnd):04d}"


def client_file(updates_dir: Path, rnd: int, partition_id: int) -> Path:
    return round_folder(updates_dir, rnd) / f"client_{int(partition_id):05d}.safetensors"


def _save(path: Path, arrays: Mapping[str, np.ndarray], metadata: dict[str, str]) -> None:
    tensors = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    atomic_write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def _number(metrics: Mapping[str, float], key: str) -> float:
    value = metrics.get(key)
    return float(value) if isinstance(value, (int, float)) else math.nan


class UpdateRecorder:
    """Writes the global model of each chosen round and every client update of that round.

    `rounds=None` records every round. `client_speakers` (partition id -> speakers) and
    `speaker_gender` fill the index's `speakers` and `gender` columns when known;
    `weight_key` names the reply metric that weights aggregation (`strategy.weighted_by_key`).
    """

    def __init__(self, run_dir: Path, rounds: Iterable[int] | None, *,
                 client_speakers: Mapping[int, Iterable[str]] | None = None,
                 speaker_gender: Mapping[str, str] | None = None,
                 weight_key: str = "num-seconds") -> None:
        self.dir = Path(run_dir) / UPDATES_DIR
        self.rounds = None if rounds is None else {int(r) for r in rounds}
        self.client_speakers = {int(k): sorted(v) for k, v in (client_speakers or {}).items()}
        self.speaker_gender = dict(speaker_gender or {})
        self.weight_key = weight_key
        self._shapes: dict[int, dict[str, tuple[int, ...]]] = {}   # names/shapes, not tensors
        index = self.dir / INDEX_FILE
        self._rows: list[dict] = (pd.read_csv(index, dtype={"speakers": str, "gender": str},
                                              keep_default_na=False).to_dict("records")
                                  if index.is_file() else [])

    @classmethod
    def for_experiment(cls, run_dir: Path, rounds: Iterable[int] | None, data: ExperimentData,
                       weight_key: str = "num-seconds") -> "UpdateRecorder":
        """A recorder that names each client's speakers and gender from the manifest."""
        speakers = {c: data.speakers_of(c) for c in range(data.num_clients)}
        gender: dict[str, str] = {}
        if "gender" in data.manifest.columns:
            known = data.manifest.loc[data.manifest["gender"].astype(str).str.strip() != ""]
            gender = known.groupby("speaker")["gender"].first().astype(str).to_dict()
        return cls(run_dir, rounds, client_speakers=speakers, speaker_gender=gender,
                   weight_key=weight_key)

    def wants(self, rnd: int) -> bool:
        return self.rounds is None or int(rnd) in self.rounds

    def begin_round(self, rnd: int, global_arrays: Mapping[str, np.ndarray]) -> None:
        """Store the global model round `rnd` starts from (once per round; a repeat is ignored)."""
        rnd = int(rnd)
        if not self.wants(rnd) or rnd in self._shapes:
            return
        # a resumed run repeats the round it was killed in: its earlier rows are replaced
        self._rows = [r for r in self._rows if int(r["round"]) != rnd]
        _save(round_folder(self.dir, rnd) / GLOBAL_FILE, global_arrays, {"round": str(rnd)})
        self._shapes[rnd] = {k: tuple(np.shape(v)) for k, v in global_arrays.items()}
        self._write_index()

    def record(self, rnd: int, partition_id: int, arrays: Mapping[str, np.ndarray],
               metrics: Mapping[str, float]) -> None:
        """Write one client's returned parameters of round `rnd` and add it to the index."""
        rnd, partition_id = int(rnd), int(partition_id)
        if not self.wants(rnd):
            return
        if rnd not in self._shapes:
            raise RuntimeError(f"UpdateRecorder.record: begin_round({rnd}) was not called")
        shapes = {k: tuple(np.shape(v)) for k, v in arrays.items()}
        if shapes != self._shapes[rnd]:
            raise ValueError(f"round {rnd}, partition {partition_id}: the update's tensor names or "
                             "shapes differ from the round's global model")
        path = client_file(self.dir, rnd, partition_id)
        meta = {k: repr(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        _save(path, arrays, {"round": str(rnd), "partition_id": str(partition_id), **meta})
        speakers = self.client_speakers.get(partition_id, [])
        self._rows = [r for r in self._rows
                      if (int(r["round"]), int(r["partition_id"])) != (rnd, partition_id)]
        self._rows.append({
            "round": rnd, "partition_id": partition_id,
            "file": str(path.relative_to(self.dir)), "speakers": " ".join(speakers),
            "gender": self._gender(speakers), "weight": _number(metrics, self.weight_key),
            "num_examples": _number(metrics, "num-examples"),
            "num_seconds": _number(metrics, "num-seconds"),
            "train_loss": _number(metrics, "train-loss")})
        self._write_index()

    def _gender(self, speakers: list[str]) -> str:
        """The client's gender when every speaker's is known: one value, or `mixed`."""
        if not speakers or any(s not in self.speaker_gender for s in speakers):
            return ""
        genders = {self.speaker_gender[s] for s in speakers}
        return genders.pop() if len(genders) == 1 else "mixed"

    def close(self) -> None:
        """Nothing is held back: every update is on disk when `record` returns."""
        self._shapes.clear()

    def _write_index(self) -> None:
        frame = pd.DataFrame(self._rows, columns=INDEX_COLUMNS)
        frame = frame.sort_values(["round", "partition_id"], kind="stable")
        atomic_write_text(self.dir / INDEX_FILE, frame.to_csv(index=False))


class RecordedUpdates:
    """Read access to a run's `updates/` folder, one tensor file at a time."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir) / UPDATES_DIR
        index = self.dir / INDEX_FILE
        if not index.is_file():
            raise FileNotFoundError(
                f"{index} not found: the run did not record updates (run it with "
                "record_updates=true, optionally record_updates_rounds=[...])")
        self.index = pd.read_csv(index, dtype={"speakers": str, "gender": str},
                                 keep_default_na=False)
        if self.index.empty:
            raise ValueError(f"{index} lists no client updates")

    @property
    def rounds(self) -> list[int]:
        return sorted(int(r) for r in self.index["round"].unique())

    def global_arrays(self, rnd: int) -> dict[str, np.ndarray]:
        path = round_folder(self.dir, rnd) / GLOBAL_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the global model of round {rnd}")
        return load_file(str(path))

    def client_arrays(self, row: Mapping) -> dict[str, np.ndarray]:
        path = self.dir / str(row["file"])
        if not path.is_file():
            raise FileNotFoundError(f"{path} is listed in {self.dir / INDEX_FILE} but missing")
        return load_file(str(path))
