"""What a run leaves behind: history.json, speakers.csv, plots/, written as the run goes.

Participation is tracked on the server from the screened replies (partition id -> speakers,
audio seconds): nothing private beyond what the clients already report. Each round's record
names the clients whose update did not count and why (failed, rejected, timed out), and says
when a round left the model unchanged.
"""

from __future__ import annotations

import json
import resource
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from fedspeech.experiment_data import ExperimentData
from fedspeech.federation.round_loop import RoundOutcome
from fedspeech.federation.round_report import RoundReport
from fedspeech.files import atomic_write_text
from fedspeech.metrics import per_speaker
from fedspeech.tracking import make_logger

NODE_COLUMNS = ["round", "node_id", "partition_id", "public_key_fingerprint", "outcome"]
SPEAKER_COLUMNS = ["speaker", "n_utts", "seconds", "rounds_participated", "seen_in_training",
                   "train_seconds", "train_utts", "wer", "cer"]

# aggregated reply metrics that the round record already holds in its own words (or that are
# per-client timings, meaningless once averaged)
_ALREADY_RECORDED = {"num-seconds", "num-examples", "partition-id", "num-sampled", "num-replied",
                     "num-failed", "num-rejected", "client-total-s", "client-compute-s", "train-loss"}


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _other_evaluation(record: dict[str, Any]) -> str:
    """The progress text of a task scored without WER (e.g. pretraining's masked units)."""
    shown = [f"{label} {record[key]:.3f}" for key, label in
             (("loss", "eval loss"), ("unit_acc", "masked-unit acc"), ("distill_cos", "cos"))
             if isinstance(record.get(key), (int, float))]
    return ", ".join(shown) or "no eval"


class RunRecorder:
    """Accumulates per-round records and participation, and writes the run-dir files."""

    def __init__(self, cfg: DictConfig, run_dir: Path, data: ExperimentData,
                 started_at: float | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.data = data
        self.history: list[dict[str, Any]] = []
        self.client_rounds: dict[int, list[int]] = defaultdict(list)
        #: when the user's command started (wall clock); elapsed times count from it
        self.t_start = time.time() if started_at is None else float(started_at)
        self.elapsed_before = 0.0
        self.last_records: pd.DataFrame | None = None
        self.verbose = bool(cfg.get("verbose", True))
        #: node id -> partition id, once the nodes reported it
        self.node_partitions: dict[int, int] = {}
        #: experiment tracking (`logger=none|tensorboard|wandb`): every round's numbers
        self.logger = make_logger(cfg, self.run_dir)
        #: node id -> public-key fingerprint (deployments with SuperNode authentication); when
        #: set, supernodes.csv records every sampled SuperNode of every round
        self.node_keys: dict[int, str] | None = None
        self.node_rows: list[dict[str, Any]] = []
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
                "elapsed_s": self.elapsed(), "node_rows": self.node_rows}

    def load_state(self, state: dict[str, Any]) -> None:
        self.history = list(state.get("history", []))
        self.client_rounds = defaultdict(list, {int(k): list(v) for k, v in state.get("client_rounds", {}).items()})
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.node_rows = list(state.get("node_rows", []))

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.t_start

    # ---- records ------------------------------------------------------------------------
    def wants_round0(self) -> bool:
        return not self.history

    def nodes_ready(self) -> None:
        if self.verbose:
            print(f"{len(self.node_partitions)} nodes ready, {time.time() - self.t_start:.1f} s after "
                  "launch", flush=True)

    def add_round0(self, metrics: dict[str, float]) -> None:
        self.history.append({"round": 0, **metrics, "clients_sampled": 0, "clients_replied": 0,
                             "train_seconds": 0.0, "bytes_up": 0, "bytes_down": 0,
                             "wall_s": 0.0, "elapsed_s": round(self.elapsed(), 2)})
        self._write_history()
        self.logger.log_round(0, self.history[-1])
        if self.verbose:
            shown = (f"WER {metrics['wer']:.3f}" if "wer" in metrics
                     else _other_evaluation(metrics))
            print(f"[round 0/{self.cfg.num_rounds}] initial model: {shown}", flush=True)

    def _pid(self, node_id: int) -> int | str:
        return self.node_partitions.get(node_id, f"node {node_id}")

    def add_round(self, outcome: RoundOutcome, records: pd.DataFrame | None) -> dict[str, Any]:
        """The history record of one federated round (also returned, for `on_round_end`)."""
        report = outcome.report
        train = dict(outcome.train_metrics or {})
        participants = [self._pid(n) for n in (report.accepted if report else [])]
        for pid in participants:
            if isinstance(pid, int):
                self.client_rounds[pid].append(outcome.server_round)
        record: dict[str, Any] = {
            "round": outcome.server_round, **dict(outcome.evaluate_metrics or {}),
            "train_loss": float(train.get("train-loss", float("nan"))),
            "clients_sampled": len(report.sampled) if report else 0,
            "clients_replied": len(participants),
            "clients_failed": len(report.problems()) if report else 0,
            "participants": sorted(participants, key=str),
            "participant_nodes": list(report.accepted) if report else [],
            "failed": {str(self._pid(n)): why for n, why in (report.failed if report else {}).items()},
            "rejected": {str(self._pid(n)): why for n, why in (report.rejected if report else {}).items()},
            "timed_out": sorted((self._pid(n) for n in report.timed_out), key=str) if report else [],
            "skipped": report.skipped if report else None,
            "clients": {str(self._pid(n)): m for n, m in (report.client_metrics if report else {}).items()},
            "train_seconds": round(float(train.get("num-seconds", 0.0)), 3),
            "bytes_up": int(outcome.bytes_up), "bytes_down": int(outcome.bytes_down),
            "client_compute_s": round(self._client_compute(train), 3),
            "client_total_s": round(float(train.get("client-total-s", 0.0)), 3),
            "train_wall_s": round(outcome.train_wall_s, 3),
            "wall_s": round(outcome.wall_s, 3), "elapsed_s": round(self.elapsed(), 2),
            "server_peak_rss_mb": round(peak_rss_mb(), 1),
        }
        if "lr" in outcome.train_config:
            record["lr"] = float(outcome.train_config["lr"])
        self._add_aggregated(record, train)
        if self.node_keys is not None and report is not None:
            self._add_node_rows(report)
        self._finish_round(record, records)
        return record

    def _add_node_rows(self, report: RoundReport) -> None:
        """One supernodes.csv row per sampled SuperNode: who it is and whether its update counted."""
        keys = self.node_keys or {}
        accepted = set(report.accepted)
        problems = report.problems()
        for node in report.sampled:
            self.node_rows.append({
                "round": report.server_round, "node_id": node,
                "partition_id": self.node_partitions.get(node, ""),
                "public_key_fingerprint": keys.get(node, "not in the registry"),
                "outcome": "accepted" if node in accepted else problems.get(node, "not counted")})
        atomic_write_text(self.run_dir / "supernodes.csv",
                          pd.DataFrame(self.node_rows, columns=NODE_COLUMNS).to_csv(index=False))

    @staticmethod
    def _client_compute(train: dict[str, Any]) -> float:
        return float(train.get("client-compute-s", 0.0))     # summed over the accepted replies

    def add_pooled_round(self, rnd: int, *, metrics: dict[str, float], train_loss: float,
                         train_seconds: float, participants: list[int], lr: float,
                         train_wall_s: float, wall_s: float, records: pd.DataFrame | None) -> None:
        """A round of the centralised baseline (no clients, pooled data)."""
        for pid in participants:
            self.client_rounds[int(pid)].append(rnd)
        record = {"round": rnd, **metrics, "train_loss": float(train_loss), "clients_sampled": 0,
                  "clients_replied": 0, "clients_failed": 0, "participants": [],
                  "train_seconds": round(float(train_seconds), 3), "bytes_up": 0, "bytes_down": 0,
                  "client_compute_s": round(train_wall_s, 3), "client_total_s": round(train_wall_s, 3),
                  "train_wall_s": round(train_wall_s, 3),
                  "wall_s": round(wall_s, 3), "elapsed_s": round(self.elapsed(), 2), "lr": float(lr)}
        self._finish_round(record, records)

    @staticmethod
    def _add_aggregated(record: dict[str, Any], train: dict[str, Any]) -> None:
        for key, value in train.items():
            name = key.replace("-", "_")
            if key in _ALREADY_RECORDED or name in record:
                continue
            if isinstance(value, (int, float)):
                record[name] = float(value)

    def _finish_round(self, record: dict[str, Any], records: pd.DataFrame | None) -> None:
        self.history.append(record)
        self.logger.log_round(int(record["round"]), record)
        if records is not None:
            self.last_records = records
            self.write_speakers()
        self._write_history()
        if self.verbose:
            print(self.progress_line(record), flush=True)

    def progress_line(self, record: dict[str, Any]) -> str:
        """`[round 3/35] 2/2 clients replied, 118 s audio, train loss 1.9, WER 0.61 ...`."""
        wer = record.get("wer")
        extra = ""
        if "wer_unseen" in record:
            extra = f" (seen {record.get('wer_seen', float('nan')):.3f} / unseen {record['wer_unseen']:.3f})"
        eps = f", eps {record['epsilon']:.2f}" if "epsilon" in record else ""
        sampled = record["clients_sampled"]
        who = f"{record['clients_replied']}/{sampled} clients replied" if sampled else "pooled data"
        problems = {**record.get("failed", {}), **record.get("rejected", {})}
        note = f" [{len(problems)} not counted: " + "; ".join(
            f"{pid}: {why}" for pid, why in list(problems.items())[:3]) + "]" if problems else ""
        skipped = f" [model unchanged: {record['skipped']}]" if record.get("skipped") else ""
        evaluation = (f"WER {wer:.3f} CER {record['cer']:.3f}{extra}" if wer is not None
                      else _other_evaluation(record))
        return (f"[round {record['round']}/{self.cfg.num_rounds}] {who}, "
                f"{record['train_seconds']:.0f} s audio, train loss {record['train_loss']:.3f}, "
                f"{evaluation}{eps}, {record['wall_s']:.1f} s{note}{skipped}")

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
        atomic_write_text(self.run_dir / "speakers.csv", self.speaker_table().to_csv(index=False))

    def finish(self) -> None:
        """Draw the plots, close the tracking logger and print the last line."""
        from fedspeech.analysis.plots import plot_run
        self.logger.close()
        plot_run(self.run_dir)
        if self.verbose and self.history:
            last = self.history[-1]
            final = (f"final WER {last['wer']:.3f}" if "wer" in last else f"final {_other_evaluation(last)}")
            print(f"done: {len(self.history) - 1} rounds, {final}, "
                  f"{self.elapsed():.0f} s; outputs in {self.run_dir}", flush=True)
