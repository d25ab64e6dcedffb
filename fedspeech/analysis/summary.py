"""Reading a run directory and summarising it, from its files alone (no rerun, no model).

A run dir holds `history.json` (one record per round), `speakers.csv` (per-speaker WER at the
last evaluation) and `.hydra/config.yaml`; this module turns them into one flat dict of numbers
(`summarize_run`) and a printable table (`format_summary`). Plots and sweeps build on the same
readers, so every figure and table says the same thing about a run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf

from fedspeech.config import register_resolvers

SPEAKER_REQUIRED = ["speaker", "rounds_participated", "seen_in_training", "wer"]


class RunDirError(ValueError):
    """A folder that is not a readable run directory, or a file in it that breaks the contract."""


@dataclass
class RunFiles:
    """What a run directory holds, read once."""

    run_dir: Path
    history: list[dict[str, Any]]
    speakers: pd.DataFrame | None          # None: no evaluation finished yet
    config: DictConfig | None              # None: not a Hydra run dir (e.g. copied files)
    overrides: list[str] = field(default_factory=list)

    def cfg(self, key: str, default: Any = None) -> Any:
        """A value of the saved config, interpolations resolved; `default` when absent/unresolvable."""
        return config_value(self.config, key, default)


def config_value(cfg: DictConfig | None, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    try:
        value = OmegaConf.select(cfg, key, default=default)
    except Exception:  # an interpolation that cannot resolve here (another machine's env, say)
        return default
    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "history.json"
    if not path.is_file():
        raise RunDirError(f"no history.json in {run_dir}: not a run directory, or the run stopped "
                          "before its first evaluation")
    try:
        history = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RunDirError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(history, list) or not all(isinstance(h, dict) and "round" in h for h in history):
        raise RunDirError(f"{path} must be a list of records that each have a 'round'")
    if not history:
        raise RunDirError(f"{path} holds no rounds")
    return sorted(history, key=lambda h: h["round"])


def read_speakers(run_dir: Path) -> pd.DataFrame | None:
    path = Path(run_dir) / "speakers.csv"
    if not path.is_file():
        return None
    table = pd.read_csv(path, dtype={"speaker": str}, keep_default_na=False, na_values={"wer": ["", "nan"],
                                                                                          "cer": ["", "nan"]})
    missing = [c for c in SPEAKER_REQUIRED if c not in table.columns]
    if missing:
        raise RunDirError(f"{path} lacks columns {missing}")
    seen = table["seen_in_training"]
    if seen.dtype != bool:
        seen = seen.astype(str).str.lower().map({"true": True, "false": False})
        if seen.isna().any():
            raise RunDirError(f"{path}: seen_in_training must be True/False")
        table["seen_in_training"] = seen.astype(bool)
    return table


def load_run(run_dir: str | Path) -> RunFiles:
    """Read history.json (required), speakers.csv and the saved Hydra config (when present)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is not a directory")
    hydra = run_dir / ".hydra"
    register_resolvers()        # saved configs say `${project_root:}`
    config = OmegaConf.load(hydra / "config.yaml") if (hydra / "config.yaml").is_file() else None
    overrides: list = []
    if (hydra / "overrides.yaml").is_file():
        overrides = yaml.safe_load((hydra / "overrides.yaml").read_text()) or []
    return RunFiles(run_dir, read_history(run_dir), read_speakers(run_dir), config,
                    [str(o) for o in overrides])


# ---- numbers --------------------------------------------------------------------------------
def series(history: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Rounds and values of `key` over the records that have it (NaN kept: it is a result too)."""
    rows = [(h["round"], h[key]) for h in history if key in h]
    rounds = np.array([r for r, _ in rows], dtype=float)
    values = np.array([np.nan if v is None else float(v) for _, v in rows], dtype=float)
    return rounds, values


def _final(history: list[dict[str, Any]], key: str) -> tuple[float, int | None]:
    for h in reversed(history):
        if key in h:
            v = h[key]
            return (float("nan") if v is None else float(v)), int(h["round"])
    return float("nan"), None


def _best(history: list[dict[str, Any]], key: str) -> tuple[float, int | None]:
    rounds, values = series(history, key)
    if not np.isfinite(values).any():
        return float("nan"), None
    i = int(np.nanargmin(values))
    return float(values[i]), int(rounds[i])


def _total(history: list[dict[str, Any]], key: str) -> float:
    return float(sum(float(h.get(key) or 0.0) for h in history))


def spearman(x: pd.Series, y: pd.Series) -> float:
    """Rank correlation (ties averaged); NaN when either side is constant or < 3 pairs."""
    ok = x.notna() & y.notna()
    x, y = x[ok].astype(float), y[ok].astype(float)
    if len(x) < 3 or x.nunique() < 2 or y.nunique() < 2:
        return float("nan")
    return float(np.corrcoef(x.rank().to_numpy(), y.rank().to_numpy())[0, 1])


def run_metrics(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Final/best error rates and totals of one history, as flat numbers (WER/CER as fractions)."""
    out: dict[str, Any] = {"rounds": int(max(h["round"] for h in history)),
                           "evaluations": sum(1 for h in history if "wer" in h)}
    out["final_wer"], out["final_round"] = _final(history, "wer")
    out["final_cer"], _ = _final(history, "cer")
    for key in ("wer_seen", "wer_unseen", "cer_seen", "cer_unseen"):
        out[f"final_{key}"], _ = _final(history, key)
    out["best_wer"], out["best_wer_round"] = _best(history, "wer")
    out["best_cer"], out["best_cer_round"] = _best(history, "cer")
    out["train_seconds"] = _total(history, "train_seconds")
    out["bytes_up"] = int(_total(history, "bytes_up"))
    out["bytes_down"] = int(_total(history, "bytes_down"))
    out["clients_sampled"] = int(_total(history, "clients_sampled"))
    out["clients_replied"] = int(_total(history, "clients_replied"))
    out["clients_failed"] = int(_total(history, "clients_failed"))
    out["round_wall_s"] = _total(history, "wall_s")
    out["elapsed_s"] = float(history[-1].get("elapsed_s", float("nan")))
    out["epsilon"], _ = _final(history, "epsilon")
    return out


def speaker_metrics(speakers: pd.DataFrame | None) -> dict[str, Any]:
    """Seen vs unseen speakers and how WER goes with participation (unweighted means over speakers)."""
    if speakers is None or speakers.empty:
        return {}
    seen = speakers[speakers["seen_in_training"]]
    unseen = speakers[~speakers["seen_in_training"]]
    return {
        "speakers": len(speakers), "speakers_seen": len(seen), "speakers_unseen": len(unseen),
        "speakers_nan_wer": int(speakers["wer"].isna().sum()),
        "mean_wer_seen": float(seen["wer"].mean()) if len(seen) else float("nan"),
        "mean_wer_unseen": float(unseen["wer"].mean()) if len(unseen) else float("nan"),
        "spearman_wer_rounds_seen": spearman(seen["rounds_participated"], seen["wer"]),
        "spearman_wer_rounds_all": spearman(speakers["rounds_participated"], speakers["wer"]),
    }


def by_participation(speakers: pd.DataFrame) -> pd.DataFrame:
    """Mean per-speaker WER for each number of rounds participated (seen and unseen apart)."""
    grouped = speakers.groupby(["seen_in_training", "rounds_participated"])["wer"]
    table = grouped.agg(speakers="size", mean_wer="mean", min_wer="min", max_wer="max").reset_index()
    return table.sort_values(["seen_in_training", "rounds_participated"], ascending=[False, True])


def baseline_wer(baseline: str | Path | float | None) -> tuple[float, str] | None:
    """The WER a baseline line stands for: a number, or the final WER of a run dir (its label says which)."""
    if baseline is None:
        return None
    if isinstance(baseline, (int, float)):
        if not math.isfinite(float(baseline)):
            raise ValueError(f"baseline WER must be finite, got {baseline}")
        return float(baseline), "baseline"
    run = load_run(baseline)
    wer, rnd = _final(run.history, "wer")
    if not math.isfinite(wer):
        raise RunDirError(f"baseline run {baseline} has no finite final WER")
    kind = "centralised baseline" if run.cfg("federated", True) is False else "reference run"
    return wer, f"{kind} (round {rnd})"


def summarize_run(run_dir: str | Path, baseline: str | Path | float | None = None) -> dict[str, Any]:
    """Everything the summary table prints, as one flat dict."""
    run = load_run(run_dir)
    out: dict[str, Any] = {
        "run_dir": str(run.run_dir),
        "federated": run.cfg("federated", True),
        "strategy": run.cfg("strategy.name"), "model": run.cfg("model.name"),
        "dataset": run.cfg("dataset.name"), "partitioner": run.cfg("partitioner.name"),
        "seed": run.cfg("seed"), "dp": bool(run.cfg("strategy.dp.enabled", False)),
        "dp_delta": run.cfg("strategy.dp.delta"),
        "dp_noise_multiplier": run.cfg("strategy.dp.noise_multiplier"),
        **run_metrics(run.history), **speaker_metrics(run.speakers),
    }
    base = baseline_wer(baseline)
    if base is not None:
        out["baseline_wer"], out["baseline_label"] = base
    return out


# ---- printing -------------------------------------------------------------------------------
def pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(float(x)) else f"{100 * float(x):.2f} %"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None or not math.isfinite(float(x)) else format(float(x), fmt)


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "n/a"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def format_summary(s: dict[str, Any], speakers: pd.DataFrame | None = None) -> str:
    """The summary dict as aligned `name  value` lines (WER/CER in %)."""
    mode = "federated" if s.get("federated", True) else "centralised (pooled data)"
    keys = ("strategy", "model", "dataset", "partitioner", "seed") if s.get("federated", True) \
        else ("model", "dataset", "partitioner", "seed")
    what = ", ".join(f"{k} {s[k]}" for k in keys if s.get(k) is not None)
    rows = [("run", s["run_dir"]), ("mode", f"{mode}" + (f"; {what}" if what else "")),
            ("rounds", f"{s['rounds']} ({s['evaluations']} evaluations incl. round 0)")]
    rows.append(("final WER / CER", f"{pct(s['final_wer'])} / {pct(s['final_cer'])}"
                 + (f" (round {s['final_round']})" if s["final_round"] is not None else "")))
    rows.append(("best WER", f"{pct(s['best_wer'])}" + (f" (round {s['best_wer_round']})"
                                                        if s["best_wer_round"] is not None else "")))
    rows.append(("best CER", f"{pct(s['best_cer'])}" + (f" (round {s['best_cer_round']})"
                                                        if s["best_cer_round"] is not None else "")))
    rows.append(("final WER seen / unseen", f"{pct(s['final_wer_seen'])} / {pct(s['final_wer_unseen'])}"))
    if "baseline_wer" in s:
        diff = s["final_wer"] - s["baseline_wer"]
        rows.append((s["baseline_label"], f"WER {pct(s['baseline_wer'])} (this run {100 * diff:+.2f} points)"))
    rows.append(("audio trained", f"{human_seconds(s['train_seconds'])} (summed over rounds and clients)"))
    if s["clients_sampled"]:
        rows.append(("clients sampled / replied / failed",
                     f"{s['clients_sampled']} / {s['clients_replied']} / {s['clients_failed']}"))
    rows.append(("bytes up / down", f"{human_bytes(s['bytes_up'])} / {human_bytes(s['bytes_down'])}"))
    rows.append(("wall time", f"{human_seconds(s['elapsed_s'])} elapsed "
                 f"({human_seconds(s['round_wall_s'])} in rounds)"))
    if s.get("dp") or math.isfinite(s.get("epsilon", float("nan"))):
        rows.append(("privacy", f"epsilon {_num(s['epsilon'], '.3f')} at delta {s.get('dp_delta')} "
                     f"(noise multiplier {s.get('dp_noise_multiplier')})"))
    else:
        rows.append(("privacy", "no DP (no epsilon recorded)"))
    if "speakers" in s:
        rows.append(("speakers", f"{s['speakers']} ({s['speakers_seen']} seen in training, "
                     f"{s['speakers_unseen']} unseen"
                     + (f", {s['speakers_nan_wer']} without a WER" if s["speakers_nan_wer"] else "") + ")"))
        rows.append(("mean speaker WER seen / unseen",
                     f"{pct(s['mean_wer_seen'])} / {pct(s['mean_wer_unseen'])}"))
        rho = (s["spearman_wer_rounds_seen"], s["spearman_wer_rounds_all"])
        note = " (n/a: constant or < 3 speakers)" if any(r != r for r in rho) else ""
        rows.append(("Spearman(WER, rounds) seen / all",
                     f"{_num(rho[0], '+.3f')} / {_num(rho[1], '+.3f')}{note}"))
    else:
        rows.append(("speakers", "no speakers.csv (no evaluation finished)"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    if speakers is not None and not speakers.empty:
        table = by_participation(speakers)
        lines += ["", "per-speaker WER by rounds participated:",
                  f"  {'speakers':<8} {'rounds':>6} {'n':>5} {'mean WER':>10} {'min':>9} {'max':>9}"]
        for _, r in table.iterrows():
            lines.append(f"  {'seen' if r['seen_in_training'] else 'unseen':<8} {int(r['rounds_participated']):>6d} "
                         f"{int(r['speakers']):>5d} {pct(r['mean_wer']):>10} {pct(r['min_wer']):>9} "
                         f"{pct(r['max_wer']):>9}")
    return "\n".join(lines)
