"""Analysis of finished runs from their files alone: per-run plots and summary, multirun sweeps.

`python -m fedspeech.analysis <run_dir>` redraws a run's plots and prints its summary;
`python -m fedspeech.analysis.sweep <multirun_dir>` tabulates a Hydra multirun. The sweep module is
not imported here, so that `-m fedspeech.analysis.sweep` runs it exactly once.
"""

from fedspeech.analysis.plots import plot_run
from fedspeech.analysis.summary import RunDirError, format_summary, load_run, summarize_run

__all__ = ["RunDirError", "format_summary", "load_run", "plot_run", "summarize_run"]
