"""Plots of one run, made from its files alone (history.json, speakers.csv)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def plot_wer(history: list[dict], out: Path, baseline: float | None = None) -> Path:
    rounds = [h["round"] for h in history if "wer" in h]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(rounds, [h["wer"] for h in history if "wer" in h], marker="o", ms=3, label="WER")
    ax.plot(rounds, [h["cer"] for h in history if "cer" in h], marker="s", ms=3, label="CER")
    if any("wer_unseen" in h for h in history):
        ax.plot([h["round"] for h in history if "wer_unseen" in h],
                [h["wer_unseen"] for h in history if "wer_unseen" in h], ls="--", label="WER unseen speakers")
    if baseline is not None:
        ax.axhline(baseline, color="grey", ls=":", label="centralised baseline WER")
    ax.set_xlabel("round")
    ax.set_ylabel("error rate")
    ax.set_title("Global model on the evaluation split")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_speakers(speakers: pd.DataFrame, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for seen, marker, label in ((True, "o", "seen in training"), (False, "x", "unseen")):
        part = speakers[speakers["seen_in_training"] == seen]
        if len(part):
            ax.scatter(part["rounds_participated"], part["wer"], marker=marker, label=label)
    ax.set_xlabel("rounds the speaker's client participated in")
    ax.set_ylabel("speaker WER")
    ax.set_title("Per-speaker WER vs participation")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_run(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    made = []
    history_file = run_dir / "history.json"
    if history_file.is_file():
        made.append(plot_wer(json.loads(history_file.read_text()), plots / "wer.png"))
    speakers_file = run_dir / "speakers.csv"
    if speakers_file.is_file():
        made.append(plot_speakers(pd.read_csv(speakers_file, dtype={"speaker": str}), plots / "speakers.png"))
    return made
