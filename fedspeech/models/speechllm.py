"""SpeechLLM: a speech encoder, a small connector and a causal language model with LoRA.

    audio -> encoder (WavLM, frozen by default) -> connector (pool k frames, project to the LM width)
    LM input:  [pre-prompt] [speech embeddings] [post-prompt] [answer]
    answer:    compact JSON, e.g. {"Transcript":"...","Gender":"female"}

The answer carries the transcript and every speaker attribute the data labels (gender, age, accent,
emotion, language), so one model learns recognition and speaker characterisation together. Only the
connector and the LoRA adapters (and the encoder when fine-tuned) are trainable, and therefore only
they travel in a federated round: well under 1 % of the weights of WavLM-large + TinyLlama-1.1B.
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedspeech.data.batching import Batch
from fedspeech.data.text import normalize_text
from fedspeech.models.base import Prediction, SpeechModel

TRANSCRIPT_KEY = "Transcript"
# manifest column -> key in the JSON answer (the order of the answer's fields)
ANSWER_KEYS = {"gender": "Gender", "age": "Age", "accent": "Accent", "emotion": "Emotion",
               "language": "Language", "speech_activity": "SpeechActivity"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
IGNORE = -100
DEFAULT_PROMPT = {
    "pre": "Instruction:\nGive the following information about the audio - [{keys}]\n\nInput:\n<speech>",
    "post": "</speech>\n\nOutput:\n",
}
CONNECTOR_KINDS = ("linear", "linear_pool", "cnn")
_CONNECTOR_KEYS = {"kind", "pool", "hidden"}
_LORA_KEYS = {"r", "alpha", "dropout", "target_modules"}


# ----------------------------------------------------------------------------------- answer text

def format_answer(transcript: str, attributes: dict[str, str], columns: list[str]) -> str:
    """The target JSON: the transcript, then the listed attribute columns, lower-cased values."""
    answer = {TRANSCRIPT_KEY: transcript}
    for col in columns:
        answer[ANSWER_KEYS[col]] = str(attributes[col]).strip().lower()
    return json.dumps(answer, ensure_ascii=False, separators=(",", ":"))


_DECODER = json.JSONDecoder()
# a "Key": value pair, tolerating an unterminated string value (a truncated generation)
_FIELD = re.compile(r'"(?P<key>[A-Za-z_]+)"\s*:\s*(?:"(?P<text>(?:[^"\\]|\\.)*)"?|(?P<bare>[^,}\s"]+))')


def _as_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _unescape(text: str) -> str:
    try:
        return json.loads(f'"{text}"')
    except json.JSONDecodeError:
        return text


def parse_answer(text: str) -> tuple[dict[str, str], bool]:
    """Fields of a generated answer and whether it was well formed.

    Well formed = the first ``{`` starts a valid JSON object holding a ``Transcript`` (text after the
    object is ignored). Anything else is never an exception: the fields are then scanned leniently
    (``"Key": "value"`` pairs, an unterminated last string included) and ``parsed`` is False.
    """
    start = text.find("{")
    if start >= 0:
        try:
            obj, _ = _DECODER.raw_decode(text[start:])
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and TRANSCRIPT_KEY in obj:
            return {str(k): _as_text(v) for k, v in obj.items()}, True
    fields: dict[str, str] = {}
    for m in _FIELD.finditer(text):
        value = _unescape(m["text"]) if m["text"] is not None else m["bare"]
        fields.setdefault(m["key"], value)
    return fields, False


def answer_to_prediction(text: str, columns: list[str]) -> Prediction:
    """A generated answer -> Prediction with the normalised transcript and the asked attributes."""
    fields, parsed = parse_answer(text)
    attributes = {col: fields.get(ANSWER_KEYS[col], "").strip().lower() for col in columns}
    return Prediction(text=normalize_text(fields.get(TRANSCRIPT_KEY, "")), attributes=attributes,
                      parsed=parsed)


# ------------------------------------------------------------------------------------- connector

class Connector(nn.Module):
    """Encoder frames -> LM embeddings, shortening the sequence by `pool`.

    linear:      one projection per frame (pool must be 1);
    linear_pool: mean of every `pool` valid frames, then projection;
    cnn:         Conv1d with kernel = stride = `pool`.
    `hidden` adds a GELU layer of that width before the final projection. Frames past an utterance's
    end are zeroed first, so an utterance gets the same embeddings whatever it is batched with.
    """

    def __init__(self, kind: str, in_dim: int, out_dim: int, pool: int = 1,
                 hidden: int | None = None) -> None:
        super().__init__()
        if kind not in CONNECTOR_KINDS:
            raise ValueError(f"unknown connector kind {kind!r}; choose one of {CONNECTOR_KINDS}")
        if int(pool) < 1:
            raise ValueError(f"connector pool must be >= 1, got {pool}")
        if kind == "linear" and int(pool) != 1:
            raise ValueError("connector 'linear' keeps every frame: set connector.pool=1, "
                             "or use 'linear_pool' / 'cnn' to shorten the sequence")
        self.kind, self.pool = kind, int(pool)
        width = int(hidden) if hidden else out_dim
        if kind == "cnn":
            self.proj = nn.Conv1d(in_dim, width, kernel_size=self.pool, stride=self.pool)
        else:
            self.proj = nn.Linear(in_dim, width)
        self.out = nn.Sequential(nn.GELU(), nn.Linear(width, out_dim)) if hidden else nn.Identity()

    def output_lengths(self, frames: torch.Tensor) -> torch.Tensor:
        return torch.div(frames + self.pool - 1, self.pool, rounding_mode="floor")

    def forward(self, x: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, D) encoder states with `frames` valid -> (B, ceil(T / pool), out_dim)."""
        valid = (torch.arange(x.shape[1], device=x.device)[None] < frames[:, None]).unsqueeze(-1)
        x = x * valid
        pad = (-x.shape[1]) % self.pool
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
            valid = F.pad(valid, (0, 0, 0, pad))
        if self.kind == "cnn":
            y = self.proj(x.transpose(1, 2)).transpose(1, 2)
        else:
            if self.pool > 1:
                b, t, d = x.shape
                count = valid.reshape(b, t // self.pool, self.pool, 1).sum(2).clamp(min=1)
                x = x.reshape(b, t // self.pool, self.pool, d).sum(2) / count
            y = self.proj(x)
        return self.out(y)


# --------------------------------------------------------------------------------------- encoder

class AudioEncoder(nn.Module):
    """A transformers waveform encoder (WavLM, HuBERT, wav2vec2, data2vec-audio) on padded batches.

    Mirrors what the model's feature extractor would do: per-utterance zero-mean/unit-variance
    normalisation over the valid samples when the model expects it, and an attention mask only for
    models whose feature encoder uses layer norm (group-norm models were trained on zero padding).
    """

    def __init__(self, model: nn.Module, normalize: bool, use_mask: bool,
                 layer: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.normalize = normalize
        self.use_mask = use_mask
        self.layer = layer
        cfg = model.config
        self.dim = int(getattr(cfg, "output_hidden_size", None) or cfg.hidden_size)

    def frame_lengths(self, lens: torch.Tensor, total: int, samples: int) -> torch.Tensor:
        fn = getattr(self.model, "_get_feat_extract_output_lengths", None)
        frames = fn(lens) if fn is not None else torch.div(lens * total, samples, rounding_mode="floor")
        return frames.long().clamp(min=0, max=total)

    def forward(self, audio: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.arange(audio.shape[1], device=audio.device)[None] < lens[:, None]
        if self.normalize:
            n = lens.clamp(min=1)[:, None].to(audio.dtype)
            mean = (audio * mask).sum(1, keepdim=True) / n
            var = (((audio - mean) * mask) ** 2).sum(1, keepdim=True) / n
            audio = (audio - mean) / torch.sqrt(var + 1e-7) * mask
        dtype = next(self.model.parameters()).dtype
        out = self.model(audio.to(dtype), attention_mask=mask.long() if self.use_mask else None,
                         output_hidden_states=self.layer is not None)
        states = out.last_hidden_state if self.layer is None else out.hidden_states[self.layer]
        return states, self.frame_lengths(lens, states.shape[1], audio.shape[1])


def _encoder_preprocessing(name: str, config: object, local_files_only: bool) -> tuple[bool, bool]:
    """(normalize, use attention mask) as the encoder's feature extractor has them, else by config."""
    layer_norm = getattr(config, "feat_extract_norm", "layer") == "layer"
    try:
        from transformers import AutoFeatureExtractor
        fe = AutoFeatureExtractor.from_pretrained(name, local_files_only=local_files_only)
        return (bool(getattr(fe, "do_normalize", layer_norm)),
                bool(getattr(fe, "return_attention_mask", layer_norm)))
    except (OSError, ValueError, KeyError):
        return layer_norm, layer_norm


# ------------------------------------------------------------------------------------------ model

@dataclass
class LMInputs:
    """One batch laid out for the LM: embeddings, mask, and labels (IGNORE outside answers)."""

    embeds: torch.Tensor            # (B, L, H)
    attention_mask: torch.Tensor    # (B, L)
    labels: torch.Tensor | None     # (B, L), None for generation
    columns: list[list[str]]        # attribute columns asked of each utterance


class SpeechLLM(SpeechModel):
    """Encoder + connector + LoRA causal LM answering a JSON transcript-and-attributes record."""

    def __init__(self, tokenizer: object = None, *, name: str = "speechllm",
                 encoder: str | nn.Module = "microsoft/wavlm-large",
                 llm: str | nn.Module = "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
                 llm_tokenizer: object = None,
                 connector: dict | None = None, lora: dict | None = None,
                 finetune_encoder: bool = False, freeze_feature_encoder: bool = True,
                 encoder_layer: int | None = None, normalize_audio: bool | None = None,
                 encoder_lr_scale: float = 0.1, torch_dtype: str = "float32",
                 local_files_only: bool = False, attributes: str | list[str] = "auto",
                 prompt: dict | None = None, max_new_tokens: int = 160,
                 gradient_checkpointing: bool = False) -> None:
        """`tokenizer` is the project's CharTokenizer, unused (the LM brings its own).

        `encoder` / `llm` are names or local paths (or already built modules, e.g. on the meta device
        for size accounting; `llm_tokenizer` then goes with `llm`). Trained tensors stay float32
        whatever `torch_dtype` the frozen weights use, so updates are exchanged at full precision.
        """
        super().__init__()
        from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

        if torch_dtype not in DTYPES:
            raise ValueError(f"torch_dtype must be one of {list(DTYPES)}, got {torch_dtype!r}")
        dtype = DTYPES[torch_dtype]
        self.name = name
        self.attributes = self._check_attributes(attributes)
        self.prompt = self._check_prompt(prompt)
        self.max_new_tokens = int(max_new_tokens)
        self.finetune_encoder = bool(finetune_encoder)
        self.encoder_lr_scale = float(encoder_lr_scale)

        # encoder
        if isinstance(encoder, str):
            enc_model = AutoModel.from_pretrained(encoder, dtype=dtype, local_files_only=local_files_only)
            norm, use_mask = _encoder_preprocessing(encoder, enc_model.config, local_files_only)
        else:
            enc_model = encoder
            norm = use_mask = getattr(enc_model.config, "feat_extract_norm", "layer") == "layer"
        if normalize_audio is not None:
            norm = bool(normalize_audio)
        self.encoder = AudioEncoder(enc_model, normalize=norm, use_mask=use_mask, layer=encoder_layer)
        self.encoder.requires_grad_(self.finetune_encoder)
        if self.finetune_encoder and freeze_feature_encoder and hasattr(enc_model, "feature_extractor"):
            enc_model.feature_extractor.requires_grad_(False)

        # language model + LoRA
        if isinstance(llm, str):
            base = AutoModelForCausalLM.from_pretrained(llm, dtype=dtype, local_files_only=local_files_only)
            llm_tokenizer = llm_tokenizer or AutoTokenizer.from_pretrained(
                llm, local_files_only=local_files_only)
        else:
            base = llm
        self.llm_tokenizer = llm_tokenizer
        if llm_tokenizer is not None and llm_tokenizer.eos_token_id is None:
            raise ValueError("the LM tokenizer has no eos token: generation could not know where to stop")
        self.llm = self._with_lora(base, lora)
        if gradient_checkpointing:
            self.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

        # connector (float32: it trains and travels)
        spec = dict(connector or {"kind": "linear_pool", "pool": 5})
        unknown = set(spec) - _CONNECTOR_KEYS
        if unknown:
            raise ValueError(f"unknown connector options {sorted(unknown)}; "
                             f"allowed {sorted(_CONNECTOR_KEYS)}")
        self.connector = Connector(spec.get("kind", "linear_pool"), self.encoder.dim,
                                   int(base.config.hidden_size), pool=int(spec.get("pool", 1)),
                                   hidden=spec.get("hidden")).float()
        self._token_cache: dict[str, list[int]] = {}
        fwd = inspect.signature(base.forward).parameters
        self._keeps_logits = "logits_to_keep" in fwd
        self._max_positions = getattr(base.config, "max_position_embeddings", None)

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _check_attributes(attributes: str | list[str]) -> str | list[str]:
        if attributes == "auto":
            return "auto"
        cols = [attributes] if isinstance(attributes, str) else list(attributes or [])
        bad = [c for c in cols if c not in ANSWER_KEYS]
        if bad:
            raise ValueError(f"unknown attributes {bad}; allowed: 'auto' or a list of {list(ANSWER_KEYS)}")
        return cols

    @staticmethod
    def _check_prompt(prompt: dict | None) -> dict[str, str]:
        merged = dict(DEFAULT_PROMPT)
        for key, value in (prompt or {}).items():
            if key not in DEFAULT_PROMPT:
                raise ValueError(f"unknown prompt part {key!r}; allowed {list(DEFAULT_PROMPT)}")
            merged[key] = str(value)
        return merged

    @staticmethod
    def _with_lora(base: nn.Module, lora: dict | None) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        spec = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"], **(lora or {})}
        unknown = set(spec) - _LORA_KEYS
        if unknown:
            raise ValueError(f"unknown lora options {sorted(unknown)}; allowed {sorted(_LORA_KEYS)}")
        config = LoraConfig(task_type="CAUSAL_LM", r=int(spec["r"]), lora_alpha=float(spec["alpha"]),
                            lora_dropout=float(spec["dropout"]), target_modules=list(spec["target_modules"]))
        # get_peft_model freezes the base weights; adapters are created in float32 (autocast_adapter_dtype)
        return get_peft_model(base, config, autocast_adapter_dtype=True)

    # ------------------------------------------------------------------ training-time behaviour
    def train(self, mode: bool = True) -> "SpeechLLM":
        """A frozen encoder stays in eval mode (no dropout / layer drop on weights that never train)."""
        super().train(mode)
        if not self.finetune_encoder:
            self.encoder.eval()
        return self

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Connector and LoRA at `lr`; a fine-tuned encoder at `lr * encoder_lr_scale`."""
        enc = [p for p in self.encoder.parameters() if p.requires_grad]
        enc_ids = {id(p) for p in enc}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in enc_ids]
        groups = [{"params": rest, "lr": lr, "weight_decay": weight_decay}]
        if enc:
            groups.append({"params": enc, "lr": lr * self.encoder_lr_scale, "weight_decay": weight_decay})
        return groups

    # ------------------------------------------------------------------ input layout
    @property
    def device(self) -> torch.device:
        return self.connector.proj.weight.device

    def _tok(self, text: str) -> list[int]:
        if self.llm_tokenizer is None:
            raise RuntimeError("this SpeechLLM was built without an LM tokenizer (structure only)")
        ids = self._token_cache.get(text)
        if ids is None:
            ids = list(self.llm_tokenizer(text, add_special_tokens=False)["input_ids"])
            self._token_cache[text] = ids
        return ids

    def columns_for(self, attributes: dict[str, str] | None, training: bool) -> list[str]:
        """Attribute columns one utterance's answer holds (training) or its prompt asks for.

        'auto' uses the labels the utterance has; an explicit list is intersected with them for
        training (no target otherwise) and asked in full at prediction.
        """
        attributes = attributes or {}
        wanted = list(ANSWER_KEYS) if self.attributes == "auto" else self.attributes
        if self.attributes != "auto" and not training:
            return list(wanted)
        return [c for c in wanted if str(attributes.get(c, "")).strip()]

    def speech_embeddings(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, H) connector outputs and the number of valid speech embeddings per utterance."""
        with torch.set_grad_enabled(self.finetune_encoder and torch.is_grad_enabled()):
            states, frames = self.encoder(batch.audio, batch.audio_lens)
        speech = self.connector(states.float(), frames)
        return speech, self.connector.output_lengths(frames).clamp(max=speech.shape[1])

    def build_inputs(self, batch: Batch, with_answer: bool) -> LMInputs:
        """[bos] pre-prompt, speech, post-prompt (+ answer + eos), padded.

        Training pads on the right and labels only answer tokens (and eos); generation pads on the
        left so that every utterance's next token comes at the same position.
        """
        tok = self.llm_tokenizer
        if tok is None:
            self._tok("")   # raises the structure-only error
        speech, n_speech = self.speech_embeddings(batch)
        embed = self.llm.get_input_embeddings()
        device = speech.device
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        seqs, labels, columns = [], [], []
        for i in range(len(batch)):
            attrs = batch.attributes[i] if batch.attributes else {}
            cols = self.columns_for(attrs, training=with_answer)
            keys = ", ".join([TRANSCRIPT_KEY] + [ANSWER_KEYS[c] for c in cols])
            pre = bos + self._tok(self.prompt["pre"].replace("{keys}", keys))
            post = self._tok(self.prompt["post"])
            answer = (self._tok(format_answer(batch.texts[i], attrs, cols)) + [tok.eos_token_id]
                      if with_answer else [])
            text_emb = embed(torch.tensor(pre + post + answer, device=device, dtype=torch.long))
            n = int(n_speech[i])
            seqs.append(torch.cat([text_emb[:len(pre)], speech[i, :n].to(text_emb.dtype),
                                   text_emb[len(pre):]]))
            labels.append([IGNORE] * (len(pre) + n + len(post)) + answer)
            columns.append(cols)
        length = max(len(s) for s in seqs)
        if self._max_positions and length > self._max_positions:
            raise ValueError(f"LM input of {length} positions exceeds the model's "
                             f"{self._max_positions}: raise connector.pool or use shorter utterances")
        embeds = seqs[0].new_zeros(len(seqs), length, seqs[0].shape[-1])
        mask = torch.zeros(len(seqs), length, dtype=torch.long, device=device)
        label_t = torch.full((len(seqs), length), IGNORE, dtype=torch.long, device=device)
        for i, (s, lab) in enumerate(zip(seqs, labels)):
            sl = slice(length - len(s), length) if not with_answer else slice(0, len(s))
            embeds[i, sl] = s
            mask[i, sl] = 1
            label_t[i, sl] = torch.tensor(lab, dtype=torch.long, device=device)
        return LMInputs(embeds, mask, label_t if with_answer else None, columns)

    # ------------------------------------------------------------------ SpeechModel API
    def loss(self, batch: Batch) -> torch.Tensor:
        """Mean cross-entropy over answer tokens; logits are computed from the first answer on only."""
        inputs = self.build_inputs(batch, with_answer=True)
        labels = inputs.labels
        length = labels.shape[1]
        answer_pos = (labels != IGNORE).float().argmax(1)          # first answer position per row
        keep = length - (int(answer_pos.min()) - 1) if self._keeps_logits else length
        kwargs = {"logits_to_keep": keep} if self._keeps_logits else {}
        out = self.llm(inputs_embeds=inputs.embeds, attention_mask=inputs.attention_mask,
                       use_cache=False, **kwargs)
        logits = out.logits[:, -keep:-1] if keep > 1 else out.logits[:, :0]
        targets = labels[:, length - keep + 1:]
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=IGNORE)

    @torch.no_grad()
    def generate_answers(self, batch: Batch) -> tuple[list[str], list[list[str]]]:
        """Greedy answers (decoded text) and the attribute columns each prompt asked for."""
        from transformers import GenerationConfig

        tok = self.llm_tokenizer
        inputs = self.build_inputs(batch, with_answer=False)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        config = GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1,
                                  eos_token_id=tok.eos_token_id, pad_token_id=pad,
                                  bos_token_id=tok.bos_token_id)
        out = self.llm.generate(inputs_embeds=inputs.embeds, attention_mask=inputs.attention_mask,
                                generation_config=config)
        return tok.batch_decode(out, skip_special_tokens=True), inputs.columns

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Prediction]:
        texts, columns = self.generate_answers(batch)
        return [answer_to_prediction(t, c) for t, c in zip(texts, columns)]

    # ------------------------------------------------------------------ accounting
    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part and how many are exchanged (for reports and benchmarks)."""
        exchanged = set(self.trainable_names())
        named = dict(self.named_parameters())
        return {
            "encoder": sum(p.numel() for p in self.encoder.parameters()),
            "connector": sum(p.numel() for p in self.connector.parameters()),
            "llm": sum(p.numel() for n, p in named.items() if n.startswith("llm.") and "lora_" not in n),
            "lora": sum(p.numel() for n, p in named.items() if "lora_" in n),
            "total": sum(p.numel() for p in named.values()),
            "exchanged": sum(named[n].numel() for n in exchanged),
            "exchanged_bytes": sum(named[n].numel() * named[n].element_size() for n in exchanged),
        }

