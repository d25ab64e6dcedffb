"""A tiny random WavLM and a tiny Llama with a real (small) tokenizer, saved to a folder.

SpeechLLM loads its encoder and language model by name or path; these builders write small
random models in the same on-disk format as published ones, so the tests (and the CPU step-time
benchmark) run the real loading, LoRA, training and generation code without any download.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Wav2Vec2FeatureExtractor,
                          WavLMConfig, WavLMModel)

# Text the tokenizer is trained on: prompts, JSON answers and transcript-like words, so that the
# merges cover what the model reads and writes (byte-level BPE still encodes anything else).
_CORPUS = [
    "Instruction:\nGive the following information about the audio - [Transcript, Gender, Age]",
    "\n\nInput:\n<speech></speech>\n\nOutput:\n",
    '{"Transcript":"he hoped there would be stew for dinner","Gender":"male"}',
    '{"Transcript":"stuff it into you his belly counselled him","Gender":"female","Age":"thirties"}',
    '{"Transcript":"after early nightfall the yellow lamps would light up","Emotion":"neutral"}',
    '{"Transcript":"the quick brown fox jumps over the lazy dog","Accent":"england"}',
]


def build_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `_CORPUS`, with <s>, </s> and <pad>."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")


def build_tiny_encoder(path: Path, hidden_size: int = 32) -> Path:
    """Random 2-layer WavLM (layer-norm feature encoder, so it takes an attention mask)."""
    config = WavLMConfig(
        hidden_size=hidden_size, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16,) * 7, feat_extract_norm="layer", do_stable_layer_norm=True,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, num_buckets=16,
        max_bucket_distance=100, mask_time_prob=0.0, hidden_dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0)
    WavLMModel(config).save_pretrained(path)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16_000, padding_value=0.0,
                             do_normalize=True, return_attention_mask=True).save_pretrained(path)
    return path


def build_tiny_llm(path: Path, hidden_size: int = 64) -> Path:
    """Random 2-layer Llama (grouped-query attention) saved with its tokenizer."""
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False, initializer_range=0.2)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_assets(root: Path) -> dict[str, str]:
    """Both models under `root`; returns the `encoder` and `llm` paths for SpeechLLM."""
    root = Path(root)
    return {"encoder": str(build_tiny_encoder(root / "tiny-wavlm")),
            "llm": str(build_tiny_llm(root / "tiny-llama"))}
