"""Faults injected for real, through `python -m fedspeech.main` on Ray: crashing clients, NaN
updates, too few replies, a straggler, and a corrupt utterance in a client's partition."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import TINY_CORPUS, TINY_RUN, read_history, run_module
from fedspeech.federation.faults import FaultPlan

pytestmark = pytest.mark.slow
ALL_CLIENTS = ["strategy.num_train_nodes=3", "client_resources.num_cpus=1"]


def test_crashes_nan_and_too_few_replies_are_recorded_per_client(tiny_data, tmp_path):
    # seed 4 draws: round 1 all healthy; round 2 partition 0 crashes; round 3 partition 2
    # crashes and partition 0 sends NaN, leaving one usable reply (< min_train_nodes=2)
    seed, crash, nan = 4, 0.3, 0.3
    run_dir = tmp_path / "run"
    run_module("fedspeech.main", f"paths.data={tiny_data}", *TINY_CORPUS, *TINY_RUN, *ALL_CLIENTS,
               "num_rounds=3", f"seed={seed}", "strategy.min_train_nodes=2", "keep_checkpoints=null",
               f"faults.crash_prob={crash}", f"faults.nan_prob={nan}", f"hydra.run.dir={run_dir}")
    history = read_history(run_dir)
    plan = FaultPlan(seed=seed, crash_prob=crash, nan_prob=nan)
    for record in history[1:]:
        draws = {pid: plan.draw(record["round"], pid) for pid in range(3)}
        crashed = {str(p) for p, f in draws.items() if f.crash}
        poisoned = {str(p) for p, f in draws.items() if f.nan and not f.crash}
        assert set(record["failed"]) == crashed
        assert all("injected crash" in why for why in record["failed"].values())
        assert set(record["rejected"]) == poisoned
        assert all("non-finite" in why for why in record["rejected"].values())
        healthy = sorted(set(range(3)) - {int(p) for p in crashed | poisoned})
        assert record["participants"] == healthy
        assert (record["skipped"] is not None) == (len(healthy) < 2)
    assert [h["skipped"] is not None for h in history[1:]] == [False, False, True]
    # the skipped round left the model as it was, and the run went on
    before = load_file(str(run_dir / "checkpoints" / "round_0002" / "arrays.safetensors"))
    after = load_file(str(run_dir / "checkpoints" / "round_0003" / "arrays.safetensors"))
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert all(np.isfinite(v).all() for v in after.values())


@pytest.mark.parametrize("nodes", [[], ["simulation.nodes=2"]], ids=["node_per_client", "two_carriers"])
def test_a_straggler_beyond_the_round_timeout_is_ignored(tiny_data, tmp_path, nodes):
    # seed 12 draws no delay in round 1 and a 25 s delay for partition 1 in round 2, against a
    # 20 s round timeout: round 1 of two carrier nodes takes about 12 s on 2 cores (it starts
    # the workers' models), a warm tiny round under a second;
    # the run ends only when the late client's worker is free again, so the delay is kept short
    assert FaultPlan(seed=12, delay_prob=0.3, delay_s=25).draw(2, 1).delay_s == 25
    run_dir = tmp_path / "run"
    run_module("fedspeech.main", f"paths.data={tiny_data}", *TINY_CORPUS, *TINY_RUN, *ALL_CLIENTS,
               "num_rounds=2", "seed=12", "strategy.round_timeout=20", "faults.delay_prob=0.3",
               "faults.delay_s=25", *nodes, f"hydra.run.dir={run_dir}")
    first, second = read_history(run_dir)[1:]
    assert first["timed_out"] == [] and first["participants"] == [0, 1, 2]
    assert second["timed_out"] == [1] and second["participants"] == [0, 2]
    assert second["failed"] == {"1": "no reply before the round timeout"}
    assert second["skipped"] is None


def test_a_corrupt_utterance_is_skipped_and_the_client_trains_on_the_rest(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    import pandas as pd
    manifest = pd.read_csv(data / "synthetic" / "manifest.csv", dtype=str)
    clients = pd.read_csv(data / "synthetic" / "partitions" / "speaker" / "clients.csv", dtype=str)
    victim = clients.loc[clients["client"] == "0", "id"].iloc[0]
    audio = manifest.loc[manifest["id"] == victim, "audio"].iloc[0]
    copy = tmp_path / "corrupt.flac"              # the manifest keeps its path, the bytes go bad
    copy.write_bytes(b"not audio at all" * 10)
    manifest.loc[manifest["id"] == victim, "audio"] = str(copy)
    manifest.to_csv(data / "synthetic" / "manifest.csv", index=False)
    # the audio went bad after preparation: the corpus root stays the prepared one, so the
    # manifest is up to date and is not rebuilt (which would list the file in rejected.csv)
    run_dir = tmp_path / "run"
    proc = run_module("fedspeech.main", f"paths.data={data}", f"dataset.root={tiny_data}/synthetic/corpus",
                      *TINY_CORPUS, *TINY_RUN, *ALL_CLIENTS, "num_rounds=1", f"hydra.run.dir={run_dir}")
    (record,) = read_history(run_dir)[1:]
    assert record["participants"] == [0, 1, 2] and record["failed"] == {}
    assert record["skipped_utterances"] == 1
    assert victim in proc.stdout + proc.stderr and "skipping utterance" in proc.stdout + proc.stderr
    assert audio != str(copy)
