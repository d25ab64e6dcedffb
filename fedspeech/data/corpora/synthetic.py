"""The embedded default corpus: eSpeak NG voices reading grammar sentences, in LibriSpeech layout.

It lets every part of fedspeech run end to end with no download: a "speaker" is a fixed eSpeak
voice (an English accent) + variant (voice quality) + pitch + speaking rate, all drawn from the
seed. Training speakers read their training sentences in `train-synthetic` and a few held-out
sentences each (never read in training) in `dev-synthetic` and `test-synthetic`; unseen speakers
(voice/variant pairs never heard in training) appear only in `test-synthetic`.

Layout, as LibriSpeech ships it, so the LibriSpeech reader reads it unchanged:
`<root>/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<nnnn>.flac` (16 kHz),
`<speaker>-<chapter>.trans.txt` (upper case), `<root>/SPEAKERS.TXT`, plus `<root>/corpus.json`
with the generation parameters. `corpus.json` is written last: a corpus without it is an
interrupted one and is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from fedspeech.data.corpora import espeak
from fedspeech.data.corpora.sentences import generate_sentences, spoken_form
from fedspeech.data.manifest import CorpusRows
from fedspeech.files import atomic_write_text

FORMAT_VERSION = 1
SAMPLE_RATE = 16000
SUBSETS = {"train": "train-synthetic", "dev": "dev-synthetic", "test": "test-synthetic"}
CHAPTERS = {"train": "100", "dev": "200", "test": "300"}
SEEN_ID_BASE, UNSEEN_ID_BASE = 1001, 2001  # 1xxx = training speakers, 2xxx = test-only speakers
# English accents eSpeak NG ships (en-shaw is an alphabet, not an accent).
ACCENTS = ("en-us", "en", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd", "en-us-nyc")
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5")
# eSpeak's nominal rate (words/minute). The grammar's short words come out about 1.19x faster,
# so this gives clear read speech at about 150-172 words per minute (eSpeak's default is 175).
RATE_WPM = (125, 145)
PITCH = (35, 65)  # 0..100 around the variant's own pitch (50)
PITCH_RANGE = (35, 75)  # intonation range, 0..100 (50 = the variant's own)
HEAD_SECONDS = 0.05  # silence added before the first sample (eSpeak may start on a sound)
TAIL_SECONDS = 0.1  # silence kept after the last sound (eSpeak's final pause is ~0.3-0.5 s)
SILENCE_LEVEL = 100  # |sample| below this (int16, about -50 dBFS) counts as silence
TRAIN_READINGS = 3  # each training sentence is read by about this many training speakers


class CorpusMismatchError(ValueError):
    """`root` holds a synthetic corpus generated with other parameters."""


@dataclass(frozen=True)
class Speaker:
    id: str
    voice: str  # eSpeak voice = accent
    variant: str
    gender: str  # "female" / "male", from the variant file
    pitch: int
    pitch_range: int
    rate: int
    seen: bool  # True: in train, dev and test; False: test only

    @property
    def name(self) -> str:
        return f"{self.voice}+{self.variant} pitch {self.pitch} range {self.pitch_range} rate {self.rate}"


@dataclass(frozen=True)
class Utterance:
    id: str
    speaker: str
    subset: str
    chapter: str
    text: str


def _parameters(num_train_speakers: int, num_unseen_speakers: int, train_sentences: int,
                dev_sentences: int, test_sentences: int, unseen_sentences: int, seed: int) -> dict:
    params = dict(num_train_speakers=num_train_speakers, num_unseen_speakers=num_unseen_speakers,
                  train_sentences=train_sentences, dev_sentences=dev_sentences,
                  test_sentences=test_sentences, unseen_sentences=unseen_sentences, seed=seed)
    for key, value in params.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{key} must be an int, got {value!r}")
        if key != "seed" and value < 0:
            raise ValueError(f"{key} must be >= 0, got {value}")
    if num_train_speakers < 1 or train_sentences < 1:
        raise ValueError("a corpus needs at least one training speaker with one training sentence")
    if num_unseen_speakers and not unseen_sentences:
        raise ValueError("num_unseen_speakers > 0 needs unseen_sentences > 0")
    return params


def _generator_settings() -> dict:
    """Everything besides the parameters that shapes the audio; part of the cache key."""
    return dict(format_version=FORMAT_VERSION, sample_rate=SAMPLE_RATE, head_seconds=HEAD_SECONDS,
                tail_seconds=TAIL_SECONDS, silence_level=SILENCE_LEVEL, accents=list(ACCENTS),
                male_variants=list(MALE_VARIANTS), female_variants=list(FEMALE_VARIANTS),
                rate_wpm=list(RATE_WPM), pitch=list(PITCH), pitch_range=list(PITCH_RANGE),
                train_readings=TRAIN_READINGS, espeak_version=espeak.engine().version)


def choose_speakers(num_train: int, num_unseen: int, seed: int) -> list[Speaker]:
    """Distinct (accent, variant) pairs, accents and genders balanced, the rest drawn from the seed.

    Speakers are dealt round-robin from shuffled accent and variant lists (alternating male and
    female variants), so any prefix covers accents and genders evenly; the last `num_unseen`
    become test-only speakers whose voice/variant pairs never occur in training.
    """
    total = num_train + num_unseen
    capacity = len(ACCENTS) * (len(MALE_VARIANTS) + len(FEMALE_VARIANTS))
    if total > capacity:
        raise ValueError(f"{total} speakers requested but only {capacity} distinct eSpeak "
                         f"accent/variant pairs are configured")
    engine = espeak.engine()
    for voice in ACCENTS:
        engine.check_voice(voice)
    rng = random.Random(f"speakers-{seed}")
    sources = {"accent": ACCENTS, "m": MALE_VARIANTS, "f": FEMALE_VARIANTS}
    decks: dict[str, list[str]] = {key: [] for key in sources}

    def deal(key: str, accept=lambda item: True) -> str | None:  # noqa: ANN001
        """Next item of a shuffled deck that `accept`s it (reshuffled when empty)."""
        for _ in range(2):
            if not decks[key]:
                decks[key] = rng.sample(sources[key], len(sources[key]))
            for i, item in enumerate(decks[key]):
                if accept(item):
                    return decks[key].pop(i)
            decks[key] = []
        return None

    used: set[tuple[str, str]] = set()
    genders = rng.sample(["m", "f"], 2)
    speakers: list[Speaker] = []
    for k in range(total):
        accent = deal("accent")
        variant = None
        for gender_key in (genders[k % 2], genders[1 - k % 2]):
            variant = deal(gender_key, lambda v: (accent, v) not in used)
            if variant is not None:
                break
        assert variant is not None  # each accent is dealt at most len(variants) times
        used.add((accent, variant))
        seen = k < num_train
        speakers.append(Speaker(
            id=str((SEEN_ID_BASE + k) if seen else (UNSEEN_ID_BASE + k - num_train)),
            voice=accent, variant=variant,
            gender={"F": "female", "M": "male"}[espeak.variant_gender(variant)],
            pitch=rng.randint(*PITCH), pitch_range=rng.randint(*PITCH_RANGE),
            rate=rng.randint(*RATE_WPM), seen=seen))
    return speakers


def plan_utterances(speakers: list[Speaker], params: dict) -> list[Utterance]:
    """Who reads what. Dev and test sentences are all distinct and never occur in training."""
    seen = [s for s in speakers if s.seen]
    unseen = [s for s in speakers if not s.seen]
    n_train_total = len(seen) * params["train_sentences"]
    pool_size = max(params["train_sentences"], math.ceil(n_train_total / TRAIN_READINGS))
    n_dev = len(seen) * params["dev_sentences"]
    n_test = len(seen) * params["test_sentences"] + len(unseen) * params["unseen_sentences"]
    texts = generate_sentences(pool_size + n_dev + n_test, params["seed"])
    train_pool, held = texts[:pool_size], iter(texts[pool_size:])

    plan: list[Utterance] = []

    def add(speaker: Speaker, split: str, sentences: list[str]) -> None:
        chapter = CHAPTERS[split]
        for n, text in enumerate(sentences):
            plan.append(Utterance(f"{speaker.id}-{chapter}-{n:04d}", speaker.id, SUBSETS[split],
                                  chapter, text))

    for i, spk in enumerate(seen):
        # Contiguous windows at evenly spaced starts: every pool sentence is read
        # floor/ceil(TRAIN_READINGS) times, never twice by one speaker.
        start = (i * pool_size) // len(seen)
        add(spk, "train", [train_pool[(start + j) % pool_size] for j in range(params["train_sentences"])])
    for spk in seen:
        add(spk, "dev", [next(held) for _ in range(params["dev_sentences"])])
    for spk in seen:
        add(spk, "test", [next(held) for _ in range(params["test_sentences"])])
    for spk in unseen:
        add(spk, "test", [next(held) for _ in range(params["unseen_sentences"])])
    return plan


class _Resampler:
    """22.05 kHz int16 -> 16 kHz float32, the windowed-sinc kernel built once.

    Inputs are zero-padded to a multiple of 0.1 s and the output cut back to its exact length
    (the kernel pads with zeros anyway, so the samples are identical): the convolution backend
    caches a kernel per input shape, and one shape per utterance length grew memory by about
    0.25 MB per utterance.
    """

    BLOCK = espeak.SAMPLE_RATE // 10

    def __init__(self) -> None:
        self._resample = torchaudio.transforms.Resample(espeak.SAMPLE_RATE, SAMPLE_RATE)

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        n = len(samples)
        padded = np.zeros(-(-n // self.BLOCK) * self.BLOCK, dtype=np.float32)
        padded[:n] = samples.astype(np.float32) / 32768.0
        keep = math.ceil(n * SAMPLE_RATE / espeak.SAMPLE_RATE)
        with torch.inference_mode():
            out = self._resample(torch.from_numpy(padded).unsqueeze(0)).squeeze(0)[:keep]
            return out.clamp(-1.0, 1.0).numpy()


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Resampling one utterance is too small a job to share: extra threads only spin and, on a
    busy machine, make it ten times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _noise_seed(seed: int, utt_id: str) -> int:
    return zlib.crc32(f"{seed}/{utt_id}".encode()) & 0x7FFFFFFF


def frame_silence(samples: np.ndarray, rate: int = espeak.SAMPLE_RATE) -> np.ndarray:
    """`HEAD_SECONDS` of silence first; the sentence-final pause cut to `TAIL_SECONDS`."""
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) >= SILENCE_LEVEL)
    end = len(samples) if not len(loud) else min(len(samples), loud[-1] + 1 + int(TAIL_SECONDS * rate))
    return np.concatenate([np.zeros(int(HEAD_SECONDS * rate), dtype=samples.dtype), samples[:end]])


def synthesize_utterance(utt: Utterance, speaker: Speaker, seed: int,
                         resampler: _Resampler | None = None) -> np.ndarray:
    """One utterance as 16 kHz float32 samples (deterministic for the same arguments)."""
    raw = espeak.synthesize(spoken_form(utt.text), speaker.voice, speaker.variant,
                            rate=speaker.rate, pitch=speaker.pitch, pitch_range=speaker.pitch_range,
                            noise_seed=_noise_seed(seed, utt.id), end_pause=True)
    return (resampler or _Resampler())(frame_silence(raw))


def _speakers_txt(speakers: list[Speaker], minutes: dict[str, float]) -> str:
    lines = ["; Synthetic speakers: eSpeak NG voice+variant, pitch, range and rate (wpm) in NAME.",
             "; SUBSET is where the speaker's training audio is (test-only speakers: test-synthetic);",
             "; MINUTES is the audio in that subset.",
             ";ID  |SEX| SUBSET           |MINUTES| NAME"]
    for s in speakers:
        subset = SUBSETS["train" if s.seen else "test"]
        lines.append(f"{s.id:<5}| {s.gender[0].upper()} | {subset:<17}| {minutes[s.id]:5.2f} | {s.name}")
    return "\n".join(lines) + "\n"


def _plan_digest(speakers: list[Speaker], plan: list[Utterance]) -> str:
    """Fingerprint of who says what: a changed grammar or voice choice invalidates the cache."""
    text = json.dumps([[asdict(s) for s in speakers], [asdict(u) for u in plan]])
    return hashlib.sha1(text.encode()).hexdigest()


def _check_cached(root: Path, params: dict, settings: dict) -> bool:
    """True if `root` holds this exact corpus; raise if it holds another one."""
    meta_path = root / "corpus.json"
    if not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise CorpusMismatchError(f"{meta_path} is not valid JSON ({err}); delete {root} to "
                                  "regenerate the synthetic corpus") from err
    diffs = [f"{k}: on disk {meta.get(section, {}).get(k)!r}, requested {v!r}"
             for section, wanted in (("parameters", params), ("generator", settings))
             for k, v in wanted.items() if meta.get(section, {}).get(k) != v]
    if diffs:
        raise CorpusMismatchError(
            f"{root} holds a synthetic corpus generated with other settings ("
            + "; ".join(diffs) + f"). Choose another root (dataset.root=...) or delete {root}.")
    missing = [s for s in SUBSETS.values() if not (root / s).is_dir()]
    if missing:
        raise CorpusMismatchError(f"{root}/corpus.json exists but subsets {missing} are missing; "
                                  f"delete {root} to regenerate the synthetic corpus")
    return True


def _synthesize_all(root: Path, speakers: list[Speaker], per_speaker: dict[str, list[Utterance]],
                    seed: int) -> dict[str, dict[str, float]]:
    """Write every utterance and transcript; returns seconds of audio per speaker and subset."""
    resampler = _Resampler()
    seconds: dict[str, dict[str, float]] = {s.id: {} for s in speakers}
    for k, spk in enumerate(speakers, 1):
        t0 = time.perf_counter()
        transcripts: dict[Path, list[str]] = {}
        for utt in per_speaker[spk.id]:
            chapter_dir = root / utt.subset / spk.id / utt.chapter
            chapter_dir.mkdir(parents=True, exist_ok=True)
            audio = synthesize_utterance(utt, spk, seed, resampler)
            sf.write(chapter_dir / f"{utt.id}.flac", audio, SAMPLE_RATE, subtype="PCM_16")
            transcripts.setdefault(chapter_dir / f"{spk.id}-{utt.chapter}.trans.txt", []).append(
                f"{utt.id} {utt.text.upper()}")
            seconds[spk.id][utt.subset] = seconds[spk.id].get(utt.subset, 0.0) + len(audio) / SAMPLE_RATE
        for path, lines in transcripts.items():
            atomic_write_text(path, "\n".join(lines) + "\n")
        dt = time.perf_counter() - t0
        print(f"[synthetic] speaker {k}/{len(speakers)} {spk.id} ({spk.voice}+{spk.variant}, "
              f"{'seen' if spk.seen else 'unseen'}): {len(per_speaker[spk.id])} utts, "
              f"{sum(seconds[spk.id].values()) / 60:.1f} min, "
              f"{len(per_speaker[spk.id]) / max(dt, 1e-9):.0f} utt/s", flush=True)
    return seconds


def synthesize_corpus(root: str | Path, num_train_speakers: int = 18, num_unseen_speakers: int = 6,
                      train_sentences: int = 150, dev_sentences: int = 5, test_sentences: int = 10,
                      unseen_sentences: int = 25, seed: int = 0) -> Path:
    """Generate the corpus under `root` unless it is already there; returns `root`.

    A matching `corpus.json` means done (nothing is re-synthesised); a different one raises
    `CorpusMismatchError`; none means a fresh or interrupted build: our subset folders are
    removed and written again.
    """
    root = Path(root).expanduser().resolve()
    params = _parameters(num_train_speakers, num_unseen_speakers, train_sentences, dev_sentences,
                         test_sentences, unseen_sentences, seed)
    speakers = choose_speakers(num_train_speakers, num_unseen_speakers, seed)
    plan = plan_utterances(speakers, params)
    settings = {**_generator_settings(), "plan_sha1": _plan_digest(speakers, plan)}
    if _check_cached(root, params, settings):
        return root

    root.mkdir(parents=True, exist_ok=True)
    for subset in SUBSETS.values():
        if (root / subset).exists():
            print(f"[synthetic] removing incomplete {root / subset} (no corpus.json: interrupted build)")
            shutil.rmtree(root / subset)
    (root / "SPEAKERS.TXT").unlink(missing_ok=True)

    per_speaker: dict[str, list[Utterance]] = {s.id: [] for s in speakers}
    for utt in plan:
        per_speaker[utt.speaker].append(utt)
    start = time.perf_counter()
    print(f"[synthetic] {len(plan)} utterances from {len(speakers)} speakers -> {root}")
    with _torch_threads(1):
        seconds = _synthesize_all(root, speakers, per_speaker, seed)
    elapsed = time.perf_counter() - start
    minutes = {s.id: seconds[s.id].get(SUBSETS["train" if s.seen else "test"], 0.0) / 60
               for s in speakers}
    atomic_write_text(root / "SPEAKERS.TXT", _speakers_txt(speakers, minutes))
    total_seconds = sum(sum(v.values()) for v in seconds.values())
    stats = {
        "utterances": {sub: sum(u.subset == sub for u in plan) for sub in SUBSETS.values()},
        "hours": {sub: sum(v.get(sub, 0.0) for v in seconds.values()) / 3600 for sub in SUBSETS.values()},
        "distinct_sentences": len({u.text for u in plan}),
        "build_seconds": round(elapsed, 1),
        "real_time_factor": round(total_seconds / max(elapsed, 1e-9), 1),
    }
    meta = {"parameters": params, "generator": settings, "stats": stats,
            "speakers": [asdict(s) for s in speakers]}
    atomic_write_text(root / "corpus.json", json.dumps(meta, indent=2) + "\n")
    print(f"[synthetic] done: {len(plan)} utterances, {total_seconds / 3600:.2f} h of audio in "
          f"{elapsed:.0f} s ({stats['real_time_factor']:.0f}x real time, "
          f"{len(plan) / max(elapsed, 1e-9):.0f} utt/s)")
    return root


def synthesize_and_read(root: str | Path, num_train_speakers: int = 18, num_unseen_speakers: int = 6,
                        train_sentences: int = 150, dev_sentences: int = 5, test_sentences: int = 10,
                        unseen_sentences: int = 25, seed: int = 0, verify: str = "tail",
                        num_workers: int = 4) -> CorpusRows:
    """Synthesise the corpus if needed, then read it with the LibriSpeech reader and add `accent`
    and `gender` (the corpus reader of `dataset=synthetic`).

    `verify` and `num_workers` are the LibriSpeech reader's.
    """
    from fedspeech.data.corpora import librispeech

    root = synthesize_corpus(root, num_train_speakers, num_unseen_speakers, train_sentences,
                             dev_sentences, test_sentences, unseen_sentences, seed)
    corpus = librispeech.read_corpus(root, subsets=list(SUBSETS.values()), verify=verify,
                                     num_workers=num_workers)
    speakers = {s["id"]: s for s in json.loads((root / "corpus.json").read_text())["speakers"]}
    for row in corpus.rows:
        spk = speakers.get(str(row["speaker"]))
        if spk is None:
            raise ValueError(f"utterance {row['id']} has speaker {row['speaker']!r}, which "
                             f"{root / 'corpus.json'} does not list")
        row["accent"] = spk["voice"]
        row["gender"] = spk["gender"]
    return corpus
