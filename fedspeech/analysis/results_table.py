"""`python -m fedspeech.analysis.results_table [NAME=]DIR ... --out results/summary.csv`.

The README's results table from finished runs: one row per configuration (jobs that differ only
in `seed`), with the mean and sample standard deviation over its seeds of the final WER overall
and on voices never heard in training, and the mean wall time. Each DIR is a Hydra multirun
folder (or one run dir); `NAME=` names its rows (`NAME` alone when the folder holds one
configuration, else `NAME: <the overrides that differ>`). The table is what the files say: no
run is repeated, and a configuration with one seed has an empty std. `wall_min` is the mean of
the jobs' recorded `elapsed_s` at their last round (from the server's start: data preparation and
the Ray start-up before it are not in it).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from fedspeech.analysis.sweep import ALL_JOBS, Sweep, collect
from fedspeech.analysis.summary import RunDirError

COLUMNS = ["run", "strategy", "seeds", "wer_mean", "wer_std", "wer_unseen_mean", "wer_unseen_std",
           "wall_min"]


def _mean_std(values: pd.Series) -> tuple[float, float]:
    values = values.astype(float).dropna()
    mean = float(values.mean()) if len(values) else float("nan")
    std = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
    return mean, std


def table_rows(sweep: Sweep, name: str | None = None) -> list[dict]:
    """One row per configuration of `sweep`, named `name` (plus the configuration when it has several)."""
    rows = []
    several = len(sweep.configs) > 1
    for conf in sweep.configs["configuration"]:
        jobs = sweep.jobs[sweep.jobs["configuration"] == conf]
        if name:
            label = f"{name}: {conf}" if several else name
        else:
            label = sweep.root.name if conf == ALL_JOBS else conf
        wer, wer_std = _mean_std(jobs["final_wer"])
        unseen, unseen_std = _mean_std(jobs["final_wer_unseen"])
        wall, _ = _mean_std(jobs["elapsed_s"])
        rows.append({"run": label, "strategy": ",".join(dict.fromkeys(jobs["strategy"])),
                     "seeds": " ".join(str(s) for s in jobs["seed"]),
                     "wer_mean": wer, "wer_std": wer_std, "wer_unseen_mean": unseen,
                     "wer_unseen_std": unseen_std, "wall_min": wall / 60.0})
    return rows


def results_table(sources: list[tuple[str | None, Path]]) -> pd.DataFrame:
    """The table of every (name, folder) in `sources`, in that order."""
    rows: list[dict] = []
    for name, folder in sources:
        rows += table_rows(collect(folder), name)
    return pd.DataFrame(rows, columns=COLUMNS)


def _fmt(mean: float, std: float) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if math.isfinite(std) else f"{100 * mean:.1f}"


def markdown(table: pd.DataFrame) -> str:
    """The table as the README shows it: WER in %, mean ± std over the seeds listed."""
    lines = ["| run | strategy | seeds | WER % | unseen-voice WER % | wall min |", "|---|---|---|---|---|---|"]
    for r in table.itertuples(index=False):
        lines.append(f"| {r.run} | {r.strategy} | {r.seeds} | {_fmt(r.wer_mean, r.wer_std)} | "
                     f"{_fmt(r.wer_unseen_mean, r.wer_unseen_std)} | {r.wall_min:.1f} |")
    return "\n".join(lines) + "\n"


def parse_source(text: str) -> tuple[str | None, Path]:
    """`NAME=DIR` or `DIR`."""
    if "=" in text and not Path(text).exists():
        name, folder = text.split("=", 1)
        return name, Path(folder)
    return None, Path(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedspeech.analysis.results_table",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("sources", nargs="+", help="[NAME=]DIR: a multirun folder or a run dir")
    parser.add_argument("--out", type=Path, default=Path("results/summary.csv"),
                        help="the CSV to write (a .md with the same name is written beside it)")
    args = parser.parse_args(argv)
    try:
        table = results_table([parse_source(s) for s in args.sources])
    except RunDirError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.round(6).to_csv(args.out, index=False)
    md = markdown(table)
    args.out.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
