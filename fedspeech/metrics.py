"""WER/CER (jiwer) over a set of decoded utterances, overall and per speaker."""

from __future__ import annotations

import jiwer
import pandas as pd


def error_rates(refs: list[str], hyps: list[str]) -> dict[str, float]:
    """Corpus-level WER and CER: errors summed over utterances / reference words (chars)."""
    pairs = [(r, h) for r, h in zip(refs, hyps) if r.strip()]
    if not pairs:
        return {"wer": float("nan"), "cer": float("nan")}
    r, h = [p[0] for p in pairs], [p[1] for p in pairs]
    return {"wer": float(jiwer.wer(r, h)), "cer": float(jiwer.cer(r, h))}


def attribute_accuracy(records: pd.DataFrame) -> dict[str, float]:
    """Accuracy of every predicted attribute that has a reference (`pred_X` vs `true_X`)."""
    out: dict[str, float] = {}
    for col in records.columns:
        if col.startswith("true_"):
            key = col[5:]
            known = records[records[col].notna()]
            if len(known) and f"pred_{key}" in known:
                pred = known[f"pred_{key}"].astype(str).str.strip().str.lower()
                out[f"acc_{key}"] = float((pred == known[col].astype(str).str.lower()).mean())
    if "parsed" in records:
        out["unparsed"] = float(1.0 - records["parsed"].astype(bool).mean())
    return out


def per_speaker(records: pd.DataFrame) -> pd.DataFrame:
    """One row per speaker: utterances, seconds, WER, CER (corpus-level within the speaker)."""
    rows = []
    for speaker, group in records.groupby("speaker", sort=True):
        rates = error_rates(list(group["ref"]), list(group["hyp"]))
        rows.append({"speaker": speaker, "n_utts": len(group),
                     "seconds": round(float(group["seconds"].sum()), 2), **rates})
    return pd.DataFrame(rows, columns=["speaker", "n_utts", "seconds", "wer", "cer"])
