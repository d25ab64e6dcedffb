"""The "no pretraining" baseline of the pretraining evidence: an export of the *untrained*
`model=hubert_pretrain` encoder (same architecture and seed as a pretraining run's round 0), so
CTC fine-tuning from it and from a pretraining export differ only in the pretraining.

    python benchmarks/random_init_export.py OUT_DIR [config overrides, e.g. model.hidden_size=128]
"""

from __future__ import annotations

import sys
from pathlib import Path

from fedspeech.config import compose_config
from fedspeech.data.text import CharTokenizer
from fedspeech.models.factory import build_model


def main(out: str, overrides: list[str]) -> Path:
    cfg = compose_config(["task=pretrain", *overrides])
    model = build_model(cfg.model, CharTokenizer(list("ab")), seed=int(cfg.seed))
    path = model.export(out, info={"task": "none (random initialisation)", "seed": int(cfg.seed)})
    print(f"random-init export: {path}")
    return path


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2:])
