"""`<run_dir>/export/`: an encoder written with `save_pretrained`, plus the feature-extractor
settings, so `model=hubert model.pretrained=<export>` and `AutoModel.from_pretrained` load it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedspeech.data.audio import SAMPLE_RATE

#: time masking of the fine-tuning run that loads an export (transformers' HubertConfig
#: default); pretraining masks far more, which must not carry over into CTC fine-tuning
FINETUNE_MASK_TIME_PROB = 0.05

SSL_MODEL_TYPES = ("hubert", "wav2vec2")


def save_export(encoder: Any, out: str | Path, *, normalize_audio: bool,
                info: dict[str, Any] | None = None) -> Path:
    """Write `encoder` (a transformers HubertModel/Wav2Vec2Model) and its preprocessor config."""
    from transformers import Wav2Vec2FeatureExtractor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = encoder.config
    saved = (config.mask_time_prob, config.mask_feature_prob)
    config.mask_time_prob, config.mask_feature_prob = FINETUNE_MASK_TIME_PROB, 0.0
    try:
        encoder.save_pretrained(out)
    finally:
        config.mask_time_prob, config.mask_feature_prob = saved
    layer_norm = getattr(config, "feat_extract_norm", "group") == "layer"
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0,
                             do_normalize=normalize_audio,
                             return_attention_mask=layer_norm).save_pretrained(out)
    if info:
        (out / "fedspeech.json").write_text(json.dumps(info, indent=1, default=str))
    return out


def export_problem(path: str | Path) -> str | None:
    """Why `path` is not a HuBERT/wav2vec2 export (None when it is one)."""
    path = Path(path)
    config = path / "config.json"
    if not path.is_dir():
        return f"{path} is not a directory"
    if not config.is_file():
        return f"{path} has no config.json (not a save_pretrained export)"
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError) as err:
        return f"{config} is unreadable: {err}"
    if model_type not in SSL_MODEL_TYPES:
        return f"{path} holds a {model_type!r} model, not a HuBERT/wav2vec2 export"
    weights = list(path.glob("*.safetensors")) + list(path.glob("pytorch_model*.bin"))
    if not weights:
        return f"{path} has no weights (*.safetensors)"
    return None
