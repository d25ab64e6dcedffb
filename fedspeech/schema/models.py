"""Schemas of `conf/model/*.yaml`, one per model class (chosen by the node's `_target_`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class SpecAugmentConfig:
    freq_masks: int = 0
    freq_width: int = 15
    time_masks: int = 0
    time_width: int = 40


@dataclass
class TinyCTCConfig:
    _target_: str = "fedspeech.models.tiny.TinyCTC"
    name: str = "tiny"
    n_mels: int = 80
    hidden_size: int = 192
    num_layers: int = 3
    conv_channels: int = 32
    dropout: float = 0.1
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)


@dataclass
class SSLCTCConfig:
    """wav2vec2 / HuBERT / WavLM + CTC head (`conf/model/{wav2vec2,hubert,wavlm}.yaml`)."""

    _target_: str = "fedspeech.models.ssl_ctc.SSLCTC"
    name: Optional[str] = None
    pretrained: str = "???"
    cache_dir: Optional[str] = None
    local_files_only: bool = False
    revision: Optional[str] = None
    freeze_feature_encoder: bool = True
    freeze_encoder_steps: int = 0
    freeze_encoder: bool = False
    encoder_lr: Optional[float] = None
    head_lr: Optional[float] = None
    head_dropout: float = 0.1
    head_hidden_size: Optional[int] = None
    output_norm: bool = False
    gradient_checkpointing: bool = False
    normalize_audio: Optional[bool] = None
    use_attention_mask: Optional[bool] = None
    layerdrop: Optional[float] = None
    mask_time_prob: Optional[float] = None
    mask_time_length: Optional[int] = None
    mask_feature_prob: Optional[float] = None
    mask_feature_length: Optional[int] = None
    hidden_dropout: Optional[float] = None
    attention_dropout: Optional[float] = None
    activation_dropout: Optional[float] = None
    feat_proj_dropout: Optional[float] = None
    config_overrides: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ConnectorConfig:
    kind: str = "linear_pool"
    pool: int = 5
    hidden: Optional[int] = None


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: List[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class PromptConfig:
    pre: str = "???"
    post: str = "???"


@dataclass
class SpeechLLMConfig:
    _target_: str = "fedspeech.models.speechllm.SpeechLLM"
    name: str = "speechllm"
    encoder: str = "microsoft/wavlm-large"
    llm: str = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
    local_files_only: bool = False
    torch_dtype: str = "float32"
    finetune_encoder: bool = False
    freeze_feature_encoder: bool = True
    encoder_lr_scale: float = 0.1
    encoder_layer: Optional[int] = None
    normalize_audio: Optional[bool] = None
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    attributes: Any = "auto"           # "auto" or a list of manifest columns
    max_new_tokens: int = 160
    gradient_checkpointing: bool = False
    prompt: PromptConfig = field(default_factory=PromptConfig)


@dataclass
class HubertPretrainConfig:
    """`conf/model/hubert_pretrain.yaml` (task=pretrain)."""

    _target_: str = "fedspeech.models.pretraining.hubert.HubertPretrain"
    name: str = "hubert_pretrain"
    init_from: Optional[str] = None
    num_clusters: int = 100
    proj_dim: int = 64
    logit_temperature: float = 0.1
    mask_prob: float = 0.8
    mask_length: int = 10
    unmasked_weight: float = 0.0
    normalize_audio: bool = False
    feat_extract_norm: str = "group"
    hidden_size: int = 128
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    intermediate_size: int = 256
    conv_dim: List[int] = field(default_factory=lambda: [64] * 7)
    conv_kernel: List[int] = field(default_factory=lambda: [10, 3, 3, 3, 3, 2, 2])
    conv_stride: List[int] = field(default_factory=lambda: [5, 2, 2, 2, 2, 2, 2])
    num_conv_pos_embeddings: int = 32
    num_conv_pos_embedding_groups: int = 8
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    feat_proj_dropout: float = 0.0
    layerdrop: float = 0.0
    config_overrides: Dict[str, Any] = field(default_factory=dict)


@dataclass
class DistilHubertConfig:
    """`conf/model/distilhubert.yaml` (task=distill)."""

    _target_: str = "fedspeech.models.pretraining.distil.DistilHubert"
    name: str = "distilhubert"
    teacher: str = "???"
    student_layers: int = 2
    target_layers: Optional[List[int]] = None
    cos_weight: float = 1.0
    objective: str = "layers"
    unit_kl_weight: float = 0.5
    kl_temperature: float = 1.0
    mask_prob: float = 0.8
    mask_length: int = 10
    init_from_teacher: bool = True
    freeze_feature_encoder: bool = False
    normalize_audio: Optional[bool] = None


#: `model._target_` -> schema. A new model class registers its schema here.
MODELS: dict[str, type] = {schema._target_: schema
                           for schema in (TinyCTCConfig, SSLCTCConfig, SpeechLLMConfig,
                                           HubertPretrainConfig, DistilHubertConfig)}
