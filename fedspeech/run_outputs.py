"""What a run leaves behind: history.json, speakers.csv, plots/, written as the run goes.

Participation is tracked on the server from the replies (partition id -> speakers, audio seconds):
nothing private beyond what the clients already report.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd
from flwr.app import ArrayRecord, Message
from omegaconf import DictConfig

from fedspeech import LAUNCH_TIME
from fedspeech.experiment_data import ExperimentData
from fedspeech.metrics import per_speaker

SPEAKER_COLUMNS = ["speaker", "n_utts", "seconds", "rounds_participated", "seen_in_training",
                   "train_seconds", "train_utts", "wer", "cer"]

# aggregated reply metrics that the round record already holds in its own words (or that are
# per-client timings, meaningless once averaged)
_ALREADY_RECORDED = {"num-seconds", "num-examples", "partition-id", "num-sampled", "num-replied",
                     "num-failed", "client-total-s", "client-compute-s", "train-loss"}


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class RunRecorder:
    """Accumulates per-round records and participation, and writes the run-dir files."""

    def __init__(self, cfg: DictConfig, run_dir: Path, data: ExperimentData) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.data = data
        self.history: list[dict[str, Any]] = []
        self.client_rounds: dict[int, list[int]] = defaultdict(list)
        self.t_start = LAUNCH_TIME
        self.elapsed_before = 0.0
        self.last_records: pd.DataFrame | None = None
        self.verbose = bool(cfg.get("verbose", True))
        train = data.train_rows()
        self.train_by_speaker = train.groupby("speaker")["duration"].agg(["count", "sum"])
        client_of = data.clients.set_index("id")["client"]
        spk = train.set_index("id")["speaker"]
        self.client_speakers: dict[int, set[str]] = defaultdict(set)
        for utt, client in client_of.items():
            if utt in spk.index:
                self.client_speakers[int(client)].add(spk[utt])

    # ---- resume -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"history": self.history,
                "client_rounds": {str(k): v for k, v in self.client_rounds.items()},
                "elapsed_s": self.elapsed()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.history = list(state.get("history", []))
        self.client_rounds = defaultdict(list, {int(k): list(v) for k, v in state.get("client_rounds", {}).items()})
        self.elapsed_before = float(state.get("elapsed_s", 0.0))

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.t_start

    # ---- records ------------------------------------------------------------------------
    def wants_round0(self) -> bool:
        return not self.history

    def add_round0(self, metrics: dict[str, float]) -> None:
        self.history.append({"round": 0, **metrics, "clients_sampled": 0, "clients_replied": 0,
                             "train_seconds": 0.0, "bytes_up": 0, "bytes_down": 0,
                             "wall_s": 0.0, "elapsed_s": round(self.elapsed(), 2)})
        self._write_history()
        if self.verbose:
            print(f"[round 0/{self.cfg.num_rounds}] initial model: WER {metrics.get('wer', float('nan')):.3f}",
                  flush=True)

    def add_round(self, rnd: int, *, metrics: dict[str, float], sampled: int, replies: list[Message],
                  failures: int, bytes_up: int, bytes_down: int, aggregated: dict[str, Any],
                  lr: float | None, train_wall_s: float, wall_s: float,
                  records: pd.DataFrame | None, train_seconds: float | None = None) -> None:
        """`train_seconds` is given by runs without replies (the centralised baseline)."""
        participants, seconds, compute = [], float(train_seconds or 0.0), 0.0
        for msg in replies:
            m = msg.content["metrics"]
            pid = int(m["partition-id"])
            participants.append(pid)
            self.client_rounds[pid].append(rnd)
            seconds += float(m["num-seconds"])
            compute += float(m.get("client-compute-s", 0.0))
        record: dict[str, Any] = {
            "round": rnd, **metrics,
            "train_loss": float(aggregated.get("train-loss", float("nan"))),
            "clients_sampled": sampled, "clients_replied": len(replies), "clients_failed": failures,
            "participants": sorted(participants), "train_seconds": round(seconds, 3),
            "bytes_up": int(bytes_up), "bytes_down": int(bytes_down),
            "client_compute_s": round(compute, 3), "train_wall_s": round(train_wall_s, 3),
            "wall_s": round(wall_s, 3), "elapsed_s": round(self.elapsed(), 2),
        }
        if lr is not None:
            record["lr"] = float(lr)
        for key, value in aggregated.items():
            name = key.replace("-", "_")
            if key in _ALREADY_RECORDED or name in record:
                continue
            if isinstance(value, (int, float)):
                record[name] = float(value)
        self.history.append(record)
        if records is not None:
            self.last_records = records
            self.write_speakers()
        self._write_history()
        if self.verbose:
            wer = metrics.get("wer")
            extra = ""
            if "wer_unseen" in metrics:
                extra = f" (seen {metrics.get('wer_seen', float('nan')):.3f} / unseen {metrics['wer_unseen']:.3f})"
            eps = f", eps {record['epsilon']:.2f}" if "epsilon" in record else ""
            who = f"{len(replies)}/{sampled} clients replied" if sampled else "pooled data"
            print(f"[round {rnd}/{self.cfg.num_rounds}] {who}, "
                  f"{seconds:.0f} s audio, train loss {record['train_loss']:.3f}, "
                  + (f"WER {wer:.3f} CER {metrics['cer']:.3f}{extra}" if wer is not None else "no eval")
                  + f"{eps}, {wall_s:.1f} s", flush=True)

    # ---- files --------------------------------------------------------------------------
    def _write_history(self) -> None:
        atomic_write_text(self.run_dir / "history.json", json.dumps(self.history, indent=1))

    def speaker_table(self) -> pd.DataFrame:
        if self.last_records is None:
            raise RuntimeError("no evaluation has run yet")
        table = per_speaker(self.last_records)
        rounds: dict[str, set[int]] = defaultdict(set)
        for client, rnds in self.client_rounds.items():
            for spk in self.client_speakers.get(client, ()):
                rounds[spk].update(rnds)
        table["rounds_participated"] = [len(rounds.get(s, ())) for s in table["speaker"]]
        table["seen_in_training"] = table["speaker"].isin(self.train_by_speaker.index)
        table["train_utts"] = [int(self.train_by_speaker["count"].get(s, 0)) for s in table["speaker"]]
        table["train_seconds"] = [round(float(self.train_by_speaker["sum"].get(s, 0.0)), 2)
                                  for s in table["speaker"]]
        return table[SPEAKER_COLUMNS]

    def write_speakers(self) -> None:
        table = self.speaker_table()
        path = self.run_dir / "speakers.csv"
        atomic_write_text(path, table.to_csv(index=False))

    def finish(self, arrays: ArrayRecord | None = None) -> None:
        from fedspeech.analysis.plots import plot_run
        plot_run(self.run_dir)
        if self.verbose and self.history:
            last = self.history[-1]
            print(f"done: {len(self.history) - 1} rounds, final WER {last.get('wer', float('nan')):.3f}, "
                  f"{self.elapsed():.0f} s; outputs in {self.run_dir}", flush=True)
