"""What the worker-level model cache saves, on a wav2vec2-base-shaped encoder (95 M parameters).

A Ray worker serves many client calls. Each simulated call here does what the ClientApp does:
get a model, load the global weights, train one epoch on the client's audio (one real 2 s
utterance, which keeps the run short), and return the trainable tensors. Two modes, each in its
own process so peak RSS is per mode:
  cached   -- `fedspeech.models.factory.cached_model` (built once per worker)
  uncached -- `build_model` on every call (`from_pretrained` from disk each time)
`from_pretrained` maps the weight file lazily, so part of a build's cost is paid in the first
training step after it: compare whole calls, not only the `model` column. Wall and process CPU
time are both printed; on a shared machine the CPU time is the steadier of the two.
Also measured: bytes one client sends per round with the CNN feature encoder frozen vs trained.

    python benchmarks/worker_cache.py [--clients 3] [--seconds 2.0]

The encoder is randomly initialised from `Wav2Vec2Config()` defaults (the base shape) and saved
once with `save_pretrained` to a temporary directory; it is loaded with `from_pretrained` like a
hub checkpoint. Runs on CPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedspeech.data.audio import AudioCache  # noqa: E402
from fedspeech.data.batching import UtteranceLoader  # noqa: E402
from fedspeech.data.text import CharTokenizer, normalize_text  # noqa: E402
from fedspeech.federation.parameters import load_record, record_nbytes, to_record  # noqa: E402
from fedspeech.models.factory import BUILDS, build_model, cached_model  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "real" / "LibriSpeech"
UTTERANCE = SHARED / "test-clean" / "1089" / "134691" / "1089-134691-0000.flac"


def save_base_encoder(out_dir: Path) -> Path:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model
    torch.manual_seed(0)
    Wav2Vec2Model(Wav2Vec2Config()).save_pretrained(out_dir)
    # facebook/wav2vec2-base conventions: normalised input, no attention mask (group norm)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False).save_pretrained(out_dir)
    return out_dir


def model_cfg(model_dir: str, freeze_feature_encoder: bool = True):
    return OmegaConf.create({"_target_": "fedspeech.models.ssl_ctc.SSLCTC", "name": "w2v2-base-random",
                             "pretrained": model_dir, "local_files_only": True,
                             "freeze_feature_encoder": freeze_feature_encoder})


def client_rows(seconds: float) -> pd.DataFrame:
    if not UTTERANCE.is_file():
        raise SystemExit(f"real sample audio not found at {UTTERANCE}")
    trans = UTTERANCE.parent / "1089-134691.trans.txt"
    text = dict(line.split(" ", 1) for line in trans.read_text().splitlines())[UTTERANCE.stem]
    return pd.DataFrame([{"id": UTTERANCE.stem, "audio": str(UTTERANCE), "start": 0.0,
                          "end": float(seconds), "duration": float(seconds), "speaker": "1089",
                          "text": normalize_text(text), "split": "train"}])


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MiB."""
    current = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            current = int(line.split()[1]) / 1024
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_phase(mode: str, model_dir: str, clients: int, seconds: float) -> dict:
    """Simulate `clients` calls of one worker; returns timings and memory (one JSON line)."""
    tok = CharTokenizer()
    cfg = model_cfg(model_dir)
    cache = AudioCache(64)
    rows = client_rows(seconds)
    device = torch.device("cpu")
    global_record = to_record(build_model(cfg, tok))    # what the server would send
    gc.collect()
    base_rss = rss_mb()[0]
    from fedspeech.training import train_local
    parts: list[dict[str, float]] = []
    bytes_up = 0
    for client in range(clients):
        t = [(time.perf_counter(), time.process_time())]
        model = cached_model(cfg, tok, seed=0) if mode == "cached" else build_model(cfg, tok)
        t.append((time.perf_counter(), time.process_time()))
        load_record(model, global_record)
        t.append((time.perf_counter(), time.process_time()))
        loader = UtteranceLoader(rows, cache, batch_seconds=30.0, shuffle=True, seed=client)
        stats = train_local(model, loader, device, lr=1e-4)
        t.append((time.perf_counter(), time.process_time()))
        reply = to_record(model)
        bytes_up = record_nbytes(reply)
        t.append((time.perf_counter(), time.process_time()))
        part = {}
        for clock, name in ((0, "wall"), (1, "cpu")):
            for i, key in enumerate(("model", "load", "train", "reply")):
                part[f"{name}_{key}"] = t[i + 1][clock] - t[i][clock]
            part[f"{name}_total"] = t[-1][clock] - t[0][clock]
        parts.append(part)
        timings = ", ".join(f"{k} {part['wall_' + k]:.2f}/{part['cpu_' + k]:.2f} s"
                            for k in ("model", "load", "train", "reply", "total"))
        print(f"  [{mode}] client {client}: {timings} wall/cpu ({stats.steps} step, "
              f"loss {stats.loss:.1f})", file=sys.stderr, flush=True)
        del model, reply
        gc.collect()
    current, peak = rss_mb()
    return {"mode": mode, "parts": parts, "bytes_up": bytes_up,
            "builds": BUILDS["count"] - 1, "rss_before_mb": base_rss, "rss_end_mb": current,
            "peak_rss_mb": peak}


def spawn(mode: str, model_dir: str, clients: int, seconds: float) -> dict:
    out = subprocess.run([sys.executable, __file__, "--phase", mode, "--model-dir", model_dir,
                          "--clients", str(clients), "--seconds", str(seconds)],
                         check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def exchanged_bytes(model_dir: str) -> dict[bool, int]:
    tok = CharTokenizer()
    sizes = {}
    for frozen in (True, False):
        model = build_model(model_cfg(model_dir, freeze_feature_encoder=frozen), tok)
        sizes[frozen] = record_nbytes(to_record(model))
        counts = model.parameter_counts()
        print(f"  freeze_feature_encoder={frozen}: {counts.exchanged:,} of {counts.total:,} "
              "parameters exchanged", flush=True)
        del model
        gc.collect()
    return sizes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=3, help="client calls per worker")
    ap.add_argument("--seconds", type=float, default=2.0, help="audio seconds per client")
    ap.add_argument("--phase", choices=["cached", "uncached"], help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(run_phase(args.phase, args.model_dir, args.clients, args.seconds)))
        return

    print(f"torch threads {torch.get_num_threads()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; {args.clients} client calls of {args.seconds:g} s audio per mode",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model_dir = str(save_base_encoder(Path(tmp) / "w2v2-base"))
        print(f"saved a random wav2vec2-base-shaped encoder in {time.perf_counter() - t0:.1f} s",
              flush=True)
        results = {m: spawn(m, model_dir, args.clients, args.seconds) for m in ("cached", "uncached")}
        sizes = exchanged_bytes(model_dir)

    c, u = results["cached"], results["uncached"]
    print(f"load average at the end {os.getloadavg()[0]:.1f} (timings are only comparable when it "
          "stayed below the core count)")

    def med(r: dict, key: str, calls: slice) -> float:
        return statistics.median(p[key] for p in r["parts"][calls])

    steady = slice(1, None) if args.clients > 1 else slice(None)
    keys = ("model", "load", "train", "reply", "total")
    for clock in ("cpu", "wall"):
        print(f"\n== per client call, median {clock} seconds "
              f"({'process CPU time, robust to other load' if clock == 'cpu' else 'elapsed'}) ==")
        print(f"{'mode':>9} {'first call':>10} | later calls: " + " ".join(f"{k:>6}" for k in keys))
        for r in (c, u):
            print(f"{r['mode']:>9} {r['parts'][0][clock + '_total']:>10.2f} | {'':13}"
                  + " ".join(f"{med(r, f'{clock}_{k}', steady):>6.2f}" for k in keys))
        handling = {r["mode"]: med(r, f"{clock}_model", steady) + med(r, f"{clock}_load", steady)
                    for r in (c, u)}
        print(f"model handling (get/build + load weights): uncached {handling['uncached']:.2f} s vs "
              f"cached {handling['cached']:.2f} s; uncached / cached per client call: "
              f"{med(u, f'{clock}_total', steady) / med(c, f'{clock}_total', steady):.2f}x later calls, "
              f"{u['parts'][0][clock + '_total'] / c['parts'][0][clock + '_total']:.2f}x first call")
    print("\n== memory ==")
    for r in (c, u):
        print(f"{r['mode']:>9}: models built {r['builds']}, peak RSS {r['peak_rss_mb']:.0f} MiB, "
              f"RSS at end {r['rss_end_mb']:.0f} MiB")
    print(f"uncached / cached peak RSS: {u['peak_rss_mb'] / c['peak_rss_mb']:.2f}x; RSS held between "
          f"calls: cached {c['rss_end_mb'] - c['rss_before_mb']:+.0f} MiB, "
          f"uncached {u['rss_end_mb'] - u['rss_before_mb']:+.0f} MiB")
    print("\n== bytes per client per round (one direction, float32) ==")
    ratio = sizes[True] / sizes[False]
    print(f"feature encoder frozen: {sizes[True] / 1e6:.1f} MB, trained: {sizes[False] / 1e6:.1f} MB "
          f"-> frozen sends {ratio:.3f}x ({(1 - ratio) * 100:.1f} % less)")
    if sizes[True] != c["bytes_up"]:
        raise SystemExit(f"reply size {c['bytes_up']} differs from the record size {sizes[True]}")


if __name__ == "__main__":
    main()
