"""Bytes a SpeechLLM client exchanges per round vs the full model, and the tiny model's CPU step time.

1. Default sizes (WavLM-large + connector + TinyLlama-1.1B with LoRA, connector and LoRA settings
   read from conf/model/speechllm.yaml): the model is assembled on the `meta` device from configs
   holding the published shapes of those checkpoints, written out below as numbers (no download,
   no weights in memory). The exchanged tensors are those of `SpeechLLM.trainable_names()`; their
   bytes are measured by building the real Flower ArrayRecord of float32 arrays of those shapes
   (what `to_record` sends: data + one .npy header per tensor). Goal: <= 1 % of the model.
2. The tiny random model of the tests (2-layer WavLM + 2-layer Llama): seconds per `train_local`
   optimiser step and per `predict` batch on CPU, on two real LibriSpeech utterances.

    python benchmarks/speechllm_bytes.py [--steps 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from flwr.app import Array, ArrayRecord  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fedspeech.data.audio import AudioCache, load_audio  # noqa: E402
from fedspeech.data.batching import UtteranceLoader  # noqa: E402
from fedspeech.federation.parameters import record_nbytes  # noqa: E402
from fedspeech.models.speechllm import SpeechLLM  # noqa: E402
from fedspeech.training import train_local  # noqa: E402

LIBRI = ROOT.parent / "shared" / "data" / "real" / "LibriSpeech" / "test-clean" / "1089"
UTTS = [("134686/1089-134686-0001.flac", "stuff it into you his belly counselled him"),
        ("134691/1089-134691-0000.flac", "he could wait no longer")]


def wavlm_large_config():
    """microsoft/wavlm-large's published architecture."""
    from transformers import WavLMConfig
    return WavLMConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        conv_dim=(512,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_bias=False, feat_extract_norm="layer", do_stable_layer_norm=True,
        num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, num_buckets=320,
        max_bucket_distance=800, mask_time_prob=0.075)


def tinyllama_config():
    """TinyLlama/TinyLlama-1.1B-Chat-v1.0's published architecture."""
    from transformers import LlamaConfig
    return LlamaConfig(
        vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
        num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)


def meta_speechllm(connector: dict, lora: dict, finetune_encoder: bool = False) -> SpeechLLM:
    from transformers import LlamaForCausalLM, WavLMModel
    with torch.device("meta"):
        return SpeechLLM(encoder=WavLMModel(wavlm_large_config()),
                         llm=LlamaForCausalLM(tinyllama_config()),
                         connector=connector, lora=lora, finetune_encoder=finetune_encoder)


def wire_bytes(model: SpeechLLM) -> int:
    """Bytes of the ArrayRecord a client sends: float32 arrays of the exchanged shapes."""
    params = dict(model.named_parameters())
    record = ArrayRecord({n: Array(np.zeros(tuple(params[n].shape), dtype=np.float32))
                          for n in model.trainable_names()})
    return record_nbytes(record)


def bytes_table(default_cfg) -> pd.DataFrame:
    connector = OmegaConf.to_container(default_cfg.connector)
    lora = OmegaConf.to_container(default_cfg.lora)
    variants = [("default", connector, lora, False)]
    for r in (16, 64):
        variants.append((f"lora r={r}", connector, {**lora, "r": r}, False))
    variants.append(("connector linear, pool 1", {"kind": "linear", "pool": 1, "hidden": None}, lora, False))
    variants.append(("connector cnn, pool 5", {"kind": "cnn", "pool": 5, "hidden": None}, lora, False))
    variants.append(("connector linear_pool + hidden 2048", {**connector, "hidden": 2048}, lora, False))
    variants.append(("lora q,k,v,o + fine-tuned encoder", connector,
                     {**lora, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}, True))
    rows = []
    for label, conn, lo, ft in variants:
        model = meta_speechllm(conn, lo, ft)
        counts = model.parameter_counts()
        sent = wire_bytes(model)
        full = counts["total"] * 4
        rows.append({"variant": label, "lora_r": lo["r"], "connector": f"{conn['kind']}/{conn['pool']}",
                     "params_total": counts["total"], "params_encoder": counts["encoder"],
                     "params_llm": counts["llm"], "params_connector": counts["connector"],
                     "params_lora": counts["lora"], "params_exchanged": counts["exchanged"],
                     "bytes_per_direction": sent, "full_model_fp32_bytes": full,
                     "ratio_pct": 100.0 * sent / full})
        del model
    return pd.DataFrame(rows)


def step_time(steps: int) -> dict[str, float]:
    from speechllm_fixtures import build_tiny_assets

    if not LIBRI.exists():
        raise SystemExit(f"sample audio missing: {LIBRI}")
    with tempfile.TemporaryDirectory() as tmp:
        assets = build_tiny_assets(Path(tmp))
        torch.manual_seed(0)
        model = SpeechLLM(encoder=assets["encoder"], llm=assets["llm"], local_files_only=True,
                          max_new_tokens=32)
    rows = pd.DataFrame([{"id": Path(p).stem, "audio": str(LIBRI / p), "start": 0.0, "end": float("nan"),
                          "duration": len(load_audio(str(LIBRI / p))) / 16_000, "speaker": "1089",
                          "text": t, "split": "train", "gender": "male"} for p, t in UTTS])
    loader = UtteranceLoader(rows, AudioCache(64), batch_seconds=60.0, shuffle=False)
    device = torch.device("cpu")
    train_local(model, loader, device, lr=1e-3, epochs=1)                  # warm-up
    stats = train_local(model, loader, device, lr=1e-3, epochs=steps)
    model.eval()
    batch = next(iter(loader))
    t0 = time.perf_counter()
    model.predict(batch)
    predict_s = time.perf_counter() - t0
    counts = model.parameter_counts()
    return {"audio_s_per_batch": float(rows["duration"].sum()), "steps": stats.steps,
            "s_per_step": stats.compute_s / stats.steps, "predict_s_per_batch": predict_s,
            "tiny_params_total": counts["total"], "tiny_params_exchanged": counts["exchanged"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    default_cfg = OmegaConf.load(ROOT / "conf" / "model" / "speechllm.yaml")
    print("1. exchanged bytes per client and round (each direction), WavLM-large + TinyLlama-1.1B, "
          "built on the meta device", flush=True)
    table = bytes_table(default_cfg)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table[["variant", "params_total", "params_exchanged", "bytes_per_direction",
                     "full_model_fp32_bytes", "ratio_pct"]].to_string(index=False))
    d = table.iloc[0]
    print(f"default: encoder {d.params_encoder:,} + LLM {d.params_llm:,} + connector "
          f"{d.params_connector:,} + LoRA {d.params_lora:,} params; sends "
          f"{d.bytes_per_direction / 2**20:.2f} MiB up and the same down per client and round = "
          f"{d.ratio_pct:.3f} % of the {d.full_model_fp32_bytes / 2**30:.2f} GiB fp32 model "
          f"(goal <= 1 %: {'met' if d.ratio_pct <= 1.0 else 'NOT met'})", flush=True)

    print(f"\n2. tiny random SpeechLLM on CPU ({args.threads} thread(s)), two real LibriSpeech "
          "utterances per batch", flush=True)
    for k, v in step_time(args.steps).items():
        print(f"  {k}: {v:.3f}" if isinstance(v, float) else f"  {k}: {v}")


if __name__ == "__main__":
    main()
