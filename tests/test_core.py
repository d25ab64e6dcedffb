"""Units of the core loop: tokenizer, batching, checkpoints, model overrides (config errors: test_config)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fedspeech.config import compose_config
from fedspeech.data.batching import duration_batches, real_fraction
from fedspeech.data.text import CharTokenizer, normalize_text
from fedspeech.models.factory import build_model


def test_normalize_and_tokenizer_round_trip():
    assert normalize_text("Hello, World!  It’s  FINE.") == "hello world it's fine"
    tok = CharTokenizer.from_texts(["hello world it's fine"])
    ids = tok.encode("hello world")
    assert tok.decode(ids) == "hello world"
    # CTC collapse: repeats merge, blanks separate genuine doubles
    h, e, l, o = (tok.encode(c)[0] for c in "helo")
    assert tok.decode_ctc([h, h, 0, e, l, 0, l, l, o, 0]) == "hello"


def test_duration_batches_respect_padded_budget_and_keep_everything():
    rng = np.random.default_rng(0)
    durations = rng.uniform(0.5, 12.0, size=300)
    batches = duration_batches(durations, batch_seconds=20.0, shuffle=True, seed=1)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(300))
    for b in batches:
        assert len(b) == 1 or durations[b].max() * len(b) <= 20.0
    assert real_fraction(durations, batches) > 0.8          # bucketing keeps padding low
    unsorted = duration_batches(durations, batch_seconds=20.0, shuffle=True, seed=1, bucket_size=1)
    assert real_fraction(durations, unsorted) == 1.0         # one utterance per batch: no padding
    assert batches != duration_batches(durations, 20.0, shuffle=True, seed=2)
    assert batches == duration_batches(durations, 20.0, shuffle=True, seed=1)


def test_model_overrides_reach_the_model():
    tok = CharTokenizer("abc")
    sizes = []
    for hidden in (64, 128):
        cfg = compose_config([f"model.hidden_size={hidden}"])
        model = build_model(cfg.model, tok)
        assert model.rnn.hidden_size == hidden
        sizes.append(sum(p.numel() for p in model.parameters()))
    assert sizes[1] > sizes[0]


def test_tiny_model_loss_and_decode_shapes():
    from fedspeech.data.batching import Batch
    from fedspeech.models.tiny import TinyCTC
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz'")
    model = TinyCTC(tok, hidden_size=16, num_layers=1, conv_channels=4)
    audio = torch.randn(2, 16000)
    batch = Batch(ids=["a", "b"], speakers=["s", "s"], texts=["ab", "c"], audio=audio,
                  audio_lens=torch.tensor([16000, 8000]))
    loss = model.loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    preds = model.eval().predict(batch)
    assert len(preds) == 2 and all(isinstance(p.text, str) for p in preds)


def test_paper_held_out_set_as_evaluation_split(tmp_path):
    """eval.split=ted_train_full5 evaluates on the map's held-out utterances of the manifest."""
    import pandas as pd
    from omegaconf import OmegaConf

    from conftest import SHARED_DATA
    from fedspeech.data.audio import AudioCache
    from fedspeech.data.partition import paper_eval_ids
    from fedspeech.experiment_data import ExperimentData
    from fedspeech.federation.evaluation import evaluation_rows

    map_path = SHARED_DATA / "tedlium3_paper_clients" / "all_clients.csv.gz"
    if not map_path.is_file():
        pytest.skip(f"published map not found at {map_path}")
    held_out = paper_eval_ids(map_path, "ted_train_full5", 3)
    ids = held_out[:4] + ["OtherTalk_2000_1.00_2.00"]
    manifest = pd.DataFrame({"id": ids, "audio": "x.sph", "start": 0.0, "end": 1.0, "duration": 1.0,
                             "speaker": [i.rsplit("_", 2)[0] for i in ids], "text": "a", "split": "train"})
    data = ExperimentData(manifest=manifest, clients=pd.DataFrame({"id": ids, "client": 0}),
                          tokenizer=CharTokenizer("a"), audio_cache=AudioCache(1))
    cfg = OmegaConf.create({"eval": {"split": "ted_train_full5", "max_utterances": None},
                            "partitioner": {"name": "tedlium_paper", "map_path": str(map_path),
                                            "num_clients": 3}})
    assert sorted(evaluation_rows(cfg, data)["id"]) == sorted(held_out[:4])
    cfg.partitioner.name = "speaker"
    with pytest.raises(ValueError, match="tedlium_paper"):
        evaluation_rows(cfg, data)
