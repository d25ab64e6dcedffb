"""SpeechLLM on a tiny random WavLM + Llama (real loading, LoRA, training and generation code)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from fedspeech.config import compose_config
from fedspeech.data.audio import AudioCache, load_audio
from fedspeech.data.batching import Batch, UtteranceLoader
from fedspeech.data.text import CharTokenizer
from fedspeech.federation.parameters import load_record, record_nbytes, to_record
from fedspeech.metrics import attribute_accuracy
from fedspeech.models.base import Prediction
from fedspeech.models.factory import build_model
from fedspeech.models.speechllm import (IGNORE, Connector, SpeechLLM, answer_to_prediction,
                                        format_answer, parse_answer)
from fedspeech.training import evaluate, train_local
from speechllm_fixtures import build_tiny_assets

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LIBRI = DATA / "real" / "LibriSpeech" / "test-clean" / "1089"
# two short real LibriSpeech utterances of speaker 1089 (male, per LibriSpeech SPEAKERS.TXT)
UTTS = [("1089-134686-0001", "134686", "stuff it into you his belly counselled him"),
        ("1089-134691-0000", "134691", "he could wait no longer")]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return build_tiny_assets(tmp_path_factory.mktemp("speechllm"))


def make_model(assets: dict[str, str], seed: int = 0, **options: object) -> SpeechLLM:
    torch.manual_seed(seed)
    opts = {"connector": {"kind": "linear_pool", "pool": 5}, "max_new_tokens": 24, **options}
    return SpeechLLM(encoder=assets["encoder"], llm=assets["llm"], local_files_only=True, **opts)


@pytest.fixture(scope="module")
def model(assets: dict[str, str]) -> SpeechLLM:
    return make_model(assets).eval()


def synthetic_batch(lengths: tuple[int, ...] = (24_000, 15_000), seed: int = 0) -> Batch:
    """Random waveforms (the model's maths is what is tested here; real audio in the training test)."""
    g = torch.Generator().manual_seed(seed)
    audio = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        audio[i, :n] = 0.1 * torch.randn(n, generator=g)
    texts = ["he hoped there would be stew", "the quick brown fox", "after early nightfall"]
    attrs = [{"gender": "male", "age": "thirties"}, {"gender": "Female"}, {}]
    b = len(lengths)
    return Batch(ids=[f"u{i}" for i in range(b)], speakers=[f"s{i}" for i in range(b)],
                 texts=texts[:b], audio=audio, audio_lens=torch.tensor(lengths), attributes=attrs[:b])


def sub_batch(batch: Batch, i: int) -> Batch:
    n = int(batch.audio_lens[i])
    return Batch(ids=[batch.ids[i]], speakers=[batch.speakers[i]], texts=[batch.texts[i]],
                 audio=batch.audio[i:i + 1, :n].clone(), audio_lens=batch.audio_lens[i:i + 1].clone(),
                 attributes=[batch.attributes[i]])


# ----------------------------------------------------------------------------- answer format

def test_format_answer_is_compact_json_that_parses_back() -> None:
    text = format_answer("he said \"no\"", {"gender": "Male", "age": "thirties"}, ["gender", "age"])
    assert text == '{"Transcript":"he said \\"no\\"","Gender":"male","Age":"thirties"}'
    fields, parsed = parse_answer(text + " trailing tokens")
    assert parsed and fields == {"Transcript": 'he said "no"', "Gender": "male", "Age": "thirties"}


@pytest.mark.parametrize("generated, transcript, gender", [
    ('{"Transcript":"Hello wor', "hello wor", ""),                        # truncated generation
    ('{"Transcript":"hello world","Gender":"male",}', "hello world", "male"),   # trailing comma
    ("Transcript: hello world", "", ""),                                  # no JSON at all
    ('{"Gender":"female"}', "", "female"),                                # valid JSON, no transcript
    ('{"Transcript":"a \\"b\\" c", "Gender": "Female"', "a b c", "female"),  # unclosed object
    ("", "", ""),
    ('{{{{]]]"', "", ""),
])
def test_malformed_answers_are_counted_not_raised(generated: str, transcript: str, gender: str) -> None:
    pred = answer_to_prediction(generated, ["gender"])
    assert pred.parsed is False
    assert pred.text == transcript
    assert pred.attributes == {"gender": gender}


def test_well_formed_answer_gives_normalised_transcript_and_lowercase_attributes() -> None:
    pred = answer_to_prediction(' {"Transcript":"Hello, World!","Gender":"FEMALE","SpeechActivity":true}',
                                ["gender", "age"])
    assert pred == Prediction(text="hello world", attributes={"gender": "female", "age": ""}, parsed=True)


# -------------------------------------------------------------------------------- connector

@pytest.mark.parametrize("kind, pool, hidden", [("linear", 1, None), ("linear_pool", 4, None),
                                                ("cnn", 3, 16), ("linear_pool", 2, 8)])
def test_connector_shapes_and_padding_invariance(kind: str, pool: int, hidden: int | None) -> None:
    torch.manual_seed(0)
    conn = Connector(kind, 12, 20, pool=pool, hidden=hidden)
    x = torch.randn(2, 23, 12)
    frames = torch.tensor([23, 10])
    y = conn(x, frames)
    assert y.shape == (2, -(-23 // pool), 20)
    assert conn.output_lengths(frames).tolist() == [-(-23 // pool), -(-10 // pool)]
    alone = conn(x[1:, :10], frames[1:])               # the short utterance without padding
    n = int(conn.output_lengths(frames)[1])
    torch.testing.assert_close(y[1, :n], alone[0, :n], rtol=1e-5, atol=1e-6)


def test_connector_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="pool=1"):
        Connector("linear", 4, 4, pool=5)
    with pytest.raises(ValueError, match="unknown connector kind"):
        Connector("transformer", 4, 4)


# --------------------------------------------------------------------------------- forward/loss

def test_labels_cover_only_answer_tokens(model: SpeechLLM) -> None:
    batch = synthetic_batch()
    inputs = model.build_inputs(batch, with_answer=True)
    tok = model.llm_tokenizer
    speech, n_speech = model.speech_embeddings(batch)
    assert inputs.embeds.shape[-1] == model.llm.config.hidden_size
    for i in range(len(batch)):
        cols = inputs.columns[i]
        keys = ", ".join(["Transcript"] + [c.capitalize() for c in cols])
        pre = 1 + len(tok(model.prompt["pre"].replace("{keys}", keys), add_special_tokens=False)["input_ids"])
        post = len(tok(model.prompt["post"], add_special_tokens=False)["input_ids"])
        answer = tok(format_answer(batch.texts[i], batch.attributes[i], cols),
                     add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        prefix = pre + int(n_speech[i]) + post
        row = inputs.labels[i]
        length = int(inputs.attention_mask[i].sum())
        assert (row[:prefix] == IGNORE).all()                           # prompt + speech
        assert row[prefix:length].tolist() == answer                    # answer + eos
        assert (row[length:] == IGNORE).all()                           # padding
        assert inputs.attention_mask[i, :length].all() and not inputs.attention_mask[i, length:].any()
        # the speech embeddings sit between the prompts, unchanged
        torch.testing.assert_close(inputs.embeds[i, pre:pre + int(n_speech[i])],
                                   speech[i, :int(n_speech[i])])
    assert inputs.columns == [["gender", "age"], ["gender"]]
    assert '"Gender":"female"' in format_answer(batch.texts[1], batch.attributes[1], ["gender"])


def test_loss_is_cross_entropy_on_answer_tokens_only(model: SpeechLLM) -> None:
    batch = synthetic_batch()
    with torch.no_grad():
        loss = model.loss(batch)
        inputs = model.build_inputs(batch, with_answer=True)
        logits = model.llm(inputs_embeds=inputs.embeds, attention_mask=inputs.attention_mask).logits
        answer_only = F.cross_entropy(logits[:, :-1].flatten(0, 1), inputs.labels[:, 1:].flatten(),
                                      ignore_index=IGNORE)
        # if prompt positions had targets (their next token), the loss would differ
        changed = inputs.labels.clone()
        prompt_pos = (changed == IGNORE) & inputs.attention_mask.bool()
        changed[prompt_pos] = 3
        with_prompt = F.cross_entropy(logits[:, :-1].flatten(0, 1), changed[:, 1:].flatten(),
                                      ignore_index=IGNORE)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, answer_only, rtol=1e-5, atol=1e-5)
    assert abs(float(with_prompt) - float(loss)) > 1e-3


def test_loss_ignores_padding_and_batch_company(model: SpeechLLM) -> None:
    """A padded batch's loss = the token-weighted mean of each utterance's own loss."""
    batch = synthetic_batch((24_000, 15_000))
    with torch.no_grad():
        joint = float(model.loss(batch))
        singles, weights = [], []
        for i in range(len(batch)):
            one = sub_batch(batch, i)
            singles.append(float(model.loss(one)))
            weights.append(int((model.build_inputs(one, True).labels != IGNORE).sum()))
    expected = sum(s * w for s, w in zip(singles, weights)) / sum(weights)
    assert joint == pytest.approx(expected, rel=1e-4)


def test_prompt_text_changes_inputs_not_targets(assets: dict[str, str]) -> None:
    batch = synthetic_batch()
    a = make_model(assets).eval()
    b = make_model(assets, prompt={"pre": "Listen: <speech>"}).eval()
    la, lb = a.build_inputs(batch, True).labels, b.build_inputs(batch, True).labels
    assert la.shape[1] != lb.shape[1]
    for i in range(len(batch)):
        assert la[i][la[i] != IGNORE].tolist() == lb[i][lb[i] != IGNORE].tolist()
    with pytest.raises(ValueError, match="unknown prompt part"):
        make_model(assets, prompt={"system": "x"})


# ---------------------------------------------------------------------------------- predict

def test_predict_returns_predictions_and_batching_does_not_change_them(model: SpeechLLM) -> None:
    batch = synthetic_batch((24_000, 15_000, 9_000))
    preds = model.predict(batch)
    assert len(preds) == 3 and all(isinstance(p, Prediction) for p in preds)
    assert [sorted(p.attributes) for p in preds] == [["age", "gender"], ["gender"], []]
    assert all(isinstance(p.parsed, bool) and isinstance(p.text, str) for p in preds)
    joint, _ = model.generate_answers(batch)
    alone = [model.generate_answers(sub_batch(batch, i))[0][0] for i in range(len(batch))]
    assert joint == alone                       # left padding: same greedy answers as unbatched


def test_explicit_attribute_list_is_asked_at_prediction(assets: dict[str, str]) -> None:
    m = make_model(assets, attributes=["emotion"]).eval()
    batch = synthetic_batch()
    assert m.build_inputs(batch, True).columns == [[], []]          # no emotion labels to train on
    preds = m.predict(batch)
    assert len(preds) == 2 and all(set(p.attributes) == {"emotion"} for p in preds)
    with pytest.raises(ValueError, match="unknown attributes"):
        make_model(assets, attributes=["mood"])


# --------------------------------------------------------------------------- exchanged tensors

def test_only_lora_and_connector_are_exchanged(model: SpeechLLM) -> None:
    names = model.trainable_names()
    lora = [n for n in names if ".lora_A." in n or ".lora_B." in n]
    conn = [n for n in names if n.startswith("connector.")]
    assert names and sorted(names) == sorted(lora + conn)
    layers = model.llm.config.num_hidden_layers
    assert len(lora) == 2 * 2 * layers            # A and B for q_proj and v_proj in every layer
    assert conn == ["connector.proj.weight", "connector.proj.bias"]
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any(n.startswith("encoder.") for n in frozen) and any("embed_tokens" in n for n in frozen)
    record = to_record(model)
    counts = model.parameter_counts()
    header = record_nbytes(record) - counts["exchanged_bytes"]     # one .npy header per tensor
    assert 0 < header <= 256 * len(names)
    assert counts["exchanged"] == counts["connector"] + counts["lora"] < counts["total"]
    load_record(model, record)                    # the same names load back


def test_finetuned_encoder_travels_without_its_cnn(assets: dict[str, str]) -> None:
    m = make_model(assets, finetune_encoder=True)
    names = m.trainable_names()
    assert any(n.startswith("encoder.model.encoder.") for n in names)
    assert not any(n.startswith("encoder.model.feature_extractor.") for n in names)
    groups = m.param_groups(1e-3, 0.0)
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-4)]
    m.train()
    assert m.encoder.training                     # a trained encoder is not held in eval mode


def test_bfloat16_keeps_exchanged_tensors_float32(assets: dict[str, str]) -> None:
    m = make_model(assets, torch_dtype="bfloat16").eval()
    params = dict(m.named_parameters())
    assert params["llm.base_model.model.model.embed_tokens.weight"].dtype == torch.bfloat16
    assert all(params[n].dtype == torch.float32 for n in m.trainable_names())
    with torch.no_grad():
        assert torch.isfinite(m.loss(synthetic_batch()))
    overhead = record_nbytes(to_record(m)) - m.parameter_counts()["exchanged_bytes"]
    assert 0 < overhead <= 256 * len(m.trainable_names())      # float32 data + .npy headers


def test_hydra_config_builds_the_model(assets: dict[str, str]) -> None:
    with initialize_config_dir(config_dir=str(REPO / "conf" / "model"), version_base=None):
        cfg = compose(config_name="speechllm", overrides=[
            f"encoder={assets['encoder']}", f"llm={assets['llm']}", "local_files_only=true",
            "connector.kind=cnn", "connector.pool=4", "lora.r=4"])
    m = build_model(cfg, CharTokenizer())
    assert isinstance(m, SpeechLLM) and m.connector.kind == "cnn" and m.connector.pool == 4
    assert m.llm.peft_config["default"].r == 4
    assert "{keys}" in m.prompt["pre"] and m.prompt["post"].startswith("</speech>\n")


# ---------------------------------------------------------------------------------- training

def libri_rows() -> pd.DataFrame:
    if not LIBRI.exists():
        pytest.skip(f"sample LibriSpeech audio not found under {LIBRI}")
    rows = []
    for utt, chapter, text in UTTS:
        path = LIBRI / chapter / f"{utt}.flac"
        rows.append({"id": utt, "audio": str(path), "start": 0.0, "end": float("nan"),
                     "duration": len(load_audio(str(path))) / 16_000, "speaker": "1089", "text": text,
                     "split": "train", "gender": "male"})
    return pd.DataFrame(rows)


def test_train_local_reduces_loss_on_repeated_batch(assets: dict[str, str]) -> None:
    rows = libri_rows()
    m = make_model(assets, seed=1)
    device = torch.device("cpu")
    loader = UtteranceLoader(rows, AudioCache(64), batch_seconds=60.0, shuffle=False)
    assert len(loader) == 1
    before = evaluate(m, loader, device)
    stats = train_local(m, loader, device, lr=1e-2, epochs=10, grad_clip=1.0)
    after = evaluate(m, loader, device)
    assert stats.steps == 10 and stats.num_examples == 20
    assert after.loss < 0.7 * before.loss, (before.loss, after.loss)
    records = pd.DataFrame(after.records)
    assert {"hyp", "parsed", "pred_gender", "true_gender"} <= set(records.columns)
    acc = attribute_accuracy(records)
    assert set(acc) == {"acc_gender", "unparsed"} and 0.0 <= acc["unparsed"] <= 1.0
    json.dumps(after.records)                    # records stay plain values


# ---------------------------------------------------------------------------------- federation

def test_strategy_config_decays_client_lr_by_steps() -> None:
    from fedspeech.federation.strategies import SpeechFedAvg, build_strategy

    cfg = compose_config(["model=speechllm", "strategy=speechllm_fedavg"])
    assert cfg.model.name == "speechllm" and cfg.strategy.name == "speechllm_fedavg"
    strategy = build_strategy(cfg.strategy, population=10, seed=0)
    assert isinstance(strategy, SpeechFedAvg)
    lr = strategy.client_lr
    max_lr, gamma, every = (cfg.strategy.client_lr[k] for k in ("value", "gamma", "every"))
    assert [lr(r) for r in (1, every, every + 1, 2 * every + 1)] == pytest.approx(
        [max_lr, max_lr, max_lr * gamma, max_lr * gamma ** 2])


@pytest.mark.slow
def test_two_federated_rounds_through_main(assets: dict[str, str], tiny_data: Path,
                                           tmp_path: Path) -> None:
    """`python -m fedspeech.main model=speechllm strategy=speechllm_fedavg` on the tiny corpus."""
    from conftest import TINY_CORPUS, read_history, run_module

    run_dir = tmp_path / "run"
    proc = run_module(
        "fedspeech.main", f"paths.data={tiny_data}", *TINY_CORPUS,
        "model=speechllm", f"model.encoder={assets['encoder']}", f"model.llm={assets['llm']}",
        "model.local_files_only=true", "model.max_new_tokens=16", "strategy=speechllm_fedavg",
        "strategy.client_lr.value=1e-2", "num_rounds=2", "strategy.num_train_nodes=2",
        "train.batch_seconds=30", "train.max_steps=2", "eval.batch_seconds=60", "eval.every=1",
        "client_resources.num_cpus=1", f"hydra.run.dir={run_dir}")
    assert "[round 2/2]" in proc.stdout
    history = read_history(run_dir)
    assert [h["round"] for h in history] == [0, 1, 2]
    m = make_model(assets)
    exchanged = m.parameter_counts()["exchanged_bytes"]
    for h in history[1:]:
        assert h["clients_sampled"] == 2 and h["clients_replied"] == 2
        assert h["train_seconds"] > 0 and math.isfinite(h["loss"])
        # two clients, each receiving the LoRA + connector tensors (float32 data + .npy headers)
        assert 2 * exchanged < h["bytes_down"] < 2 * exchanged + 2 * 256 * len(m.trainable_names())
        assert h["bytes_up"] == h["bytes_down"]
        assert "acc_gender" in h and "unparsed" in h
