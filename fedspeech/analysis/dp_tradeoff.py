"""`python -m fedspeech.analysis.dp_tradeoff <multirun_dir> [--baseline <run_dir>] [--out <dir>]`.

The privacy-utility curve of user-level DP: final WER against epsilon, one point per job of a
multirun over `strategy.dp.noise_multiplier` (and any other DP setting), read from the run files.

Two epsilons per job, because a CPU simulation of 18 clients is not the deployment it stands for:

* `epsilon_deployment`: the run's own accounting (`history.json`), i.e. of the deployment being
  simulated. With `strategy.dp.virtual_cohort=V` and `virtual_population=P` the noise on the
  average is the level `V` clients per round would give (`z * C / V`), and epsilon is that of
  `q = V / P` (as the pfl4asr simulations report it). Without them it is the simulation's own.
* `epsilon_simulation`: what the simulated clients themselves get: the noise actually added is
  `z * C * n / V` on a sum of `n` clipped updates, i.e. a noise multiplier of `z * n / V`, with
  `q = n / N` (cohort n out of N clients). Computed by RDP (PLD does not finish for noise
  multipliers this small); with a virtual cohort it is huge: the simulation protects nobody, it
  measures the utility a deployment would have.

`--round N` compares every job (and the baseline) at round N, e.g. when jobs stopped at different
rounds. Writes `dp_tradeoff.csv`, `dp_tradeoff.md` and `dp_tradeoff.png` into `--out` (default: the
multirun folder).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from fedspeech.analysis.plots import save_figure
from fedspeech.analysis.summary import RunDirError, RunFiles, load_run
from fedspeech.analysis.sweep import find_jobs
from fedspeech.federation.privacy_accounting import UserLevelAccountant
from fedspeech.federation.sampling import strategy_cohort_size

COLUMNS = ["job", "noise_multiplier", "clip_norm", "clipping", "cohort", "population", "virtual_cohort",
           "virtual_population", "delta", "round", "rounds_released", "epsilon_deployment",
           "epsilon_simulation", "wer", "wer_unseen", "cer"]


def population_of(run: RunFiles) -> int:
    """Number of clients: the partition's `summary.json` the run trained on."""
    folder = run.cfg("paths.partition")
    summary = Path(str(folder)) / "summary.json" if folder else None
    if summary is None or not summary.is_file():
        raise RunDirError(f"{run.run_dir}: cannot find the partition summary ({summary}) that gives "
                          "the number of clients; prepare the data of this run first")
    return int(json.loads(summary.read_text())["num_clients"])


def simulation_epsilon(z: float, cohort: int, virtual_cohort: int | None, population: int,
                       delta: float, rounds: int) -> float:
    """Epsilon of the noise the simulation added, for its own `cohort` of `population` clients."""
    if rounds == 0 or z <= 0:
        return 0.0 if rounds == 0 else math.inf
    z_sim = z * cohort / virtual_cohort if virtual_cohort else z
    return UserLevelAccountant(z_sim, cohort / population, delta, "rdp").epsilon(rounds)


def evaluated_record(history: list[dict], at_round: int | None) -> dict | None:
    """The last evaluated round's record, or that of round `at_round` (None if not evaluated)."""
    evaluated = [h for h in history if "wer" in h and (at_round is None or h["round"] == at_round)]
    return evaluated[-1] if evaluated else None


def job_row(job: Path, root: Path, at_round: int | None = None) -> dict | None:
    """One job's DP settings, both epsilons and its WER at `at_round` (default: its last
    evaluation); None for a job without DP or without an evaluation of that round."""
    run = load_run(job)
    dp = run.cfg("strategy.dp")
    if not dp or not dp.get("enabled"):
        return None
    record = evaluated_record(run.history, at_round)
    if record is None:
        return None
    upto = [h for h in run.history if h["round"] <= record["round"]]
    population = population_of(run)
    cohort = strategy_cohort_size(run.cfg("strategy"), population)
    released = max((int(h.get("dp_rounds") or 0) for h in upto), default=0)
    eps_run = [h["epsilon"] for h in upto if h.get("epsilon") is not None]
    z = float(dp["noise_multiplier"])
    return {"job": str(job.relative_to(root)), "noise_multiplier": z, "clip_norm": float(dp["clip_norm"]),
            "clipping": dp["clipping"], "cohort": cohort, "population": population,
            "virtual_cohort": dp.get("virtual_cohort"),
            "virtual_population": dp.get("virtual_population") or population,
            "delta": float(dp["delta"]), "round": int(record["round"]), "rounds_released": released,
            "epsilon_deployment": float(eps_run[-1]) if eps_run else math.inf,
            "epsilon_simulation": simulation_epsilon(z, cohort, dp.get("virtual_cohort"), population,
                                                     float(dp["delta"]), released),
            "wer": float(record["wer"]), "wer_unseen": float(record.get("wer_unseen", math.nan)),
            "cer": float(record.get("cer", math.nan))}


def collect_tradeoff(root: str | Path, at_round: int | None = None) -> pd.DataFrame:
    """Every DP job under `root` (evaluated at `at_round`, when given), by decreasing noise."""
    root = Path(root)
    jobs = [j for j in find_jobs(root) if (j / "history.json").is_file()]
    rows = [r for r in (job_row(j, root, at_round) for j in jobs) if r is not None]
    if not rows:
        at = f" evaluated at round {at_round}" if at_round is not None else ""
        raise RunDirError(f"no job with strategy.dp.enabled=true{at} under {root}")
    return pd.DataFrame(rows, columns=COLUMNS).sort_values("noise_multiplier", ascending=False,
                                                           ignore_index=True)


def _eps(x: float) -> str:
    return "∞" if not math.isfinite(x) else f"{x:.3g}" if x < 1000 else f"{x:.2e}"


def markdown(table: pd.DataFrame, baseline: dict | None) -> str:
    first = table.iloc[0]
    lines = [f"User-level DP, clip {first['clip_norm']:g} ({first['clipping']}), δ = {first['delta']:g}, "
             f"cohort {first['cohort']} of {first['population']} clients simulated; "
             "ε (deployment) is of the simulated deployment (virtual cohort V of population P), "
             "ε (simulation) of the simulated clients themselves.", "",
             "| z | V of P | round | ε (deployment) | ε (simulation) | WER % | unseen-voice WER % | CER % |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples(index=False):
        v = f"{int(r.virtual_cohort)} of {int(r.virtual_population)}" if r.virtual_cohort else \
            f"{r.cohort} of {r.population} (none)"
        lines.append(f"| {r.noise_multiplier:g} | {v} | {r.round} | {_eps(r.epsilon_deployment)} | "
                     f"{_eps(r.epsilon_simulation)} | {100 * r.wer:.1f} | {100 * r.wer_unseen:.1f} | "
                     f"{100 * r.cer:.1f} |")
    if baseline:
        lines.append(f"| no DP | | {baseline['round']} | ∞ | ∞ | {100 * baseline['wer']:.1f} | "
                     f"{100 * baseline.get('wer_unseen', math.nan):.1f} | {100 * baseline.get('cer', math.nan):.1f} |")
    return "\n".join(lines) + "\n"


def plot_tradeoff(table: pd.DataFrame, baseline: dict | None, out: Path) -> Path:
    """WER (overall and unseen voices) against the deployment's epsilon, each point labelled z."""
    fig = Figure(figsize=(7.0, 4.4))
    ax = fig.subplots()
    finite = table[table["epsilon_deployment"].apply(math.isfinite)]
    for col, label, marker in (("wer", "WER", "o"), ("wer_unseen", "unseen-voice WER", "s")):
        ax.plot(finite["epsilon_deployment"], 100 * finite[col], marker=marker, label=label)
    for r in finite.itertuples(index=False):
        ax.annotate(f"z={r.noise_multiplier:g}", (r.epsilon_deployment, 100 * r.wer),
                    textcoords="offset points", xytext=(4, 6), fontsize=8)
    for r in table[~table["epsilon_deployment"].apply(math.isfinite)].itertuples(index=False):
        ax.axhline(100 * r.wer, ls="-.", color="C2", label=f"clipping only (z={r.noise_multiplier:g}): WER")
    if baseline:
        ax.axhline(100 * baseline["wer"], ls="--", color="grey", label="no DP: WER")
        ax.axhline(100 * baseline.get("wer_unseen", math.nan), ls=":", color="grey", label="no DP: unseen WER")
    if len(finite):                  # only clipping-only jobs: nothing to place on an epsilon axis
        ax.set_xscale("log")
    first = table.iloc[0]
    who = (f"virtual cohort {int(first['virtual_cohort'])} of {int(first['virtual_population'])}"
           if first["virtual_cohort"] else f"cohort {first['cohort']} of {first['population']}")
    ax.set_xlabel(f"ε at δ={first['delta']:g} of the simulated deployment ({who})")
    ax.set_ylabel("final WER (%)")
    ax.set_title(f"user-level DP: privacy-utility trade-off (round {', '.join(map(str, sorted(set(table['round']))))})",
                 fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out)


def write_tradeoff(root: str | Path, baseline: str | Path | None = None, out: str | Path | None = None,
                   at_round: int | None = None) -> tuple[pd.DataFrame, list[Path]]:
    """Collect the DP jobs of `root`; write the CSV, the markdown table and the plot into `out`."""
    table = collect_tradeoff(root, at_round)
    base = evaluated_record(load_run(baseline).history, at_round) if baseline else None
    if baseline and base is None:
        raise RunDirError(f"the baseline {baseline} has no evaluation of round {at_round}")
    out = Path(out or root)
    out.mkdir(parents=True, exist_ok=True)
    csv, md = out / "dp_tradeoff.csv", out / "dp_tradeoff.md"
    table.to_csv(csv, index=False)
    md.write_text(markdown(table, base))
    return table, [csv, md, plot_tradeoff(table, base, out / "dp_tradeoff.png")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedspeech.analysis.dp_tradeoff",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("multirun_dir", type=Path, help="a multirun over DP settings")
    parser.add_argument("--baseline", type=Path, default=None, help="the same run without DP")
    parser.add_argument("--out", type=Path, default=None, help="folder for the files (default: multirun_dir)")
    parser.add_argument("--round", type=int, default=None, dest="at_round",
                        help="compare every job at this evaluated round (default: each job's last)")
    args = parser.parse_args(argv)
    try:
        table, written = write_tradeoff(args.multirun_dir, args.baseline, args.out, args.at_round)
    except RunDirError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print((written[1]).read_text())
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
