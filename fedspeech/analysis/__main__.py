"""`python -m fedspeech.analysis <run_dir> [--baseline <run_dir or WER>]`: redraw and summarise a run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedspeech.analysis.plots import plot_run
from fedspeech.analysis.summary import RunDirError, format_summary, load_run, summarize_run


def parse_baseline(value: str | None) -> Path | float | None:
    """A run directory when one exists at that path, else a WER fraction (e.g. 0.32)."""
    if value is None:
        return None
    if Path(value).is_dir():
        return Path(value)
    try:
        return float(value)
    except ValueError:
        raise SystemExit(f"--baseline {value!r} is neither a run directory nor a WER fraction") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedspeech.analysis",
                                     description="Redraw every plot of a finished run and print its summary, "
                                                 "from the run directory's files alone.")
    parser.add_argument("run_dir", type=Path, help="a run directory (holds history.json)")
    parser.add_argument("--baseline", help="run directory of a federated=false run, or a WER fraction, "
                                           "drawn as a horizontal line on wer.png")
    parser.add_argument("--no-plots", action="store_true", help="print the summary only")
    args = parser.parse_args(argv)
    baseline = parse_baseline(args.baseline)
    try:
        if not args.no_plots:
            skipped: dict[str, str] = {}
            made = plot_run(args.run_dir, baseline=baseline, skipped=skipped)
            for path in made:
                print(f"wrote {path}")
            for name, reason in skipped.items():
                print(f"skipped {name}: {reason}")
            print()
        summary = summarize_run(args.run_dir, baseline=baseline)
        print(format_summary(summary, load_run(args.run_dir).speakers))
    except RunDirError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
