"""Update recording and the per-layer leakage analysis.

Fast tests drive `UpdateRecorder` and the analysis directly on constructed updates of the tiny
model (a planted gender and speaker signal must be found; shuffled labels must not be); the slow
test records a real 3-round run on Ray and analyses it through the command line.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.numpy import load_file

from conftest import TINY_CORPUS, TINY_RUN, run_module
from fedspeech.analysis.leakage.attacks import gender_attack, speaker_verification
from fedspeech.analysis.leakage.layers import layer_taps
from fedspeech.analysis.leakage.report import Options, analyse_run, layer_order
from fedspeech.config import ConfigError, compose_config, validate_config
from fedspeech.data.batching import Batch
from fedspeech.data.text import CharTokenizer
from fedspeech.experiment_data import load_experiment_data
from fedspeech.federation.parameters import trainable_state
from fedspeech.federation.update_recording import (INDEX_COLUMNS, RecordedUpdates,
                                                   UpdateRecorder)
from fedspeech.models.factory import build_model
from fedspeech.models.tiny import TinyCTC

TOKENIZER = CharTokenizer.from_texts(["the quick brown fox jumps over the lazy dog"])


@pytest.fixture(autouse=True)
def one_thread():
    """Small models run fastest on one thread when the CPU is shared (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def compose_cfg(*overrides: str):
    return compose_config(list(overrides))


def noise_batch(lengths: tuple[int, ...] = (16_000, 11_000), seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    audio = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        audio[i, :n] = 0.1 * torch.randn(n, generator=g)
    return Batch(ids=[f"u{i}" for i in range(len(lengths))], speakers=["s"] * len(lengths),
                 texts=["the fox"] * len(lengths), audio=audio, audio_lens=torch.tensor(lengths),
                 attributes=[{"gender": "male"}] * len(lengths))


# ----------------------------------------------------------------------------- recording

def small_arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"a.weight": rng.standard_normal((3, 4)).astype(np.float32),
            "b.bias": rng.standard_normal(5).astype(np.float32)}


def test_recorder_writes_chosen_rounds_one_file_per_client(tmp_path):
    rec = UpdateRecorder(tmp_path, [2, 3], client_speakers={0: ["s0"], 1: ["s1", "s2"], 2: ["s3"]},
                         speaker_gender={"s0": "female", "s1": "female", "s2": "male"})
    assert not rec.wants(1) and rec.wants(2)
    rec.begin_round(1, small_arrays(0))
    rec.record(1, 0, small_arrays(1), {"num-seconds": 3.0})
    assert not (tmp_path / "updates").exists()          # round 1 was not asked for
    rec.begin_round(2, small_arrays(0))
    with pytest.raises(ValueError, match="differ from the round's global model"):
        rec.record(2, 0, {"a.weight": np.zeros((3, 4), np.float32)}, {})
    with pytest.raises(RuntimeError, match="begin_round"):
        rec.record(3, 0, small_arrays(1), {})
    for pid in (0, 1, 2):
        rec.record(2, pid, small_arrays(10 + pid), {"num-seconds": 1.5 * pid, "num-examples": 4,
                                                    "train-loss": 2.0, "partition-id": pid})
    rec.close()
    folder = tmp_path / "updates" / "round_0002"
    assert sorted(p.name for p in folder.iterdir()) == [
        "client_00000.safetensors", "client_00001.safetensors", "client_00002.safetensors",
        "global.safetensors"]
    saved = load_file(str(folder / "client_00001.safetensors"))
    np.testing.assert_array_equal(saved["a.weight"], small_arrays(11)["a.weight"])
    index = pd.read_csv(tmp_path / "updates" / "index.csv", dtype=str, keep_default_na=False)
    assert list(index.columns) == INDEX_COLUMNS
    assert list(index["speakers"]) == ["s0", "s1 s2", "s3"]
    assert list(index["gender"]) == ["female", "mixed", ""]       # s3's gender is unknown
    assert [float(w) for w in index["weight"]] == [0.0, 1.5, 3.0]

    # a resumed run repeats round 2: a new recorder replaces that round's rows, keeps the rest
    again = UpdateRecorder(tmp_path, None)
    again.begin_round(2, small_arrays(0))
    again.record(2, 1, small_arrays(20), {"num-seconds": 9.0})
    reread = RecordedUpdates(tmp_path)
    assert reread.rounds == [2] and list(reread.index["partition_id"]) == [1]
    np.testing.assert_array_equal(reread.client_arrays(reread.index.iloc[0])["b.bias"],
                                  small_arrays(20)["b.bias"])


def test_recording_keys_are_checked_before_a_run():
    validate_config(compose_cfg("record_updates=true", "record_updates_rounds=[1,3]"))
    with pytest.raises(ConfigError, match="record_updates_rounds"):
        validate_config(compose_cfg("record_updates=true", "num_rounds=2", "record_updates_rounds=[3]"))
    with pytest.raises(ConfigError, match="^record_updates: needs federated=true"):
        validate_config(compose_cfg("record_updates=true", "federated=false"))
    cfg = compose_cfg()
    assert cfg.record_updates is False and cfg.record_updates_rounds is None


# ----------------------------------------------------------------------------- layers

def test_tiny_layers_split_the_gru_exactly_and_own_every_parameter():
    torch.manual_seed(0)
    model = TinyCTC(TOKENIZER, hidden_size=16, num_layers=3, conv_channels=4).eval()
    taps = layer_taps(model)
    assert taps.names == ["frontend", "rnn.0", "rnn.1", "rnn.2", "head"]
    assert {taps.layer_of(n) for n in model.trainable_names()} == set(taps.names)
    batch = noise_batch()
    captured = {}

    def keep(_module, _inputs, output) -> None:
        captured["out"] = output[0]

    handle = model.rnn.register_forward_hook(keep)
    with torch.no_grad():
        states = taps.states(batch)
        logits, lens = model.logits(batch)
    handle.remove()
    full, _ = torch.nn.utils.rnn.pad_packed_sequence(captured["out"], batch_first=True,
                                                     total_length=logits.shape[1])
    last, valid = states["rnn.2"]
    torch.testing.assert_close(last, full)                       # layer-by-layer == nn.GRU
    assert not torch.allclose(states["rnn.0"][0], last)
    torch.testing.assert_close(states["head"][0], logits)
    assert valid.sum(1).tolist() == lens.tolist()


def test_ssl_layers_are_features_each_transformer_layer_and_head(tmp_path):
    from fedspeech.models.ssl_ctc import SSLCTC
    from tiny_pretrained import save_tiny_encoder

    path = save_tiny_encoder("wav2vec2", tmp_path / "w2v")
    model = SSLCTC(TOKENIZER, pretrained=str(path), local_files_only=True).eval()
    taps = layer_taps(model)
    assert taps.names == ["features", "layer.0", "layer.1", "head"]
    assert {taps.layer_of(n) for n in model.trainable_names()} == set(taps.names)
    with torch.no_grad():
        states = taps.states(noise_batch())
    assert list(states) == taps.names
    assert states["layer.1"][0].shape[-1] == 32 and states["head"][0].shape[-1] == TOKENIZER.vocab_size
    assert not torch.allclose(states["layer.0"][0], states["layer.1"][0])


def test_speechllm_layers_are_connector_and_lora_lm_layers(tmp_path):
    from fedspeech.models.speechllm import SpeechLLM
    from speechllm_fixtures import build_tiny_assets

    assets = build_tiny_assets(tmp_path)
    model = SpeechLLM(encoder=assets["encoder"], llm=assets["llm"], local_files_only=True).eval()
    taps = layer_taps(model)
    assert taps.names == ["connector", "lm.layer.0", "lm.layer.1"]
    owners = {taps.layer_of(n) for n in model.trainable_names()}
    assert owners == set(taps.names)
    with torch.no_grad():
        states = taps.states(noise_batch())
    assert list(states) == taps.names
    speech, valid = states["connector"]
    assert speech.shape[-1] == 64 and valid.any(1).all()


# ----------------------------------------------------------------------------- attacks

def test_gender_folds_never_share_a_speaker():
    """Features that identify speakers but not gender: grouped CV is at chance, ungrouped is not."""
    rng = np.random.default_rng(0)
    speakers = np.repeat(np.arange(40), 3)
    genders = np.where(rng.permutation(40) < 20, "female", "male")[speakers]
    x = rng.standard_normal((40, 60))[speakers] + 0.01 * rng.standard_normal((120, 60))
    grouped = gender_attack(x, genders, speakers.astype(str))
    assert abs(grouped.accuracy - grouped.chance) < 0.2
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold, cross_val_predict
    leaky = cross_val_predict(LogisticRegression(max_iter=5000), x, genders,
                              cv=KFold(5, shuffle=True, random_state=0))
    assert np.mean(leaky == genders) > 0.9          # what a speaker-mixing split would report


def test_speaker_verification_needs_two_rounds_and_scores_linkable_updates():
    rng = np.random.default_rng(0)
    ids = np.repeat([f"s{i}" for i in range(10)], 2)
    rounds = np.tile([1, 2], 10)
    x = rng.standard_normal((10, 30))[np.repeat(np.arange(10), 2)] + 0.1 * rng.standard_normal((20, 30))
    assert speaker_verification(x, ids, rounds).eer == 0.0
    assert speaker_verification(rng.standard_normal((20, 30)), ids, rounds).eer > 0.25
    one_round = speaker_verification(x, ids, np.ones(20, int))
    assert math.isnan(one_round.eer) and one_round.n_target == 0


# ----------------------------------------------------------------------------- planted signal

PLANTED_LAYER = "rnn.0"


def write_planted_run(run_dir: Path, data_dir: Path, gender_of, n_speakers: int = 24,
                      rounds: tuple[int, ...] = (1, 2)) -> None:
    """A run dir whose recorded updates move `rnn.0` by +-g (gender) plus a per-speaker direction.

    Every parameter also gets independent noise per update, so only the planted layer carries
    gender, and a speaker's updates are linkable across rounds only through the planted part.
    """
    cfg = compose_cfg(f"paths.data={data_dir}", *TINY_CORPUS, *TINY_RUN)
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    data = load_experiment_data(cfg)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.tokenizer)
    taps = layer_taps(model)
    base = {k: v.numpy() for k, v in trainable_state(model).items()}
    planted = [k for k in base if taps.layer_of(k) == PLANTED_LAYER]
    rng = np.random.default_rng(1)
    gender_dir = {k: rng.standard_normal(base[k].shape) for k in planted}
    speaker_dir = [{k: rng.standard_normal(base[k].shape) for k in planted} for _ in range(n_speakers)]
    true_gender = ["female" if i % 2 == 0 else "male" for i in range(n_speakers)]
    recorder = UpdateRecorder(run_dir, None,
                              client_speakers={i: [f"spk{i:02d}"] for i in range(n_speakers)},
                              speaker_gender={f"spk{i:02d}": gender_of(i) for i in range(n_speakers)})
    for rnd in rounds:
        recorder.begin_round(rnd, base)
        for i in range(n_speakers):
            sign = 1.0 if true_gender[i] == "female" else -1.0
            update = {}
            for k, w in base.items():
                d = 0.01 * rng.standard_normal(w.shape)
                if k in planted:
                    d += 0.03 * sign * gender_dir[k] + 0.03 * speaker_dir[i][k]
                update[k] = (w + d).astype(w.dtype)
            recorder.record(rnd, i, update, {"num-seconds": 10.0})
    recorder.close()


def planted_table(tmp_path: Path, data_dir: Path, gender_of) -> pd.DataFrame:
    run_dir = tmp_path / "run"
    write_planted_run(run_dir, data_dir, gender_of)
    table, indicator = analyse_run(run_dir, Options(indicator=3, threads=1), verbose=False)
    assert len(indicator) == 3 and indicator["speaker"].nunique() == 1   # the one unseen voice
    return table.set_index(["source", "layer"])


def test_planted_gender_and_speaker_signal_is_found(tiny_data, tmp_path):
    table = planted_table(tmp_path, tiny_data, lambda i: "female" if i % 2 == 0 else "male")
    assert set(table["view"]) == {"received"}
    assert list(table.loc["footprint"].index) == ["frontend", "rnn.0", "head"]
    assert (table["n_clients"] == 48).all() and (table["gender_chance"] == 0.5).all()
    for source in ("footprint", "delta"):
        row = table.loc[(source, PLANTED_LAYER)]
        assert row["gender_acc"] >= 0.95, (source, row.to_dict())
        assert row["speaker_eer"] <= 0.1, (source, row.to_dict())
    # the front-end comes before the planted layer: its outputs did not change at all, and its
    # weight deltas are independent noise
    assert table.loc[("delta", "frontend"), "gender_acc"] < 0.75
    assert table.loc[("delta", "frontend"), "speaker_eer"] > 0.3
    assert table.loc[("footprint", "frontend"), "speaker_eer"] >= 0.3


def test_shuffled_gender_labels_give_chance(tiny_data, tmp_path):
    """Labels independent of the planted gender (half of each gender relabelled) -> chance."""
    table = planted_table(tmp_path, tiny_data, lambda i: "female" if (i // 2) % 2 == 0 else "male")
    for source in ("footprint", "delta"):
        row = table.loc[(source, PLANTED_LAYER)]
        assert abs(row["gender_acc"] - row["gender_chance"]) <= 0.2, (source, row.to_dict())
        assert row["speaker_eer"] <= 0.1        # identity is untouched by relabelling


# ----------------------------------------------------------------------------- end to end

FOUR_VOICES = [o.replace("num_train_speakers=3", "num_train_speakers=4") for o in TINY_CORPUS]


@pytest.mark.slow
def test_recorded_dp_run_and_leakage_cli(tmp_path):
    data = tmp_path / "data"
    run_module("fedspeech.dataset_preparation", f"paths.data={data}", *FOUR_VOICES)
    common = [f"paths.data={data}", *FOUR_VOICES, *TINY_RUN, "client_resources.num_cpus=1",
              "strategy.fraction_train=1.0"]

    plain = tmp_path / "plain"
    run_module("fedspeech.main", *common, "num_rounds=1", f"hydra.run.dir={plain}")
    assert (plain / "history.json").is_file() and not (plain / "updates").exists()

    run_dir = tmp_path / "dp"
    run_module("fedspeech.main", *common, "num_rounds=3", "strategy/dp=gaussian",
               "record_updates=true", "record_updates_rounds=[2,3]", f"hydra.run.dir={run_dir}")
    updates = run_dir / "updates"
    assert sorted(p.name for p in updates.iterdir()) == ["index.csv", "round_0002", "round_0003"]
    index = pd.read_csv(updates / "index.csv", dtype={"speakers": str})
    assert len(index) == 8 and sorted(set(index["round"])) == [2, 3]
    assert sorted(set(index["gender"])) == ["female", "male"]
    assert set(index.groupby("round")["partition_id"].apply(tuple)) == {(0, 1, 2, 3)}

    proc = run_module("fedspeech.analysis.leakage", str(run_dir), "--indicator", "3", "--threads", "1",
                      "--baseline", str(run_dir))
    assert "indicator set: 3 utterances" in proc.stdout
    table = pd.read_csv(run_dir / "leakage.csv")
    assert set(table["view"]) == {"received", "released"}
    for (view, source), part in table.groupby(["view", "source"]):
        assert list(part["layer"]) == ["frontend", "rnn.0", "head"], (view, source)
    for column in ("gender_acc", "gender_chance", "speaker_eer"):
        assert table[column].between(0, 1).all(), column
    assert (table["n_clients"] == 8).all() and (table["n_target_trials"] == 4).all()
    assert len(pd.read_csv(run_dir / "leakage_indicator.csv")) == 3
    assert (run_dir / "plots" / "leakage.png").stat().st_size > 10_000


def test_plot_axis_names_each_layer_once():
    """Tables repeat every layer per view and source; the plot's axis must not."""
    rows = [{"view": v, "source": s, "layer": layer}
            for v in ("received", "released") for s in ("footprint", "delta")
            for layer in ("frontend", "rnn.0", "head")]
    other = pd.DataFrame([{"view": "received", "source": "delta", "layer": "extra"}])
    assert layer_order({"a": pd.DataFrame(rows), "b": other}) == ["frontend", "rnn.0", "head",
                                                                  "extra"]
