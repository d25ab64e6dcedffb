"""`python -m fedspeech.dataset_preparation dataset=X partitioner=P`: corpus -> manifest -> partition.

Each stage is skipped when its output exists and was made from the same configuration (recorded
beside it), so `main` can call `prepare` before every run at no cost. `prepare_stages` chooses the
stages (for `main` too: `prepare_stages=[]` runs on the data as it is); `force_prepare=true`
rebuilds them even when up to date.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fedspeech import CONFIG_DIR
from fedspeech.config import PREPARE_STAGES, exit_on_config_error, register_resolvers, validate_config
from fedspeech.data.manifest import read_manifest, write_manifest
from fedspeech.data.partition import write_partition
from fedspeech.data.text import CharTokenizer
from fedspeech.files import atomic_write_text


def _stamp(*parts: object) -> str:
    return json.dumps([OmegaConf.to_container(p, resolve=True) if isinstance(p, DictConfig) else p
                       for p in parts], sort_keys=True, default=str)


def _up_to_date(stamp_file: Path, stamp: str, *outputs: Path) -> bool:
    return all(p.is_file() for p in outputs) and stamp_file.is_file() and stamp_file.read_text() == stamp


def prepare_manifest(cfg: DictConfig, force: bool = False) -> Path:
    prepared = Path(cfg.paths.prepared)
    manifest, tokenizer, stamp_file = prepared / "manifest.csv", prepared / "tokenizer.json", prepared / "prepared.json"
    stamp = _stamp(str(cfg.dataset.root), cfg.dataset.reader)
    if not force and _up_to_date(stamp_file, stamp, manifest, tokenizer):
        return manifest
    if cfg.dataset.get("download", False):
        print(f"downloading {cfg.dataset.name} to {cfg.dataset.root}", flush=True)
        instantiate(cfg.dataset.downloader, root=cfg.dataset.root)
    t0 = time.perf_counter()
    print(f"reading {cfg.dataset.name} from {cfg.dataset.root}", flush=True)
    corpus = instantiate(cfg.dataset.reader, root=cfg.dataset.root, _convert_="all")
    write_manifest(corpus, prepared)
    frame = read_manifest(manifest)
    CharTokenizer.from_texts(frame.loc[frame["split"] == "train", "text"]).save(tokenizer)
    dt = time.perf_counter() - t0
    print(f"prepared {len(frame)} utterances in {dt:.1f} s ({len(frame) / max(dt, 1e-9):.0f} utt/s)", flush=True)
    atomic_write_text(stamp_file, stamp)
    return manifest


def prepare_partition(cfg: DictConfig, force: bool = False) -> Path:
    out_dir = Path(cfg.paths.partition)
    clients, stamp_file = out_dir / "clients.csv", out_dir / "partition.json"
    manifest = Path(cfg.paths.prepared) / "manifest.csv"
    stamp = _stamp(cfg.partitioner, int(cfg.seed), manifest.stat().st_mtime_ns)
    if not force and _up_to_date(stamp_file, stamp, clients):
        return clients
    partitioner = instantiate(cfg.partitioner, _convert_="all")
    write_partition(read_manifest(manifest), partitioner, int(cfg.seed), out_dir)
    atomic_write_text(stamp_file, stamp)
    return clients


def prepare(cfg: DictConfig, force: bool = False, stages: tuple[str, ...] = PREPARE_STAGES) -> None:
    """Bring the chosen stages up to date (all of them, rebuilt, with `force`)."""
    if "manifest" in stages:
        prepare_manifest(cfg, force)
    if "partition" in stages:
        prepare_partition(cfg, force)


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_config_error():
        validate_config(cfg)
    prepare(cfg, force=bool(cfg.force_prepare), stages=tuple(cfg.prepare_stages))


if __name__ == "__main__":
    register_resolvers()
    main()
