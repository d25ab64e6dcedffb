"""`python -m fedspeech.analysis.leakage <run_dir> [--indicator N] [--baseline <run_dir>]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedspeech.analysis.leakage.report import (CSV_NAME, PLOT_NAME, Options, analyse_run,
                                               format_table, plot_leakage, run_config, run_label,
                                               write_outputs)


def _table(run_dir: Path, out_dir: Path, options: Options, reuse: bool):
    """A run's leakage table: read from `out_dir` when `reuse` and present, else computed."""
    import pandas as pd

    existing = out_dir / CSV_NAME
    if reuse and existing.is_file():
        print(f"using {existing}")
        return pd.read_csv(existing)
    table, indicator = analyse_run(run_dir, options)
    for path in write_outputs(out_dir, table, indicator):
        print(f"wrote {path}")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedspeech.analysis.leakage",
        description="Per-layer gender and speaker-verification attacks on the client updates a "
                    "run recorded (record_updates=true), on footprints and on weight deltas.")
    parser.add_argument("run_dir", type=Path, help="a run directory with updates/")
    parser.add_argument("--indicator", type=int, default=Options.indicator, metavar="N",
                        help="utterances of never-trained speakers to measure footprints on "
                             f"(default {Options.indicator})")
    parser.add_argument("--baseline", type=Path, help="a second run drawn as a second curve "
                        "(its leakage.csv is reused when present, else computed and written there)")
    parser.add_argument("--out", type=Path, help="where leakage.csv, leakage_indicator.csv and "
                        "plots/leakage.png go (default: the run directory)")
    parser.add_argument("--delta-dim", type=int, default=Options.delta_dim,
                        help="weight deltas of a layer with more entries are randomly projected "
                             f"to this many (default {Options.delta_dim})")
    parser.add_argument("--no-center", action="store_true",
                        help="do not centre each round's vectors on the round's mean")
    parser.add_argument("--seed", type=int, default=Options.seed)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; "
                        "1 is often fastest for the tiny model on a busy machine)")
    args = parser.parse_args(argv)
    if args.indicator < 1 or args.delta_dim < 1:
        parser.error("--indicator and --delta-dim must be >= 1")
    options = Options(indicator=args.indicator, delta_dim=args.delta_dim, seed=args.seed,
                      center=not args.no_center, threads=args.threads)
    out_dir = args.out or args.run_dir
    try:
        table = _table(args.run_dir, out_dir, options, reuse=False)
        print(format_table(table))
        curves = {run_label(args.run_dir, run_config(args.run_dir)): table}
        if args.baseline is not None:
            base = _table(args.baseline, args.baseline, options, reuse=True)
            curves[run_label(args.baseline, run_config(args.baseline))] = base
    except (FileNotFoundError, ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {plot_leakage(curves, out_dir / PLOT_NAME)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
