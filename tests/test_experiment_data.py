"""The per-process view of prepared data: cached, but never stale after a re-prepare."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fedspeech.config import compose_config
from fedspeech.data.manifest import CorpusRows, read_manifest, write_manifest
from fedspeech.data.partition import IidPartitioner, PartitionError, write_partition
from fedspeech.data.text import CharTokenizer
from fedspeech.experiment_data import load_experiment_data


def prepare(data: Path, num_clients: int) -> None:
    """A 12-utterance manifest (no audio is read here) and an iid partition of it."""
    rows = [{"id": f"u{i:02d}", "audio": f"/nowhere/u{i}.flac", "start": 0.0, "end": None,
             "duration": 1.0 + i / 10, "speaker": f"s{i % 4}", "text": "a b", "split": "train"}
            for i in range(12)]
    prepared = data / "synthetic"
    write_manifest(CorpusRows(rows=rows, rejected=[]), prepared, verbose=False)
    CharTokenizer.from_texts(["a b"]).save(prepared / "tokenizer.json")
    write_partition(read_manifest(prepared / "manifest.csv"), IidPartitioner(num_clients=num_clients),
                    0, prepared / "partitions" / "iid")


def test_reprepared_data_is_reloaded_and_client_rows_are_checked(tmp_path, capsys):
    cfg = compose_config([f"paths.data={tmp_path}", "partitioner=iid"])
    OmegaConf.resolve(cfg)
    prepare(tmp_path, num_clients=2)
    first = load_experiment_data(cfg)
    assert first.num_clients == 2 and load_experiment_data(cfg) is first      # cached
    prepare(tmp_path, num_clients=3)                                          # same paths, new files
    second = load_experiment_data(cfg)
    assert second is not first and second.num_clients == 3
    assert sum(len(second.client_rows(c)) for c in range(3)) == 12
    with pytest.raises(PartitionError, match="client 3 is not in the partition"):
        second.client_rows(3)
    stale = replace(second, manifest=second.manifest.iloc[1:])                # a manifest out of step
    with pytest.raises(PartitionError, match="not in this manifest"):
        [stale.client_rows(c) for c in range(3)]
