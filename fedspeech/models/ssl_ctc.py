"""Self-supervised speech encoders (wav2vec 2.0, HuBERT, WavLM) fine-tuned with a character CTC head.

The encoder is loaded with transformers' `AutoModel.from_pretrained` from a hub name or a local
directory; the head is sized from the project's `CharTokenizer` (blank id 0), so every client and
the server agree on the output layer without a separate label file.

What travels in a round is decided here, through `requires_grad` and `delayed_trainable`:
- `freeze_feature_encoder`: the convolutional waveform encoder is never trained and never sent
  (about 4 M of the 315 M parameters of a large model);
- `freeze_encoder_steps: K`: the encoder is held fixed for the first K optimiser steps of every
  local training call so the randomly initialised head settles first (fairseq's
  `freeze_finetune_updates`); these parameters still travel because they train after step K;
- `freeze_encoder`: the whole encoder is fixed and only the head travels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedspeech.data.audio import SAMPLE_RATE
from fedspeech.data.batching import Batch
from fedspeech.data.text import CharTokenizer
from fedspeech.models.ctc import CTCModel

# Config attributes that can be overridden from the Hydra model config (null keeps the checkpoint's).
CONFIG_OVERRIDES = ("layerdrop", "mask_time_prob", "mask_time_length", "mask_feature_prob",
                    "mask_feature_length", "hidden_dropout", "attention_dropout",
                    "activation_dropout", "feat_proj_dropout")


@dataclass(frozen=True)
class ParameterCounts:
    """Parameter (element) counts: all, trainable right now, and sent each round."""

    total: int
    trainable: int
    exchanged: int

    @property
    def exchanged_bytes(self) -> int:
        """float32 bytes of one model update in one direction."""
        return 4 * self.exchanged


class CTCHead(nn.Module):
    """dropout -> [Linear -> LeakyReLU -> dropout] -> Linear to characters."""

    def __init__(self, in_dim: int, vocab_size: int, dropout: float,
                 hidden_size: int | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if hidden_size:
            layers += [nn.Linear(in_dim, hidden_size), nn.LeakyReLU(), nn.Dropout(dropout)]
            in_dim = hidden_size
        layers.append(nn.Linear(in_dim, vocab_size))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def load_encoder(pretrained: str, *, cache_dir: str | None = None, local_files_only: bool = False,
                 revision: str | None = None, overrides: dict[str, Any] | None = None
                 ) -> tuple[nn.Module, bool | None]:
    """Load a pretrained SSL encoder (float32) and the checkpoint's `do_normalize` (None if unknown).

    Overrides are applied to the config before the weights are loaded, so options that create
    parameters (masking needs `masked_spec_embed`) take effect.
    """
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

    hub = {"cache_dir": cache_dir, "local_files_only": local_files_only, "revision": revision}
    try:
        config = AutoConfig.from_pretrained(pretrained, **hub)
    except OSError as err:
        raise OSError(f"cannot load the encoder config of {pretrained!r}: {err}. Point "
                      "model.pretrained at a local directory written by save_pretrained, or at a "
                      "hub name available in model.cache_dir.") from err
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if not hasattr(config, key):
            raise ValueError(f"{config.model_type} config has no attribute {key!r} to override")
        setattr(config, key, value)
    encoder = AutoModel.from_pretrained(pretrained, config=config, dtype=torch.float32, **hub)
    for needed in ("feature_extractor", "_get_feat_extract_output_lengths"):
        if not hasattr(encoder, needed):
            raise TypeError(f"{pretrained!r} loads {type(encoder).__name__}, not a waveform SSL "
                            f"encoder (no {needed}); expected wav2vec2, HuBERT or WavLM")
    try:
        extractor = AutoFeatureExtractor.from_pretrained(pretrained, **hub)
    except (OSError, ValueError):
        return encoder, None        # no preprocessor_config.json: decided from the config
    rate = getattr(extractor, "sampling_rate", SAMPLE_RATE)
    if rate != SAMPLE_RATE:
        raise ValueError(f"{pretrained!r} expects {rate} Hz audio; fedspeech feeds {SAMPLE_RATE} Hz")
    return encoder, getattr(extractor, "do_normalize", None)


class SSLCTC(CTCModel):
    """A pretrained wav2vec2/HuBERT/WavLM encoder + character CTC head, greedy decoding."""

    def __init__(self, tokenizer: CharTokenizer, pretrained: str, name: str | None = None,
                 cache_dir: str | None = None, local_files_only: bool = False,
                 revision: str | None = None, freeze_feature_encoder: bool = True,
                 freeze_encoder: bool = False, freeze_encoder_steps: int = 0,
                 encoder_lr: float | None = None, head_lr: float | None = None,
                 head_dropout: float = 0.1, head_hidden_size: int | None = None,
                 output_norm: bool = False, gradient_checkpointing: bool = False,
                 normalize_audio: bool | None = None, use_attention_mask: bool | None = None,
                 config_overrides: dict[str, Any] | None = None, **options: Any) -> None:
        super().__init__()
        unknown = set(options) - set(CONFIG_OVERRIDES)
        if unknown:
            raise TypeError(f"unknown SSLCTC options: {sorted(unknown)}")
        if freeze_encoder_steps < 0:
            raise ValueError(f"freeze_encoder_steps must be >= 0, got {freeze_encoder_steps}")
        self.name = name or pretrained
        self.tokenizer = tokenizer
        self.encoder, checkpoint_normalize = load_encoder(
            pretrained, cache_dir=cache_dir, local_files_only=local_files_only, revision=revision,
            overrides={**options, **(config_overrides or {})})
        config = self.encoder.config
        layer_norm = getattr(config, "feat_extract_norm", "group") == "layer"
        # The checkpoints' own conventions: layer-norm feature encoders were trained with
        # normalised inputs and padding masks; group-norm ones (base models) with neither.
        self.normalize_audio = (normalize_audio if normalize_audio is not None
                                else checkpoint_normalize if checkpoint_normalize is not None
                                else layer_norm)
        self.use_attention_mask = layer_norm if use_attention_mask is None else use_attention_mask
        self.output_norm = output_norm
        self.head = CTCHead(config.hidden_size, tokenizer.vocab_size, head_dropout,
                            head_hidden_size)
        self.encoder_lr = encoder_lr
        self.head_lr = head_lr
        self.freeze_encoder_steps = 0 if freeze_encoder else int(freeze_encoder_steps)
        if gradient_checkpointing:
            enable = getattr(self.encoder, "activation_checkpointing_enable", None) \
                or self.encoder.gradient_checkpointing_enable
            enable()
        if freeze_encoder:
            self.encoder.requires_grad_(False)
        elif freeze_feature_encoder:
            self.encoder.feature_extractor.requires_grad_(False)
        # Encoder parameters that train (now or after K steps): fixed at construction.
        self._encoder_trained = [n for n, p in self.encoder.named_parameters() if p.requires_grad]
        self._delayed = ({f"encoder.{n}" for n in self._encoder_trained}
                         if self.freeze_encoder_steps else set())
        self._set_encoder_frozen(self.freeze_encoder_steps > 0)

    # ---- freezing schedule -------------------------------------------------------------------
    def _set_encoder_frozen(self, frozen: bool) -> None:
        params = dict(self.encoder.named_parameters())
        for n in self._encoder_trained:
            params[n].requires_grad_(not frozen)
            if frozen:
                params[n].grad = None

    def delayed_trainable(self) -> set[str]:
        return set(self._delayed)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Encoder and head groups with their own learning rates.

        Called once at the start of each local training call: the encoder freeze of the first
        `freeze_encoder_steps` steps starts again here.
        """
        self._set_encoder_frozen(self.freeze_encoder_steps > 0)
        params = dict(self.encoder.named_parameters())
        groups = []
        if self._encoder_trained:
            groups.append({"name": "encoder", "params": [params[n] for n in self._encoder_trained],
                           "lr": lr if self.encoder_lr is None else self.encoder_lr,
                           "weight_decay": weight_decay})
        groups.append({"name": "head", "params": list(self.head.parameters()),
                       "lr": lr if self.head_lr is None else self.head_lr,
                       "weight_decay": weight_decay})
        return groups

    def on_step(self, step: int) -> None:
        """Before optimiser step `step` (0-based): the encoder is fixed for steps 0..K-1.

        Frozen parameters got no gradient in this step's backward, so AdamW skips them (no update,
        no weight decay); unfreezing after step K-1 makes the next forward pass train them.
        """
        if self.freeze_encoder_steps:
            self._set_encoder_frozen(step + 1 < self.freeze_encoder_steps)

    # ---- forward -----------------------------------------------------------------------------
    def output_lengths(self, audio_lens: torch.Tensor) -> torch.Tensor:
        return self.encoder._get_feat_extract_output_lengths(audio_lens).to(torch.long)

    def _inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        audio, lens = batch.audio.float(), batch.audio_lens.to(batch.audio.device)
        valid = torch.arange(audio.shape[1], device=audio.device)[None] < lens[:, None]
        if self.normalize_audio:
            # zero mean, unit variance over each utterance's own samples; padding stays 0
            n = lens.clamp(min=1)[:, None].to(audio.dtype)
            mean = (audio * valid).sum(1, keepdim=True) / n
            var = (((audio - mean) * valid) ** 2).sum(1, keepdim=True) / n
            audio = ((audio - mean) / torch.sqrt(var + 1e-7)) * valid
        return audio, valid

    def logits(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        lens = self.output_lengths(batch.audio_lens)
        if int(lens.min()) < 1:
            short = batch.ids[int(lens.argmin())]
            raise ValueError(f"utterance {short} is shorter than the encoder's receptive field "
                             f"({int(batch.audio_lens.min())} samples); filter such utterances "
                             "with the partitioner's min_duration")
        audio, valid = self._inputs(batch)
        kwargs: dict[str, Any] = {}
        if self.use_attention_mask:
            kwargs["attention_mask"] = valid.long()
        config = self.encoder.config
        frames = int(self.output_lengths(torch.tensor(audio.shape[1])))
        if (self.training and getattr(config, "apply_spec_augment", True)
                and config.mask_time_prob > 0 and frames <= config.mask_time_length):
            # too short a batch for one time mask (transformers would raise): no time masking
            kwargs["mask_time_indices"] = torch.zeros(len(batch), frames, dtype=torch.bool,
                                                      device=audio.device)
        train_encoder = any(p.requires_grad for p in self.encoder.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and train_encoder):
            hidden = self.encoder(audio, **kwargs).last_hidden_state
        if self.output_norm:
            hidden = F.layer_norm(hidden, hidden.shape[-1:])
        return self.head(hidden), lens.clamp(max=hidden.shape[1])

    # ---- accounting --------------------------------------------------------------------------
    def parameter_counts(self) -> ParameterCounts:
        exchanged = set(self.trainable_names())
        named = list(self.named_parameters())
        return ParameterCounts(total=sum(p.numel() for _, p in named),
                               trainable=sum(p.numel() for _, p in named if p.requires_grad),
                               exchanged=sum(p.numel() for n, p in named if n in exchanged))

    def extra_repr(self) -> str:
        c = self.parameter_counts()
        return (f"name={self.name!r}, params={c.total:,}, exchanged={c.exchanged:,}, "
                f"normalize_audio={self.normalize_audio}, attention_mask={self.use_attention_mask}")
