"""A run's leakage table: both attacks on both kinds of vectors, every layer; its CSV and plot."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from threadpoolctl import threadpool_limits

import fedspeech  # noqa: F401  (registers the `project_root` resolver used by saved configs)
from fedspeech.analysis.leakage.attacks import center_by_round, gender_attack, speaker_verification
from fedspeech.analysis.leakage.footprints import (ClientFeatures, ReleasedView, client_features,
                                                   indicator_batches, indicator_rows)
from fedspeech.analysis.leakage.layers import layer_taps
from fedspeech.experiment_data import load_experiment_data
from fedspeech.federation.update_recording import RecordedUpdates
from fedspeech.files import atomic_write_text, atomic_write_with
from fedspeech.models.factory import build_model

COLUMNS = ["view", "source", "layer", "gender_acc", "gender_chance", "speaker_eer", "n_clients",
           "n_speakers", "n_target_trials", "n_nontarget_trials", "dim"]
SOURCES = ("footprint", "delta")
CSV_NAME = "leakage.csv"
INDICATOR_NAME = "leakage_indicator.csv"
PLOT_NAME = "plots/leakage.png"


@dataclass(frozen=True)
class Options:
    indicator: int = 30              # utterances in the indicator set
    delta_dim: int = 512             # weight deltas above this size are sketched to it
    seed: int = 0
    center: bool = True              # centre each round's vectors on the round mean
    batch_seconds: float = 60.0      # padded audio seconds per indicator batch
    threads: int | None = None       # torch and BLAS CPU threads; None keeps the libraries' default


def run_config(run_dir: Path) -> DictConfig:
    """The composed config a run was made with (Hydra's, or the Deployment Engine's copy)."""
    for path in (run_dir / ".hydra" / "config.yaml", run_dir / "config.yaml"):
        if path.is_file():
            return OmegaConf.load(path)
    raise FileNotFoundError(f"{run_dir} has no .hydra/config.yaml or config.yaml: "
                            "not a fedspeech run directory")


def _history(run_dir: Path) -> list[dict]:
    path = run_dir / "history.json"
    return json.loads(path.read_text()) if path.is_file() else []


def run_label(run_dir: Path, cfg: DictConfig) -> str:
    """e.g. `fedavg` or `fedavg + DP (eps 9.25)`, from the config and the last epsilon."""
    label = str(OmegaConf.select(cfg, "strategy.name", default=run_dir.name))
    if OmegaConf.select(cfg, "strategy.dp.enabled", default=False):
        eps = [h["epsilon"] for h in _history(run_dir) if "epsilon" in h]
        label += f" + DP (eps {eps[-1]:.2f})" if eps else " + DP"
    return label


def released_view(cfg: DictConfig, seed: int) -> ReleasedView | None:
    """The run's DP mechanism per client, or None for a run without user-level DP."""
    dp = OmegaConf.select(cfg, "strategy.dp")
    if dp is None or not dp.get("enabled", False):
        return None
    return ReleasedView(clip_norm=float(dp.clip_norm), clipping=str(dp.clipping),
                        noise_multiplier=float(dp.noise_multiplier),
                        virtual_cohort=dp.get("virtual_cohort"), seed=seed)


def _attack_rows(features: list[ClientFeatures], layers: dict[str, list[str]], seed: int,
                 center: bool) -> list[dict]:
    rows = []
    by_view: dict[str, list[ClientFeatures]] = defaultdict(list)
    for f in features:
        by_view[f.view].append(f)
    for view, items in by_view.items():
        rounds = np.array([f.round for f in items])
        ids = np.array([f.identity for f in items])
        genders = np.array([f.gender for f in items])
        labelled = np.isin(genders, [g for g in set(genders) if g not in ("", "mixed")])
        for source in SOURCES:
            for layer in layers[source]:
                x = np.stack([getattr(f, source)[layer] for f in items])
                if center:
                    x = center_by_round(x, rounds)
                sv = speaker_verification(x, ids, rounds)
                g = gender_attack(x[labelled], genders[labelled], ids[labelled], seed) \
                    if labelled.any() else None
                rows.append({
                    "view": view, "source": source, "layer": layer,
                    "gender_acc": g.accuracy if g else np.nan,
                    "gender_chance": g.chance if g else np.nan,
                    "speaker_eer": sv.eer, "n_clients": len(items),
                    "n_speakers": len(np.unique(ids)), "n_target_trials": sv.n_target,
                    "n_nontarget_trials": sv.n_nontarget, "dim": x.shape[1]})
    return rows


def analyse_run(run_dir: Path, options: Options = Options(), verbose: bool = True
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(leakage table, indicator utterances) of a run with recorded updates."""
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    cfg = run_config(run_dir)
    updates = RecordedUpdates(run_dir)
    data = load_experiment_data(cfg)
    if options.threads:
        torch.set_num_threads(int(options.threads))
    model = build_model(cfg.model, data.tokenizer, seed=options.seed)
    taps = layer_taps(model)
    indicator = indicator_rows(data, options.indicator)
    batches = indicator_batches(indicator, data, options.batch_seconds)
    say = print if verbose else (lambda *a, **k: None)
    say(f"indicator set: {len(indicator)} utterances ({indicator['duration'].sum():.0f} s) of "
        f"{indicator['speaker'].nunique()} speakers that never trained "
        f"({', '.join(sorted(indicator['speaker'].unique()))}), split {indicator['split'].iloc[0]}")
    genders = set(updates.index["gender"]) - {""}
    if not genders:
        say("no gender labels for the recorded clients (the manifest has no `gender` column, or "
            "it is empty for these speakers): the gender attack is skipped")
    elif "mixed" in genders:
        n_mixed = int((updates.index["gender"] == "mixed").sum())
        say(f"{n_mixed} client updates hold speakers of both genders: left out of the gender attack")
    released = released_view(cfg, options.seed)
    cohort_of = {int(h["round"]): int(h["clients_sampled"]) for h in _history(run_dir)
                 if h.get("clients_sampled")}
    say(f"{len(updates.index)} client updates over rounds {updates.rounds}; layers: "
        f"{', '.join(taps.names)}" + ("; views: received, released (the run's DP)" if released
                                      else "; view: received (no DP in this run)"))
    device = torch.device("cpu")
    features = list(client_features(updates, taps, batches, device, delta_dim=options.delta_dim,
                                    seed=options.seed, released=released, cohort_of=cohort_of,
                                    verbose=verbose))
    delta_layers = list(features[0].delta)
    layers = {"footprint": taps.names,
              "delta": [n for n in taps.names if n in delta_layers]
              + [n for n in delta_layers if n not in taps.names]}
    skipped = [n for n in taps.names if n not in delta_layers]
    if skipped:
        say(f"layers with no exchanged parameters (no weight delta): {', '.join(skipped)}")
    with threadpool_limits(limits=options.threads):     # numpy/BLAS threads of the classifiers
        table = pd.DataFrame(_attack_rows(features, layers, options.seed, options.center),
                             columns=COLUMNS)
    say(f"leakage analysis of {run_dir}: {time.perf_counter() - t0:.1f} s")
    return table, indicator[["id", "speaker", "split", "duration"]
                            + (["gender"] if "gender" in indicator.columns else [])]


def format_table(table: pd.DataFrame) -> str:
    lines = [f"{'view':<9} {'source':<9} {'layer':<12} {'gender acc':>10} {'chance':>7} "
             f"{'spk EER':>8} {'n':>4}"]
    for r in table.itertuples(index=False):
        lines.append(f"{r.view:<9} {r.source:<9} {r.layer:<12} {r.gender_acc:>10.3f} "
                     f"{r.gender_chance:>7.3f} {r.speaker_eer:>8.3f} {r.n_clients:>4d}")
    return "\n".join(lines)


def write_outputs(out_dir: Path, table: pd.DataFrame, indicator: pd.DataFrame) -> list[Path]:
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / CSV_NAME, table.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(out_dir / INDICATOR_NAME, indicator.to_csv(index=False))
    return [out_dir / CSV_NAME, out_dir / INDICATOR_NAME]


def layer_order(curves: dict[str, pd.DataFrame]) -> list[str]:
    """Each layer once, in model order: a table repeats every layer per view and source."""
    return list(dict.fromkeys(layer for table in curves.values() for layer in table["layer"]))


def plot_leakage(curves: dict[str, pd.DataFrame], path: Path) -> Path:
    """Gender accuracy and speaker EER per layer; one colour per run and view, line per source."""
    fig = Figure(figsize=(11, 4.2))
    ax_acc, ax_eer = fig.subplots(1, 2, sharex=True)
    colours = ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown"]
    order = layer_order(curves)
    x_of = {layer: i for i, layer in enumerate(order)}
    chance = []
    k = 0
    for label, table in curves.items():
        for view, part in table.groupby("view", sort=False):
            colour = colours[k % len(colours)]
            k += 1
            name = label if view == "received" else f"{label}, {view}"
            for source, style in (("footprint", {"ls": "-", "marker": "o"}),
                                  ("delta", {"ls": "--", "marker": "s"})):
                rows = part.loc[part["source"] == source]
                xs = [x_of[layer] for layer in rows["layer"]]
                ax_acc.plot(xs, rows["gender_acc"], color=colour, label=f"{name}: {source}", **style)
                ax_eer.plot(xs, rows["speaker_eer"], color=colour, label=f"{name}: {source}", **style)
            chance += list(part["gender_chance"].dropna())
    if chance:
        ax_acc.axhline(float(np.mean(chance)), color="grey", ls=":", label="chance (majority class)")
    ax_eer.axhline(0.5, color="grey", ls=":", label="chance (EER 0.5)")
    ax_acc.set(title="gender from each client's update", ylabel="cross-validated accuracy",
               ylim=(0, 1.05))
    ax_eer.set(title="linking a speaker's updates across rounds", ylabel="speaker verification EER",
               ylim=(0, 0.6))
    for ax in (ax_acc, ax_eer):
        ax.set_xticks(range(len(order)), order, rotation=45, ha="right", fontsize=8)
        ax.grid(alpha=0.3)
    ax_eer.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    return path
