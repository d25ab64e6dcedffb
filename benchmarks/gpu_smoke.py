"""GPU path in one go (<= 8 min on one GPU): fractional GPUs per Ray actor, bf16, the SpeechLLM.

Three short federated runs through `python -m fedspeech.main` on a small embedded corpus:

1. the tiny CTC model, 4 clients per round sharing one GPU (`client_resources.num_gpus=0.25`);
2. a randomly initialised wav2vec2-base-shaped encoder (95 M parameters; no download: the
   architecture is built from `Wav2Vec2Config()` and saved like a hub checkpoint), 2 rounds in
   bf16 with `num_gpus=0.5`;
3. the SpeechLLM with a tiny random WavLM and Llama (tests/speechllm_fixtures.py) on the GPU.

For each it prints, per round and client, the optimiser step time and the peak GPU memory of the
Ray actor that trained it (from the run's history.json, written by the clients themselves).

    python benchmarks/gpu_smoke.py [--out /tmp/gpu_smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = ["dataset.reader.num_train_speakers=8", "dataset.reader.num_unseen_speakers=2",
          "dataset.reader.train_sentences=12", "dataset.reader.dev_sentences=1",
          "dataset.reader.test_sentences=2", "dataset.reader.unseen_sentences=4",
          "eval.max_utterances=40"]


def build_wav2vec2_base(path: Path) -> Path:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model
    Wav2Vec2Model(Wav2Vec2Config()).save_pretrained(path)          # the base architecture
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16_000, padding_value=0.0,
                             do_normalize=False, return_attention_mask=False).save_pretrained(path)
    return path


def run(name: str, out: Path, overrides: list[str]) -> Path:
    run_dir = out / name
    cmd = [sys.executable, "-m", "fedspeech.main", f"paths.data={out / 'data'}", *CORPUS, *overrides,
           f"hydra.run.dir={run_dir}"]
    t0 = time.time()
    print(f"== {name}: {' '.join(overrides)}", flush=True)
    subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    print(f"   {name} took {time.time() - t0:.0f} s", flush=True)
    return run_dir


def report(run_dir: Path) -> None:
    for record in json.loads((run_dir / "history.json").read_text())[1:]:
        for pid, m in sorted(record.get("clients", {}).items(), key=lambda kv: int(kv[0])):
            steps = max(m.get("train-steps", 0.0), 1.0)
            print(f"   round {record['round']} client {pid}: {m.get('client-compute-s', 0.0) / steps:.3f} "
                  f"s/step over {int(steps)} steps, peak GPU memory of its actor "
                  f"{m.get('gpu-peak-mb', float('nan')):.0f} MB", flush=True)
        print(f"   round {record['round']}: WER {record.get('wer', float('nan')):.3f}, "
              f"{record['wall_s']:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/fedspeech_gpu_smoke"))
    args = parser.parse_args()
    import torch
    if not torch.cuda.is_available():
        sys.exit("no CUDA device visible: this script checks the GPU path")
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report(run("tiny_quarter_gpu", args.out, [
        "num_rounds=2", "strategy.num_train_nodes=4", "client_resources.num_gpus=0.25",
        "client_resources.num_cpus=1"]))
    base = build_wav2vec2_base(args.out / "wav2vec2-base-random")
    report(run("wav2vec2_base_bf16", args.out, [
        "model=wav2vec2", f"model.pretrained={base}", "model.local_files_only=true",
        "num_rounds=2", "strategy.num_train_nodes=2", "train.precision=bf16",
        "train.max_batch_utterances=4", "train.max_steps=5", "client_resources.num_gpus=0.5",
        "client_resources.num_cpus=2"]))
    sys.path.insert(0, str(REPO / "tests"))
    from speechllm_fixtures import build_tiny_assets
    assets = build_tiny_assets(args.out / "speechllm-assets")
    report(run("speechllm_tiny", args.out, [
        "model=speechllm", "strategy=speechllm_fedavg", f"model.encoder={assets['encoder']}",
        f"model.llm={assets['llm']}", "model.local_files_only=true", "model.max_new_tokens=40",
        "num_rounds=2", "strategy.num_train_nodes=2", "train.max_steps=5",
        "client_resources.num_gpus=0.5", "client_resources.num_cpus=2"]))


if __name__ == "__main__":
    main()
