"""Speed perturbation of training batches, and seeded blocks that leave the caller's RNG alone."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedspeech.augment import SpeedPerturbation
from fedspeech.config import compose_config
from fedspeech.data.audio import SAMPLE_RATE, AudioCache
from fedspeech.data.batching import Batch, UtteranceLoader
from fedspeech.data.text import CharTokenizer
from fedspeech.models.factory import build_model, cached_model
from fedspeech.training import train_local
from real_librispeech import shortest_rows


def tone_batch(hz: float = 440.0, seconds: tuple[float, ...] = (1.0, 0.5)) -> Batch:
    n = [int(s * SAMPLE_RATE) for s in seconds]
    audio = torch.zeros(len(n), max(n))
    for i, k in enumerate(n):
        audio[i, :k] = torch.sin(2 * math.pi * hz * torch.arange(k) / SAMPLE_RATE)
    return Batch(ids=[str(i) for i in range(len(n))], speakers=["s"] * len(n), texts=["a"] * len(n),
                 audio=audio, audio_lens=torch.tensor(n))


def peak_hz(samples: torch.Tensor) -> float:
    spectrum = np.abs(np.fft.rfft(samples.numpy()))
    return float(np.argmax(spectrum) * SAMPLE_RATE / len(samples))


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_changes_duration_and_pitch_by_the_factor(factor):
    batch = tone_batch()
    out = SpeedPerturbation([factor], seed=0)(batch)
    expected = [math.ceil(int(n) / factor) for n in batch.audio_lens]
    assert out.audio_lens.tolist() == pytest.approx(expected, abs=1)
    assert out.audio.shape[1] >= int(out.audio_lens.max())
    first = out.audio[0, : int(out.audio_lens[0])]
    assert peak_hz(first) == pytest.approx(440.0 * factor, rel=0.01)
    assert out.ids == batch.ids and out.texts == batch.texts


def test_draws_are_seeded_and_leave_the_global_rng_alone():
    def lengths(seed: int) -> list[int]:
        perturb = SpeedPerturbation([0.9, 1.0, 1.1], seed=seed)
        return [int(perturb(tone_batch()).audio_lens[0]) for _ in range(12)]

    state = torch.get_rng_state()
    first = lengths(1)
    assert torch.equal(torch.get_rng_state(), state)
    assert first == lengths(1) and len(set(first)) == 3 and first != lengths(2)
    assert SpeedPerturbation([1.0], seed=0)(batch := tone_batch()) is batch
    with pytest.raises(ValueError, match="speed factors"):
        SpeedPerturbation([], seed=0)


def test_train_local_with_speed_perturbation_on_real_audio():
    rows = shortest_rows(2)
    tok = CharTokenizer.from_texts(rows["text"])
    cfg = compose_config(["model.hidden_size=16", "model.num_layers=1", "model.conv_channels=4"])
    model = build_model(cfg.model, tok, seed=0)
    loader = UtteranceLoader(rows, AudioCache(64), batch_seconds=60.0, shuffle=True, seed=3)
    stats = train_local(model, loader, torch.device("cpu"), lr=1e-3, epochs=2,
                        speed_perturb=[0.9, 1.1])
    assert stats.steps == 2 and math.isfinite(stats.loss)
    assert stats.num_seconds == pytest.approx(2 * rows["duration"].sum(), rel=1e-3)   # unperturbed


def test_models_are_built_from_their_seed_without_touching_the_callers_rng():
    cfg = compose_config(["model.hidden_size=16", "model.num_layers=1", "model.conv_channels=4"])
    tok = CharTokenizer("abc")
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = build_model(cfg.model, tok, seed=7)
    b = cached_model(cfg.model, tok, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    c = build_model(cfg.model, tok, seed=8)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))
