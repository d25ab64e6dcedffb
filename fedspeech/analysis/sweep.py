"""`python -m fedspeech.analysis.sweep <multirun_dir>`: one table and one plot for a Hydra multirun.

Every job folder under `multirun_dir` (a folder holding `.hydra/overrides.yaml`) is one row: its
final/best WER from `history.json` and its overrides. Jobs whose overrides differ only in `seed`
(and in keys that do not identify a job, e.g. `paths.data`) form one configuration, reported as
mean ± sample standard deviation over its seeds. Jobs without a history are skipped and listed.
Writes `summary.csv`, `summary.md` and `comparison.png` into `multirun_dir`.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedspeech.analysis.plots import save_figure
from fedspeech.analysis.summary import RunDirError, RunFiles, load_run, run_metrics, series

SEED_KEY = "seed"
# keys that say where, not what (conf/config.yaml's hydra.job.config.override_dirname.exclude_keys)
DEFAULT_NON_IDENTIFYING = ("paths.data", "paths.shared_data", "resume", "verbose")
METRICS = ["final_wer", "best_wer", "final_cer", "best_cer", "final_wer_seen", "final_wer_unseen",
           "train_seconds", "bytes_up", "elapsed_s", "epsilon"]
RATE_METRICS = {"final_wer", "best_wer", "final_cer", "best_cer", "final_wer_seen", "final_wer_unseen"}
ALL_JOBS = "(all jobs)"


@dataclass
class Sweep:
    """The parsed multirun: one row per job, one row per configuration, the jobs left out."""

    root: Path
    jobs: pd.DataFrame
    configs: pd.DataFrame
    common: dict[str, str]                      # identifying overrides shared by every job
    curves: dict[str, list[tuple[np.ndarray, np.ndarray]]]   # configuration -> (rounds, wer) per job
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: configuration -> its name in plots (shared key prefixes dropped, see `short_keys`)
    labels: dict[str, str] = field(default_factory=dict)


def parse_override(text: str) -> tuple[str, str]:
    """`key=value` of a Hydra override (`+key`, `++key`, `~key` prefixes dropped)."""
    if "=" not in text:
        return text.lstrip("+~"), ""
    key, value = text.split("=", 1)
    return key.lstrip("+~"), value


def find_jobs(root: Path) -> list[Path]:
    """Job folders under `root` (any depth), in Hydra job-number order where names start with it."""
    jobs = [p.parent.parent for p in root.rglob(".hydra/overrides.yaml")]

    def order(p: Path) -> tuple:
        rel = p.relative_to(root).parts
        return tuple((0, int(m.group(1)), part) if (m := re.match(r"(\d+)", part)) else (1, 0, part)
                     for part in rel)
    return sorted(jobs, key=order)


def _non_identifying(job: Path) -> set[str]:
    hydra_file = job / ".hydra" / "hydra.yaml"
    keys: list[str] = list(DEFAULT_NON_IDENTIFYING)
    if hydra_file.is_file():
        try:
            found = (((yaml.safe_load(hydra_file.read_text()) or {}).get("hydra") or {}).get("job") or {}) \
                .get("config", {}).get("override_dirname", {}).get("exclude_keys")
        except yaml.YAMLError:
            found = None
        if found:
            keys = [str(k) for k in found]
    return set(keys) | {SEED_KEY}


_ABSENT = object()
ABSENT = "(absent)"


def short_keys(keys: list[str]) -> dict[str, str]:
    """Each key without the longest dotted prefix (of two parts or more) it shares with another
    key: `strategy.builder.eta.value` and `strategy.builder.tau` become `eta.value` and `tau`."""
    out = {}
    for key in keys:
        parts = key.split(".")
        shared = 0
        for other in keys:
            if other == key:
                continue
            theirs = other.split(".")
            n = 0
            while n < min(len(parts), len(theirs)) - 1 and parts[n] == theirs[n]:
                n += 1
            shared = max(shared, n)
        out[key] = ".".join(parts[shared:]) if shared >= 2 else key
    return out


def job_value(run: RunFiles, key: str) -> str:
    """The value `key` had in a job that did not override it, as an override would spell it.

    A config group (`strategy`) is named by the option Hydra chose (`.hydra/hydra.yaml`), any
    other key by its resolved value in `.hydra/config.yaml`; `(absent)` when the job's config
    does not have the key at all (e.g. a `+key` another job added).
    """
    choice = _choices(run.run_dir).get(key)
    if choice is not None:
        return str(choice)
    value = run.cfg(key, default=_ABSENT)
    if value is _ABSENT:
        return ABSENT
    if isinstance(value, (dict, list)):
        return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _choices(job: Path) -> dict[str, str]:
    hydra_file = job / ".hydra" / "hydra.yaml"
    if not hydra_file.is_file():
        return {}
    try:
        runtime = (((yaml.safe_load(hydra_file.read_text()) or {}).get("hydra") or {}).get("runtime") or {})
    except yaml.YAMLError:
        return {}
    return {str(k): v for k, v in (runtime.get("choices") or {}).items() if v is not None}


def _canonical(value: str) -> object:
    """`30` and `30.0`, `1e-2` and `0.01`, `True` and `true` are the same value."""
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if isinstance(parsed, str):
        try:
            return float(parsed)
        except ValueError:
            return parsed
    if isinstance(parsed, bool) or parsed is None:
        return parsed
    if isinstance(parsed, (int, float)):
        return float(parsed)
    return repr(parsed)


def _spelt(value: str) -> str:
    """A value as configs spell it: booleans in lower case, whichever way an override wrote them."""
    canonical = _canonical(value)
    return str(canonical).lower() if isinstance(canonical, bool) else value


def _fmt_value(x: float, metric: str) -> str:
    if x is None or not math.isfinite(float(x)):
        return "n/a"
    if metric in RATE_METRICS:
        return f"{100 * x:.2f}"
    if metric == "bytes_up":
        return f"{x / 1e6:.2f}"
    return f"{x:.2f}" if metric == "epsilon" else f"{x:.1f}"


def collect(root: str | Path) -> Sweep:
    """Read every job of a multirun folder (no plots, no files written)."""
    root = Path(root)
    if not root.is_dir():
        raise RunDirError(f"{root} is not a directory")
    job_dirs = find_jobs(root)
    if not job_dirs:
        raise RunDirError(f"no job folders (with .hydra/overrides.yaml) under {root}")
    rows, skipped, curves_by_job = [], [], {}
    for job in job_dirs:
        name = str(job.relative_to(root))
        if not (job / "history.json").is_file():
            skipped.append((name, "no history.json (job failed or still running)"))
            continue
        try:
            run = load_run(job)
        except RunDirError as err:
            skipped.append((name, str(err)))
            continue
        overrides = dict(parse_override(o) for o in run.overrides)
        ignore = _non_identifying(job)
        identity = {k: v for k, v in overrides.items() if k not in ignore}
        seed = overrides.get(SEED_KEY, run.cfg(SEED_KEY))
        strategy = "centralised" if run.cfg("federated") is False else run.cfg("strategy.name", "")
        rows.append({"job": name, "seed": seed, "identity": identity, "run": run, "strategy": strategy,
                     "overrides": " ".join(run.overrides), **run_metrics(run.history)})
        curves_by_job[name] = series(run.history, "wer")
    if not rows:
        raise RunDirError(f"none of the {len(job_dirs)} jobs under {root} has a history.json: "
                          + "; ".join(f"{n}: {r}" for n, r in skipped))

    # a configuration's name: the identifying overrides whose values differ between jobs; a job
    # that did not override a key ran with its config's value, which is what it is compared by
    keys = sorted({k for r in rows for k in r["identity"]})
    for r in rows:
        r["identity"] = {k: r["identity"][k] if k in r["identity"] else job_value(r["run"], k)
                         for k in keys}
    varying = [k for k in keys if len({_canonical(r["identity"][k]) for r in rows}) > 1]
    common = {k: rows[0]["identity"][k] for k in keys if k not in varying}
    spelling: dict[tuple[str, object], str] = {}      # one value, one name: the first job's spelling
    short = short_keys(varying)
    labels: dict[str, str] = {}
    for r in rows:
        names = [spelling.setdefault((k, _canonical(r["identity"][k])), _spelt(r["identity"][k]))
                 for k in varying]
        # a key the job's config does not have is no part of what the job is
        named = [(k, v) for k, v in zip(varying, names) if v != ABSENT]
        r["configuration"] = ",".join(f"{k}={v}" for k, v in named) or ALL_JOBS
        labels[r["configuration"]] = " ".join(f"{short[k]}={v}" for k, v in named) or ALL_JOBS
    jobs = pd.DataFrame(rows).drop(columns=["identity", "run"])
    order = list(dict.fromkeys(jobs["configuration"]))

    configs = []
    curves: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for conf in order:
        group = jobs[jobs["configuration"] == conf]
        entry: dict = {"configuration": conf, "n_jobs": len(group),
                       "seeds": ",".join(str(s) for s in group["seed"]), "rounds": int(group["rounds"].max())}
        for m in METRICS:
            values = group[m].astype(float)
            entry[m] = float(values.mean()) if values.notna().any() else float("nan")
            entry[f"{m}_std"] = float(values.std(ddof=1)) if values.notna().sum() > 1 else float("nan")
        configs.append(entry)
        curves[conf] = [curves_by_job[j] for j in group["job"]]
    return Sweep(root, jobs, pd.DataFrame(configs), common, curves, skipped, labels)


# ---- outputs ----------------------------------------------------------------------------------
def summary_csv(sweep: Sweep) -> pd.DataFrame:
    """Job rows, then one row per configuration (mean, with `<metric>_std` across its seeds)."""
    jobs = sweep.jobs.assign(row="job", n_jobs=1)
    configs = sweep.configs.assign(row="configuration", job="", overrides="")
    stds = [f"{m}_std" for m in METRICS]
    cols = ["row", "configuration", "job", "seed", "seeds", "n_jobs", "rounds", "best_wer_round",
            *[c for m in METRICS for c in (m, f"{m}_std")], "overrides"]
    table = pd.concat([jobs, configs], ignore_index=True)
    for c in cols:
        if c not in table:
            table[c] = np.nan if c in stds or c in METRICS else ""
    return table[cols]


def summary_markdown(sweep: Sweep) -> str:
    shown = [("final_wer", "final WER %"), ("best_wer", "best WER %"), ("final_cer", "final CER %"),
             ("final_wer_unseen", "unseen WER %"), ("train_seconds", "audio trained s"),
             ("elapsed_s", "wall s")]
    if sweep.jobs["epsilon"].notna().any():
        shown.append(("epsilon", "epsilon"))
    n_conf = len(sweep.configs)
    lines = [f"# Sweep summary: {sweep.root}", "",
             f"{len(sweep.jobs)} jobs in {n_conf} configuration{'s' if n_conf != 1 else ''}; "
             f"{len(sweep.skipped)} skipped. Error rates in %; configuration rows are mean ± sample "
             "standard deviation over seeds.", ""]
    if sweep.common:
        lines += ["Overrides shared by every job: " + " ".join(f"`{k}={v}`" for k, v in sweep.common.items()), ""]
    header = ["configuration", "job", "seed", "rounds", *[label for _, label in shown]]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for conf in sweep.configs.itertuples(index=False):
        c = conf._asdict()
        group = sweep.jobs[sweep.jobs["configuration"] == c["configuration"]]
        for job in group.to_dict("records"):
            lines.append("| " + " | ".join([c["configuration"], job["job"], str(job["seed"]), str(job["rounds"]),
                                            *[_fmt_value(job[m], m) for m, _ in shown]]) + " |")
        cells = []
        for m, _ in shown:
            mean, std = c[m], c[f"{m}_std"]
            cells.append(f"**{_fmt_value(mean, m)} ± {_fmt_value(std, m)}**" if math.isfinite(std)
                         else f"**{_fmt_value(mean, m)}**")
        lines.append("| " + " | ".join([f"**{c['configuration']}**", f"**mean ± std ({c['n_jobs']} seeds)**",
                                        c["seeds"], str(c["rounds"]), *cells]) + " |")
    if sweep.skipped:
        lines += ["", "## Skipped jobs", ""] + [f"- `{name}`: {reason}" for name, reason in sweep.skipped]
    return "\n".join(lines) + "\n"


def plot_comparison(sweep: Sweep, out: Path) -> Path:
    """WER per round, one line per configuration (mean over its seeds, band = ± std)."""
    entries = sum(1 for jobs in sweep.curves.values() if any(len(r) for r, _ in jobs))
    columns = 1 if entries <= 8 else 2
    legend_rows = -(-entries // columns)
    legend_in = 0.17 * legend_rows                      # the legend goes below the axes
    fig = Figure(figsize=(7.5 if columns == 1 else 10.0, 4.2 + legend_in))
    ax = fig.subplots()
    if entries > 10:                                    # the default cycle repeats after 10
        ax.set_prop_cycle(color=[matplotlib.colormaps["tab20"](i % 20) for i in range(entries)])
    drawn = 0
    for conf, jobs in sweep.curves.items():
        per_job = [pd.Series(100 * w, index=r) for r, w in jobs if len(r)]
        if not per_job:
            continue
        table = pd.concat(per_job, axis=1).sort_index()
        mean = table.mean(axis=1, skipna=True)
        label = sweep.labels.get(conf, conf)
        line = ax.plot(mean.index, mean.to_numpy(), marker="o", ms=3, label=f"{label} (n={len(per_job)})")[0]
        if len(per_job) > 1:
            std = table.std(axis=1, ddof=1, skipna=True).fillna(0.0)
            ax.fill_between(mean.index, mean - std, mean + std, color=line.get_color(), alpha=0.15)
        drawn += 1
    ax.set_title(f"sweep {sweep.root.name}: WER per round, mean over seeds (band ± std)", fontsize=10)
    ax.set_xlabel("round (0 = initial model)")
    ax.set_ylabel("WER (%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if drawn:
        fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=columns,
                   fontsize=7 if drawn > 6 else 8, frameon=False)
        fig.tight_layout(rect=(0, legend_in / (4.2 + legend_in), 1, 1))
    else:
        fig.tight_layout()
    return save_figure(fig, out)


def write_sweep(root: str | Path) -> tuple[Sweep, list[Path]]:
    """Collect a multirun and write summary.csv, summary.md and comparison.png into it."""
    sweep = collect(root)
    csv_path, md_path = sweep.root / "summary.csv", sweep.root / "summary.md"
    summary_csv(sweep).round(6).to_csv(csv_path, index=False)
    md_path.write_text(summary_markdown(sweep))
    png = plot_comparison(sweep, sweep.root / "comparison.png")
    return sweep, [csv_path, md_path, png]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedspeech.analysis.sweep", description=__doc__.split("\n")[0])
    parser.add_argument("multirun_dir", type=Path, help="a Hydra sweep folder (multirun/<date>/<time>)")
    args = parser.parse_args(argv)
    try:
        sweep, written = write_sweep(args.multirun_dir)
    except RunDirError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary_markdown(sweep))
    for name, reason in sweep.skipped:
        print(f"skipped {name}: {reason}")
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
