"""Plots of one run, made from its files alone (history.json, speakers.csv, the partition summary).

`plot_run(run_dir)` is what a run calls when it finishes, and what `python -m fedspeech.analysis`
calls to redraw a finished run. Figures are drawn on `matplotlib.figure.Figure` objects (no pyplot,
no global backend switch), so importing this module never changes a user's interactive backend.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedspeech.analysis.summary import RunFiles, baseline_wer, load_run, series
from fedspeech.files import atomic_write_with

SEEN_STYLE = {"color": "tab:blue", "marker": "o", "label": "seen in training"}
UNSEEN_STYLE = {"color": "tab:orange", "marker": "x", "label": "unseen (no training audio)"}


def _tidy(ax: Any, integer_axis: str) -> None:
    """The look every plot shares: integer ticks on one axis, a light grid, a small legend."""
    getattr(ax, f"{integer_axis}axis").set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def save_figure(fig: Figure, path: Path) -> Path:
    """Write atomically (`fedspeech.files`), so a reader never sees half a PNG."""
    atomic_write_with(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    return path


def _run_title(run: RunFiles) -> str:
    parts = [run.cfg("model.name"), run.cfg("dataset.name")]
    head = " on ".join(str(p) for p in parts if p is not None)
    if run.cfg("federated", True) is False:
        tail = "centralised"
    else:
        tail = ", ".join(str(p) for p in (run.cfg("strategy.name"), run.cfg("partitioner.name")) if p)
    return f"{head} ({tail})" if head and tail else head or tail or run.run_dir.name


def _finite(values: np.ndarray) -> bool:
    return bool(np.isfinite(values).any())


# ---- the figures ----------------------------------------------------------------------------
def plot_wer(run: RunFiles, out: Path, baseline: tuple[float, str] | None = None) -> Path | None:
    """WER and CER of the global model per round; seen/unseen WER; an optional baseline line."""
    lines = [("wer", "WER", {"marker": "o", "color": "tab:blue"}),
             ("cer", "CER", {"marker": "s", "color": "tab:green"}),
             ("wer_seen", "WER, speakers seen in training", {"ls": "--", "marker": ".", "color": "tab:purple"}),
             ("wer_unseen", "WER, unseen speakers", {"ls": "--", "marker": "x", "color": "tab:orange"})]
    drawn = [(key, label, style, *series(run.history, key)) for key, label, style in lines]
    drawn = [d for d in drawn if _finite(d[4])]
    if not drawn:
        return None
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    for _, label, style, rounds, values in drawn:
        ax.plot(rounds, 100 * values, ms=4, label=label, **style)
    if baseline is not None:
        ax.axhline(100 * baseline[0], color="grey", ls=":", lw=1.5,
                   label=f"{baseline[1]}: WER {100 * baseline[0]:.1f} %")
    split = run.cfg("eval.split")
    ax.set_title(f"{_run_title(run)}\nglobal model on the {split or 'evaluation'} split", fontsize=10)
    ax.set_xlabel("round (0 = initial model)")
    ax.set_ylabel("error rate (%)")
    _tidy(ax, integer_axis="x")
    fig.tight_layout()
    return save_figure(fig, out)


def plot_speakers(speakers: pd.DataFrame, out: Path, title: str = "") -> Path | None:
    """Per-speaker WER against the number of rounds the speaker's client trained in."""
    valid = speakers[speakers["wer"].notna()]
    if valid.empty:
        return None
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    rng = np.random.default_rng(0)  # fixed jitter: points at the same count stay apart, redraws agree
    for seen, style in ((True, SEEN_STYLE), (False, UNSEEN_STYLE)):
        part = valid[valid["seen_in_training"] == seen]
        if part.empty:
            continue
        jitter = rng.uniform(-0.12, 0.12, len(part)) if len(part) > 1 else 0.0
        ax.scatter(part["rounds_participated"] + jitter, 100 * part["wer"], alpha=0.7,
                   label=f"{style['label']} ({len(part)})", color=style["color"], marker=style["marker"])
        if seen:
            means = part.groupby("rounds_participated")["wer"].mean()
            ax.plot(means.index, 100 * means.to_numpy(), color="black", lw=1, marker="_", ms=14,
                    label="mean of seen speakers")
    dropped = len(speakers) - len(valid)
    ax.set_title((f"{title}\n" if title else "") + "per-speaker WER vs participation"
                 + (f" ({dropped} speakers without a WER left out)" if dropped else ""), fontsize=10)
    ax.set_xlabel("rounds the speaker's client trained in")
    ax.set_ylabel("speaker WER (%)")
    _tidy(ax, integer_axis="x")
    fig.tight_layout()
    return save_figure(fig, out)


def plot_speakers_hist(speakers: pd.DataFrame, out: Path, title: str = "") -> Path | None:
    """Distribution of per-speaker WER, seen and unseen speakers overlaid on shared bins."""
    valid = speakers[speakers["wer"].notna()]
    if valid.empty:
        return None
    wer = 100 * valid["wer"].to_numpy(dtype=float)
    edges = np.histogram_bin_edges(wer, bins=min(30, max(5, int(np.sqrt(len(wer))) * 2)))
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    for seen, style in ((True, SEEN_STYLE), (False, UNSEEN_STYLE)):
        part = 100 * valid.loc[valid["seen_in_training"] == seen, "wer"].to_numpy(dtype=float)
        if not len(part):
            continue
        ax.hist(part, bins=edges, alpha=0.55, color=style["color"], edgecolor="white",
                label=f"{style['label']} ({len(part)})")
        ax.axvline(part.mean(), color=style["color"], ls="--", lw=1.2, label=f"mean {part.mean():.1f} %")
    ax.set_title((f"{title}\n" if title else "") + "distribution of per-speaker WER", fontsize=10)
    ax.set_xlabel("speaker WER (%)")
    ax.set_ylabel("number of speakers")
    _tidy(ax, integer_axis="y")
    fig.tight_layout()
    return save_figure(fig, out)


def client_participation(history: list[dict[str, Any]]) -> dict[int, int]:
    """Rounds each partition id trained in, from the `participants` of the history."""
    counts: dict[int, int] = {}
    for h in history:
        for pid in h.get("participants") or []:
            counts[int(pid)] = counts.get(int(pid), 0) + 1
    return counts


def plot_client_sizes(summary: dict[str, Any], history: list[dict[str, Any]], out: Path) -> Path:
    """Training audio per client (from the partition's summary.json) and, for a federated run,
    how often each client was sampled against its size."""
    clients = summary.get("clients") or []
    if not clients:
        raise ValueError("partition summary.json lists no clients")
    ids = np.array([int(c["client"]) for c in clients])
    minutes = np.array([float(c["seconds"]) / 60 for c in clients])
    counts = client_participation(history)
    federated = bool(counts)
    fig = Figure(figsize=(11, 4.2) if federated else (6.4, 4.2))
    axes = fig.subplots(1, 2 if federated else 1, squeeze=False)[0]
    ax = axes[0]
    ax.hist(minutes, bins=min(50, max(5, len(minutes) // 4)), color="tab:blue", edgecolor="white")
    ax.axvline(float(np.median(minutes)), color="tab:red", ls="--", label=f"median {np.median(minutes):.2f} min")
    name = summary.get("partitioner", {}).get("name", "partition")
    ax.set_title(f"{name}: {len(clients)} clients, {minutes.sum() / 60:.2f} h of training audio", fontsize=10)
    ax.set_xlabel("training audio per client (minutes)")
    ax.set_ylabel("number of clients")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if federated:
        ax = axes[1]
        rounds = np.array([counts.get(int(i), 0) for i in ids])
        ax.scatter(minutes, rounds, alpha=0.7, color="tab:blue")
        trained = int(max(h["round"] for h in history))
        ax.set_title(f"participation over {trained} rounds ({int((rounds > 0).sum())} of "
                     f"{len(ids)} clients trained)", fontsize=10)
        ax.set_xlabel("training audio of the client (minutes)")
        ax.set_ylabel("rounds the client trained in")
        ax.set_ylim(-0.3, max(1, int(rounds.max())) + 0.3)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out)


def plot_epsilon(run: RunFiles, out: Path) -> Path | None:
    """Privacy spent per round, and the WER reached at each epsilon."""
    rounds, eps = series(run.history, "epsilon")
    if not _finite(eps):
        return None
    fig = Figure(figsize=(11, 4.2))
    ax, ax2 = fig.subplots(1, 2)
    ax.plot(rounds, eps, marker="o", ms=4, color="tab:red", label="epsilon")
    delta, z = run.cfg("strategy.dp.delta"), run.cfg("strategy.dp.noise_multiplier")
    ax.set_title(f"user-level DP: delta {delta}, noise multiplier {z}", fontsize=10)
    ax.set_xlabel("round")
    ax.set_ylabel("epsilon (cumulative, dimensionless)")
    _tidy(ax, integer_axis="x")
    by_round = {h["round"]: h for h in run.history}
    pairs = [(e, by_round[r].get("wer")) for r, e in zip(rounds, eps) if by_round[r].get("wer") is not None]
    if pairs:
        e, w = np.array(pairs, dtype=float).T
        ax2.plot(e, 100 * w, marker="o", ms=4, color="tab:blue", label="WER")
    ax2.set_title("privacy / utility", fontsize=10)
    ax2.set_xlabel("epsilon spent so far")
    ax2.set_ylabel("WER (%)")
    ax2.grid(alpha=0.3)
    if pairs:
        ax2.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out)


def plot_pretraining(run: RunFiles, out: Path) -> Path | None:
    """task=pretrain: masked-unit accuracy and loss per round; codebook usage (perplexity)."""
    rounds, acc = series(run.history, "unit_acc")
    if not _finite(acc):
        return None
    fig = Figure(figsize=(11, 4.2))
    ax, ax2 = fig.subplots(1, 2)
    ax.plot(rounds, 100 * acc, marker="o", ms=4, color="tab:blue", label="masked-unit accuracy (%)")
    loss_rounds, loss = series(run.history, "loss")
    twin = ax.twinx()
    twin.plot(loss_rounds, loss, marker="s", ms=3, color="tab:red", label="masked-unit loss")
    twin.set_ylabel("cross-entropy (nats)")
    ax.set_title(f"{_run_title(run)}\nglobal model, held-out audio", fontsize=10)
    ax.set_xlabel("round (0 = initial model)")
    ax.set_ylabel("accuracy (%)")
    _tidy(ax, integer_axis="x")
    twin.legend(fontsize=8, loc="lower right")
    for key, label, style in (("target_perplexity", "k-means targets", {"color": "tab:green"}),
                              ("pred_perplexity", "model predictions", {"color": "tab:purple"})):
        r, v = series(run.history, key)
        if _finite(v):
            ax2.plot(r, v, marker="o", ms=4, label=label, **style)
    ax2.set_title("codebook usage: targets on held-out frames, predictions on masked ones", fontsize=9)
    ax2.set_xlabel("round")
    ax2.set_ylabel("perplexity (clusters in use)")
    _tidy(ax2, integer_axis="x")
    fig.tight_layout()
    return save_figure(fig, out)


def plot_kmeans(run: RunFiles, out: Path) -> Path | None:
    """Inertia per frame after each federated k-means step (round-0 record of history.json)."""
    steps = [s for h in run.history if h.get("round") == 0 for s in (h.get("kmeans") or [])
             if "inertia_per_frame" in s]
    if not steps:
        return None
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    ax.plot([s["step"] for s in steps], [s["inertia_per_frame"] for s in steps], marker="o", ms=4,
            color="tab:blue", label="inertia per frame (squared distance)")
    ax.set_title(f"{_run_title(run)}\nfederated k-means: {steps[-1]['clients']} clients, "
                 f"{steps[-1]['frames']} frames", fontsize=10)
    ax.set_xlabel("Lloyd step")
    ax.set_ylabel("mean squared distance to the centroid")
    _tidy(ax, integer_axis="x")
    fig.tight_layout()
    return save_figure(fig, out)


# ---- the entry --------------------------------------------------------------------------------
def _partition_dir(run: RunFiles) -> Path | None:
    value = run.cfg("paths.partition")
    return Path(value) if value else None


def _client_sizes(run: RunFiles, out: Path) -> tuple[Path | None, str]:
    part = _partition_dir(run)
    if part is None:
        return None, "no paths.partition in .hydra/config.yaml"
    summary_file = part / "summary.json"
    if summary_file.is_file():
        try:
            return plot_client_sizes(json.loads(summary_file.read_text()), run.history, out), ""
        except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
            return None, f"unreadable partition summary {summary_file}: {err}"
    if (part / "client_sizes.png").is_file():
        shutil.copyfile(part / "client_sizes.png", out)
        return out, ""
    return None, f"partition {part} has neither summary.json nor client_sizes.png"


def plot_run(run_dir: str | Path, baseline: str | Path | float | None = None,
             skipped: dict[str, str] | None = None) -> list[Path]:
    """Draw every plot a run's files allow into `<run_dir>/plots/`; returns the files written.

    `baseline` (a run dir, e.g. of a `federated=false` run, or a WER fraction) adds a horizontal
    line to wer.png. A plot the files cannot support is not drawn; when `skipped` is given, its
    name is added there with the reason.
    """
    run = load_run(run_dir)
    plots = run.run_dir / "plots"
    plots.mkdir(exist_ok=True)
    notes: dict[str, str] = {} if skipped is None else skipped
    made: list[Path] = []
    title = _run_title(run)

    def add(name: str, path: Path | None, reason: str) -> None:
        if path is None:
            notes[name] = reason
        else:
            made.append(path)

    add("wer.png", plot_wer(run, plots / "wer.png", baseline_wer(baseline)),
        "no finite WER/CER in history.json")
    if run.speakers is None:
        for name in ("speakers.png", "speakers_hist.png"):
            notes[name] = "no speakers.csv"
    else:
        add("speakers.png", plot_speakers(run.speakers, plots / "speakers.png", title), "no speaker has a WER")
        add("speakers_hist.png", plot_speakers_hist(run.speakers, plots / "speakers_hist.png", title),
            "no speaker has a WER")
    add("client_sizes.png", *_client_sizes(run, plots / "client_sizes.png"))
    add("epsilon.png", plot_epsilon(run, plots / "epsilon.png"), "no epsilon in history.json (DP off)")
    add("pretraining.png", plot_pretraining(run, plots / "pretraining.png"),
        "no unit_acc in history.json (not task=pretrain)")
    add("kmeans.png", plot_kmeans(run, plots / "kmeans.png"), "no federated k-means steps")
    return made
