"""What the exchanged updates reveal about speakers, layer by layer (after Mdhaffar et al., 2022).

`python -m fedspeech.analysis.leakage <run_dir>` reads a run recorded with `record_updates=true`,
measures per-layer footprints and weight deltas of every client update, attacks them for gender
and speaker identity, and writes `leakage.csv`, `leakage_indicator.csv` and `plots/leakage.png`.
Modules: `layers` (hidden outputs and parameter groups per model family), `footprints` (streaming
measurement of the recorded updates), `attacks` (classifier and verification), `report` (table,
files, plot). Nothing is imported here, so `-m fedspeech.analysis.leakage` runs its CLI once.
"""
