"""The embedded eSpeak corpus: grammar, binding, layout, determinism, cache and the reader path."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("espeakng_loader", reason="the synthetic corpus needs espeakng-loader")

from fedspeech.data.corpora import espeak, sentences, synthetic  # noqa: E402
from fedspeech.data.text import normalize_text  # noqa: E402

# 3 training speakers + 2 unseen, 3 sentences each where it matters.
TINY = dict(num_train_speakers=3, num_unseen_speakers=2, train_sentences=3, dev_sentences=1,
            test_sentences=2, unseen_sentences=2, seed=0)
N_UTTS = 3 * (3 + 1 + 2) + 2 * 2


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory) -> Path:
    return synthetic.synthesize_corpus(tmp_path_factory.mktemp("synth") / "corpus", **TINY)


def _audio_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.flac"))


# --------------------------------------------------------------------------- sentences
def test_sentences_are_scoring_form_distinct_and_seeded():
    sents = sentences.generate_sentences(1500, seed=3)
    assert len(set(sents)) == 1500
    assert sents == sentences.generate_sentences(1500, seed=3)
    assert sents[:50] != sentences.generate_sentences(50, seed=4)
    vocab = sentences.vocabulary()
    assert 250 <= len(vocab) <= 400
    words = {w for s in sents for w in s.split()}
    assert words <= vocab
    assert len(words) > 0.95 * len(vocab)  # the vocabulary is actually used
    for s in sents:
        assert normalize_text(s) == s
        assert re.fullmatch(r"[a-z']+( [a-z']+)*", s), s
    assert sentences.spoken_form("how many cups did anna fill").endswith("?")
    assert sentences.spoken_form("anna filled the cup").endswith(".")


def test_negative_sentence_count_raises():
    with pytest.raises(ValueError, match="n must be"):
        sentences.generate_sentences(-1)


# --------------------------------------------------------------------------- eSpeak binding
def test_espeak_synthesis_is_deterministic_and_validated():
    text = "the old farmer carried the heavy basket across the bridge."
    a = espeak.synthesize(text, "en-gb-scotland", "f3", rate=160, pitch=40, noise_seed=1)
    b = espeak.synthesize(text, "en-us", "m2")  # an unrelated call in between
    c = espeak.synthesize(text, "en-gb-scotland", "f3", rate=160, pitch=40, noise_seed=1)
    assert a.dtype == np.int16 and 1.5 < len(a) / espeak.SAMPLE_RATE < 8
    np.testing.assert_array_equal(a, c)
    assert not np.array_equal(a[: len(b)], b[: len(a)])
    assert np.abs(a.astype(np.int32)).max() > 3000  # speech, not silence
    faster = espeak.synthesize(text, "en-gb-scotland", "f3", rate=300, pitch=40, noise_seed=1)
    assert len(faster) < 0.75 * len(a)


@pytest.mark.parametrize("voice, variant, match", [
    ("en-usa", "m1", "unknown eSpeak voice 'en-usa'"),
    ("en-us", "m9", "unknown eSpeak variant 'm9'"),
    ("en-us", "F1", "unknown eSpeak variant 'F1'"),
])
def test_bad_voice_or_variant_raises(voice, variant, match):
    with pytest.raises(ValueError, match=match):
        espeak.synthesize("hello there", voice, variant)


def test_bad_parameter_raises():
    with pytest.raises(ValueError, match="rate=20"):
        espeak.synthesize("hello there", "en-us", "m1", rate=20)


def test_english_voices_and_variants_exist():
    names = espeak.engine().voice_names("en")
    assert set(synthetic.ACCENTS) <= set(names)
    variants = espeak.variant_names()
    assert set(synthetic.MALE_VARIANTS + synthetic.FEMALE_VARIANTS) <= set(variants)
    assert {espeak.variant_gender(v) for v in synthetic.MALE_VARIANTS} == {"M"}
    assert {espeak.variant_gender(v) for v in synthetic.FEMALE_VARIANTS} == {"F"}


# --------------------------------------------------------------------------- speakers and plan
def test_speakers_follow_the_seed():
    a = synthetic.choose_speakers(18, 6, seed=0)
    assert a == synthetic.choose_speakers(18, 6, seed=0)
    b = synthetic.choose_speakers(18, 6, seed=1)
    assert [(s.voice, s.variant, s.pitch, s.rate) for s in a] != \
           [(s.voice, s.variant, s.pitch, s.rate) for s in b]
    pairs = [(s.voice, s.variant) for s in a]
    assert len(set(pairs)) == len(pairs)  # unseen speakers are new voice/variant pairs
    assert {s.voice for s in a} == set(synthetic.ACCENTS)
    assert sum(s.gender == "female" for s in a) == 12
    assert all(synthetic.RATE_WPM[0] <= s.rate <= synthetic.RATE_WPM[1] for s in a)
    assert [s.seen for s in a] == [True] * 18 + [False] * 6
    with pytest.raises(ValueError, match="distinct eSpeak"):
        synthetic.choose_speakers(90, 10, seed=0)


def test_held_out_sentences_never_in_train():
    params = synthetic._parameters(4, 2, 20, 3, 4, 5, seed=0)
    plan = synthetic.plan_utterances(synthetic.choose_speakers(4, 2, seed=0), params)
    train = [u.text for u in plan if u.subset == "train-synthetic"]
    held = [u.text for u in plan if u.subset != "train-synthetic"]
    assert len(train) == 4 * 20 and len(held) == 4 * (3 + 4) + 2 * 5
    assert not set(train) & set(held)
    assert len(set(held)) == len(held)
    for spk in {u.speaker for u in plan}:
        mine = [u.text for u in plan if u.speaker == spk and u.subset == "train-synthetic"]
        assert len(set(mine)) == len(mine)


# --------------------------------------------------------------------------- corpus on disk
def test_layout(corpus_root: Path):
    meta = json.loads((corpus_root / "corpus.json").read_text())
    assert meta["parameters"] == TINY
    files = _audio_files(corpus_root)
    assert len(files) == N_UTTS
    for subset in synthetic.SUBSETS.values():
        assert (corpus_root / subset).is_dir()
    for path in files:
        spk, chap, _ = path.stem.split("-")
        assert path.parent == corpus_root / path.parts[-4] / spk / chap
        samples, rate = sf.read(path)
        assert rate == 16000 and samples.ndim == 1 and 1.0 < len(samples) / rate < 8.0
        # speech starts and ends in the file: short silences, nothing cut mid-sound
        assert np.abs(samples[: rate // 100]).max() < 0.01
        assert np.abs(samples[-rate // 20:]).max() < 0.01
        assert np.abs(samples).max() > 0.1
    trans = sorted(corpus_root.rglob("*.trans.txt"))
    assert len(trans) == 3 * 3 + 2  # seen: train/dev/test chapters; unseen: test only
    lines = [line for t in trans for line in t.read_text().splitlines()]
    assert len(lines) == N_UTTS
    for line in lines:
        utt, text = line.split(" ", 1)
        assert re.fullmatch(r"\d{4}-\d{3}-\d{4}", utt)
        assert text == text.upper() and re.fullmatch(r"[A-Z']+( [A-Z']+)*", text)
    speakers = [line.split("|") for line in (corpus_root / "SPEAKERS.TXT").read_text().splitlines()
                if not line.startswith(";")]
    assert len(speakers) == 5
    by_id = {f[0].strip(): [x.strip() for x in f] for f in speakers}
    for spk in meta["speakers"]:
        row = by_id[spk["id"]]
        assert row[1] == spk["gender"][0].upper()
        assert row[2] == ("train-synthetic" if spk["seen"] else "test-synthetic")
        assert float(row[3]) > 0
        assert row[4].startswith(f"{spk['voice']}+{spk['variant']} ")


def test_same_seed_same_audio(corpus_root: Path, tmp_path: Path):
    again = synthetic.synthesize_corpus(tmp_path / "again", **TINY)
    first, second = _audio_files(corpus_root), _audio_files(again)
    assert [p.relative_to(corpus_root) for p in first] == [p.relative_to(again) for p in second]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(sf.read(a, dtype="int16")[0], sf.read(b, dtype="int16")[0])
    assert (corpus_root / "SPEAKERS.TXT").read_text() == (again / "SPEAKERS.TXT").read_text()


def test_cache_second_call_does_not_rewrite(corpus_root: Path):
    before = {p: p.stat().st_mtime_ns for p in corpus_root.rglob("*") if p.is_file()}
    assert synthetic.synthesize_corpus(corpus_root, **TINY) == corpus_root
    after = {p: p.stat().st_mtime_ns for p in corpus_root.rglob("*") if p.is_file()}
    assert before == after


def test_other_parameters_raise(corpus_root: Path):
    with pytest.raises(synthetic.CorpusMismatchError, match="seed: on disk 0, requested 1.*delete"):
        synthetic.synthesize_corpus(corpus_root, **{**TINY, "seed": 1})


def test_interrupted_build_is_redone(tmp_path: Path):
    small = dict(TINY, num_train_speakers=1, num_unseen_speakers=0, train_sentences=2,
                 dev_sentences=1, test_sentences=1)
    root = synthetic.synthesize_corpus(tmp_path / "c", **small)
    reference = {p.relative_to(root): sf.read(p, dtype="int16")[0] for p in _audio_files(root)}
    # Simulate an interruption: corpus.json (written last) missing, one file cut short.
    (root / "corpus.json").unlink()
    victim = _audio_files(root)[0]
    victim.write_bytes(victim.read_bytes()[:200])
    (root / "train-synthetic" / "stray.txt").write_text("left over")
    synthetic.synthesize_corpus(root, **small)
    assert (root / "corpus.json").is_file()
    assert not (root / "train-synthetic" / "stray.txt").exists()
    rebuilt = {p.relative_to(root): sf.read(p, dtype="int16")[0] for p in _audio_files(root)}
    assert rebuilt.keys() == reference.keys()
    for key, samples in reference.items():
        np.testing.assert_array_equal(rebuilt[key], samples)


def test_synthesize_and_read_rows_and_unseen_speakers_only_in_test(corpus_root: Path):
    rows = synthetic.synthesize_and_read(corpus_root, **TINY)
    assert not rows.rejected
    assert len(rows.rows) == N_UTTS
    meta = {s["id"]: s for s in json.loads((corpus_root / "corpus.json").read_text())["speakers"]}
    splits: dict[str, set[str]] = {}
    for row in rows.rows:
        spk = meta[row["speaker"]]
        assert row["accent"] == spk["voice"] and row["gender"] == spk["gender"]
        assert row["text"] == normalize_text(row["text"]) and row["duration"] > 1.0
        assert Path(row["audio"]).is_absolute() and Path(row["audio"]).is_file()
        splits.setdefault(row["speaker"], set()).add(row["split"])
    for spk, seen_in in splits.items():
        assert seen_in == ({"train", "dev", "test"} if meta[spk]["seen"] else {"test"}), spk
    train_text = {r["text"] for r in rows.rows if r["split"] == "train"}
    assert not train_text & {r["text"] for r in rows.rows if r["split"] != "train"}
