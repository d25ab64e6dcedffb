"""Corpus readers on the real sample files in their original layouts, and on broken copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import soundfile as sf

from fedspeech.data.corpora.common import CorpusLayoutError, probe_audio
from fedspeech.data.manifest import to_frame
from fedspeech.data.text import normalize_text

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
needs_real = pytest.mark.skipif(not REAL.is_dir(),
                                reason=f"real sample corpora not found at {REAL}")


def _reasons(corpus) -> dict[str, str]:
    return {r.id: r.reason for r in corpus.rejected}


def _copy(name: str, tmp_path: Path) -> Path:
    dest = tmp_path / name
    shutil.copytree(REAL / name, dest)
    for path in dest.rglob("*"):  # the shared copies are read-only
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dest


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:64] = b"\x00" * 64
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ------------------------------------------------------------------------------------ LibriSpeech

@needs_real
def test_librispeech_real_sample():
    from fedspeech.data.corpora.librispeech import read_corpus

    corpus = read_corpus(REAL / "LibriSpeech")
    assert corpus.rejected == []
    frame = to_frame(corpus.rows)
    assert len(frame) == 7
    assert frame["split"].value_counts().to_dict() == {"test": 5, "dev": 2}
    assert sorted(frame["speaker"].unique()) == ["1089", "1272", "1995", "2412"]
    flacs = sorted(p.stem for p in (REAL / "LibriSpeech").rglob("*.flac"))
    assert sorted(frame["id"]) == flacs
    expected_text = {}
    for trans in (REAL / "LibriSpeech").rglob("*.trans.txt"):
        for line in trans.read_text().splitlines():
            utt, text = line.split(" ", 1)
            expected_text[utt] = normalize_text(text)
    for row in frame.itertuples():
        assert Path(row.audio).is_absolute() and Path(row.audio).stem == row.id
        assert row.duration == pytest.approx(sf.info(row.audio).duration, abs=1e-9)
        assert row.speaker == row.id.split("-")[0] and row.chapter == row.id.split("-")[1]
        assert row.text == expected_text[row.id]
        assert row.start == 0.0 and row.end is None
    assert frame.set_index("id").loc["1089-134691-0000", "text"] == "he could wait no longer"
    assert frame.set_index("id").loc["1272-128104-0001", "text"] == \
        "nor is mister quilter's manner less interesting than his matter"
    assert frame["duration"].sum() == pytest.approx(46.415, abs=1e-6)


@needs_real
def test_librispeech_subset_selection_and_errors(tmp_path):
    from fedspeech.data.corpora.librispeech import read_corpus, split_of

    dev = read_corpus(REAL / "LibriSpeech", subsets=["dev-clean"])
    assert {r["split"] for r in dev.rows} == {"dev"} and len(dev.rows) == 2
    assert split_of("train-other-500") == "train"
    with pytest.raises(CorpusLayoutError, match="train-clean-100"):
        read_corpus(REAL / "LibriSpeech", subsets=["train-clean-100"])
    with pytest.raises(CorpusLayoutError, match="does not exist"):
        read_corpus(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusLayoutError, match="no LibriSpeech subset"):
        read_corpus(tmp_path / "empty")
    with pytest.raises(CorpusLayoutError, match="point root there"):
        read_corpus(REAL)  # the parent of LibriSpeech/


@needs_real
def test_librispeech_bad_inputs_are_rejected_with_reasons(tmp_path):
    from fedspeech.data.corpora.librispeech import read_corpus

    root = _copy("LibriSpeech", tmp_path)
    chapter = root / "test-clean" / "1089" / "134686"
    _corrupt(chapter / "1089-134686-0000.flac")
    _truncate(root / "test-clean" / "1089" / "134691" / "1089-134691-0001.flac")
    trans = chapter / "1089-134686.trans.txt"
    trans.write_text(trans.read_text().rstrip("\n") + "\n1089-134686-0099 A LINE WITHOUT AUDIO\n"
                     "1089-134686-0042 ...\n9999-1-1 WRONG CHAPTER\n")
    (chapter / "1089-134686-0042.flac").write_bytes(
        (root / "test-clean" / "1995" / "1837" / "1995-1837-0001.flac").read_bytes())
    # audio whose transcript line is gone
    t2 = root / "dev-clean" / "2412" / "153948" / "2412-153948.trans.txt"
    t2.write_text("")
    # a chapter without any transcript file
    (root / "dev-clean" / "1272" / "128104" / "1272-128104.trans.txt").unlink()
    (root / "SPEAKERS.TXT").write_text(
        "; ID |SEX| SUBSET |MINUTES| NAME\n1089 | M | test-clean | 25.0 | Reader A\n"
        "1995 | F | test-clean | 25.0 | Reader B\n")

    corpus = read_corpus(root)
    reasons = _reasons(corpus)
    assert reasons["1089-134686-0000"].startswith("unreadable audio")
    assert reasons["1089-134691-0001"].startswith("unreadable audio")
    assert reasons["1089-134686-0099"].startswith("audio file missing")
    assert reasons["1089-134686-0042"] == "empty transcript"
    assert reasons["9999-1-1"].startswith("malformed transcript line")
    assert reasons["2412-153948-0000"].startswith("no transcript")
    assert "trans.txt missing" in reasons["1272-128104-0001"]
    kept = {r["id"]: r for r in corpus.rows}
    assert sorted(kept) == ["1089-134686-0001", "1089-134691-0000", "1995-1837-0001"]
    assert kept["1089-134686-0001"]["gender"] == "male"
    assert kept["1995-1837-0001"]["gender"] == "female"
    # every file and line is accounted for: kept or rejected, never silently dropped
    assert len(corpus.rows) + len(corpus.rejected) == 10


def test_probe_audio_rejects_missing_and_bad_verify(tmp_path):
    with pytest.raises(ValueError, match="audio file missing"):
        probe_audio(tmp_path / "none.flac")
    with pytest.raises(ValueError, match="verify must be one of"):
        probe_audio(tmp_path / "none.flac", verify="everything")


# ------------------------------------------------------------------------------------ TED-LIUM 3

def _stm_segments(stm: Path) -> list[list[str]]:
    return [line.split() for line in stm.read_text().splitlines()
            if line.split() and line.split()[-1] != "ignore_time_segment_in_scoring"]


@needs_real
def test_tedlium3_real_sample():
    from fedspeech.data.corpora.tedlium3 import read_corpus

    root = REAL / "TEDLIUM_release-3"
    corpus = read_corpus(root)
    assert corpus.rejected == []
    frame = to_frame(corpus.rows).set_index("id")
    assert len(frame) == 10
    assert frame["split"].value_counts().to_dict() == {"train": 5, "test": 4, "dev": 1}
    assert sorted(frame["speaker"].unique()) == ["JamesJoyce_1916", "JaneAusten_1811",
                                                 "JohnKennedy_1961"]
    n_segments = 0
    for stm in root.rglob("*.stm"):
        sph = stm.parent.parent / "sph" / f"{stm.stem}.sph"
        audio_seconds = sf.info(sph).duration
        for fields in _stm_segments(stm):
            n_segments += 1
            talk, _, speaker, start, end = fields[:5]
            row = frame.loc[f"{talk}_{start}_{end}"]  # id keeps the stm's own time strings
            assert row["audio"] == str(sph.resolve()) and row["speaker"] == speaker
            assert row["start"] == float(start) and row["end"] == float(end) <= audio_seconds
            assert row["duration"] == pytest.approx(float(end) - float(start))
            assert row["text"] == normalize_text(" ".join(fields[6:]))
            assert row["gender"] == "male"
    assert n_segments == 10
    assert "JohnKennedy_1961_1.00_12.00" in frame.index
    assert frame.loc["JamesJoyce_1916_16.11_18.20", "text"] == "he could wait no longer"


def test_tedlium3_text_normalisation():
    from fedspeech.data.corpora.tedlium3 import normalize_ted_text

    assert normalize_ted_text("it 's a <unk> test {NOISE} we don 't") == "it's a test we don't"
    assert normalize_ted_text("<unk>") == ""
    assert normalize_ted_text("the students ' work") == "the students work"


@needs_real
def test_tedlium3_bad_stm_lines_and_files(tmp_path):
    from fedspeech.data.corpora.tedlium3 import read_corpus

    root = _copy("TEDLIUM_release-3", tmp_path)
    train = root / "legacy" / "train"
    stm = train / "stm" / "JaneAusten_1811.stm"
    short_line = len(stm.read_text().splitlines()) + 5
    stm.write_text(stm.read_text() + "\n".join([
        "JaneAusten_1811 1 JaneAusten_1811 5.00 4.00 <o,f0,male> end before start",
        "JaneAusten_1811 1 JaneAusten_1811 1.x 4.00 <o,f0,male> unparsable start",
        "JaneAusten_1811 1 JaneAusten_1811 28.9 31.5 <NA> beyond the end of the audio",
        "JaneAusten_1811 1 JaneAusten_1811 2.5 3.25 <NA> <unk>",
        "JaneAusten_1811 1 JaneAusten_1811 2.5",
        "JaneAusten_1811 1 JaneAusten_1811 2.5 3.5 <NA> it 's in the 18.8 style",
    ]) + "\n")
    # a talk whose audio is missing, a talk without stm, a corrupt talk
    shutil.copy(stm, train / "stm" / "NoAudio_2000.stm")
    (train / "stm" / "NoAudio_2000.stm").write_text(
        "NoAudio_2000 1 NoAudio_2000 1.0 2.0 <NA> words without audio\n")
    shutil.copy(train / "sph" / "JaneAusten_1811.sph", train / "sph" / "NoStm_2001.sph")
    _corrupt(root / "legacy" / "test" / "sph" / "JamesJoyce_1916.sph")

    corpus = read_corpus(root)
    reasons = _reasons(corpus)
    assert reasons["JaneAusten_1811_5.00_4.00"].startswith("bad stm times")
    assert reasons["JaneAusten_1811_1.x_4.00"].startswith("bad stm times")
    assert "beyond the audio" in reasons["JaneAusten_1811_28.9_31.5"]
    assert reasons["JaneAusten_1811_2.5_3.25"].startswith("empty transcript")
    assert reasons[f"JaneAusten_1811:{short_line}"].startswith("malformed stm line")
    assert reasons["NoAudio_2000_1.0_2.0"].startswith("audio file missing")
    assert reasons["NoStm_2001"].startswith("no transcript")
    joyce = [r for r in corpus.rejected if r.id.startswith("JamesJoyce_1916")]
    assert len(joyce) == 4 and all(r.reason.startswith("unreadable audio") for r in joyce)
    kept = {r["id"]: r for r in corpus.rows}
    assert kept["JaneAusten_1811_2.5_3.5"]["text"] == "it's in the 18 8 style"
    assert len(kept) == 5 + 1 + 1


def test_tedlium3_layout_errors(tmp_path):
    from fedspeech.data.corpora.tedlium3 import read_corpus

    with pytest.raises(CorpusLayoutError, match="TEDLIUM_release-3"):
        read_corpus(tmp_path / "missing")
    (tmp_path / "TEDLIUM_release-3" / "legacy").mkdir(parents=True)
    with pytest.raises(CorpusLayoutError, match="legacy/train"):
        read_corpus(tmp_path / "TEDLIUM_release-3")
    with pytest.raises(CorpusLayoutError, match="speaker-adaptation"):
        read_corpus(tmp_path / "TEDLIUM_release-3", layout="speaker-adaptation")
    with pytest.raises(ValueError, match="unknown TED-LIUM 3 layout"):
        read_corpus(tmp_path / "TEDLIUM_release-3", layout="release2")


# ------------------------------------------------------------------------------------------- MLS

MLS_LANGUAGES = ["french", "german", "portuguese", "spanish"]


@needs_real
def test_mls_real_sample_all_languages():
    from fedspeech.data.corpora.mls import read_corpus

    corpus = read_corpus(REAL)
    assert corpus.rejected == []
    frame = to_frame(corpus.rows)
    assert len(frame) == 40
    assert sorted(frame["language"].unique()) == MLS_LANGUAGES
    counts = frame.groupby(["language", "split"]).size()
    assert all(counts[(lang, "train")] == 6 and counts[(lang, "dev")] == 2
               and counts[(lang, "test")] == 2 for lang in MLS_LANGUAGES)
    for lang in MLS_LANGUAGES:
        folder = REAL / f"mls_{lang}_opus"
        genders = {}
        for line in (folder / "metainfo.txt").read_text().splitlines()[1:]:
            fields = [f.strip() for f in line.split("|")]
            genders[fields[0]] = {"M": "male", "F": "female"}[fields[1]]
        for split in ("train", "dev", "test"):
            for line in (folder / split / "transcripts.txt").read_text().splitlines():
                utt, text = line.split("\t")
                row = frame.set_index("id").loc[utt]
                spk, book, _ = utt.split("_")
                assert Path(row["audio"]).resolve() == (folder / split / "audio" / spk / book / f"{utt}.opus").resolve()
                assert row["split"] == split and row["speaker"] == spk
                assert row["gender"] == genders[spk] and row["language"] == lang
                assert row["text"] == normalize_text(text)
                assert row["duration"] == pytest.approx(sf.info(row["audio"]).duration, abs=1e-9)
    assert frame["speaker"].nunique() == 8


@needs_real
def test_mls_language_selection_and_errors(tmp_path):
    from fedspeech.data.corpora.mls import read_corpus

    german = read_corpus(REAL, languages=["german"])
    assert len(german.rows) == 10 and {r["language"] for r in german.rows} == {"german"}
    with pytest.raises(CorpusLayoutError, match="italian"):
        read_corpus(REAL, languages=["italian"])
    with pytest.raises(CorpusLayoutError, match="no MLS language folder"):
        read_corpus(REAL, opus=False)  # only the opus variant is present
    with pytest.raises(CorpusLayoutError, match="does not exist"):
        read_corpus(tmp_path / "nowhere")


@needs_real
def test_mls_bad_inputs_are_rejected_with_reasons(tmp_path):
    from fedspeech.data.corpora.mls import read_corpus

    root = tmp_path / "mls"
    folder = _copy("mls_german_opus", root)
    train = folder / "train"
    _corrupt(train / "audio" / "1000" / "2000" / "1000_2000_000000.opus")
    (train / "audio" / "1000" / "2000" / "1000_2000_000002.opus").unlink()
    shutil.copy(train / "audio" / "1001" / "2000" / "1001_2000_000001.opus",
                train / "audio" / "1001" / "2000" / "1001_2000_000099.opus")
    trans = train / "transcripts.txt"
    lines = [("1000_2000_000004\t ... " if line.startswith("1000_2000_000004") else line)
             for line in trans.read_text().splitlines()]
    trans.write_text("\n".join(lines + ["not-an-mls-line"]) + "\n")

    corpus = read_corpus(root)
    reasons = _reasons(corpus)
    assert reasons["1000_2000_000000"].startswith("unreadable audio")
    assert reasons["1000_2000_000002"].startswith("audio file missing")
    assert reasons["1001_2000_000099"].startswith("no transcript")
    assert reasons["1000_2000_000004"] == "empty transcript"
    assert reasons["not-an-mls-line"].startswith("malformed transcript line")
    assert len(corpus.rows) == 10 - 3
    assert len(corpus.rows) + len(corpus.rejected) == 10 + 2


# ---------------------------------------------------------------------------------- Common Voice

CV = "cv-corpus-13.0-2023-03-09"


@needs_real
def test_commonvoice_real_sample():
    import csv

    from fedspeech.data.corpora.commonvoice import read_corpus

    corpus = read_corpus(REAL / CV, locale="en")
    assert corpus.rejected == []
    frame = to_frame(corpus.rows).set_index("id")
    assert len(frame) == 9
    assert frame["split"].value_counts().to_dict() == {"train": 6, "dev": 2, "test": 1}
    assert frame["speaker"].nunique() == 4
    for split in ("train", "dev", "test"):
        with (REAL / CV / "en" / f"{split}.tsv").open() as handle:
            for tsv in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
                row = frame.loc[Path(tsv["path"]).stem]
                assert row["split"] == split
                assert row["speaker"] == row["client_id"] == tsv["client_id"]
                assert row["text"] == normalize_text(tsv["sentence"])
                assert (row["gender"], row["age"], row["accent"]) == \
                    (tsv["gender"], tsv["age"], tsv["accents"])
                # mp3 headers can overstate the length; the reader reports what decodes
                audio, rate = sf.read(row["audio"])
                assert row["duration"] == pytest.approx(len(audio) / rate, abs=1e-6)
    assert frame.loc["common_voice_en_900007", "text"] == ("and so my fellow americans ask not "
                                                          "what your country can do for you ask "
                                                          "what you can do for your country")


@needs_real
def test_commonvoice_root_may_be_the_locale_folder():
    from fedspeech.data.corpora.commonvoice import read_corpus

    corpus = read_corpus(REAL / CV)
    assert read_corpus(REAL / CV / "en", locale="en").rows == corpus.rows
    with pytest.raises(CorpusLayoutError, match="folder of locale 'en', not of locale 'fr'"):
        read_corpus(REAL / CV / "en", locale="fr")


@needs_real
def test_commonvoice_validated_as_train_keeps_eval_clips_out():
    from fedspeech.data.corpora.commonvoice import read_corpus

    corpus = read_corpus(REAL / CV, splits={"train": "validated", "dev": "dev", "test": "test"})
    assert len(corpus.rows) == 9
    dups = _reasons(corpus)
    assert sorted(dups) == ["common_voice_en_900006", "common_voice_en_900007",
                            "common_voice_en_900008"]
    assert all(r.startswith("duplicate clip") for r in dups.values())


@needs_real
def test_commonvoice_bad_inputs(tmp_path):
    from fedspeech.data.corpora.commonvoice import read_corpus

    root = _copy(CV, tmp_path)
    en = root / "en"
    # mpg123 resyncs past a damaged mp3 header, so break the whole file
    (en / "clips" / "common_voice_en_900001.mp3").write_bytes(b"not audio " * 900)
    (en / "clips" / "common_voice_en_900002.mp3").unlink()
    train = en / "train.tsv"
    lines = train.read_text().splitlines()
    fields = lines[4].split("\t")
    fields[2] = " ... "
    lines[4] = "\t".join(fields)  # clip 900003: nothing left after normalisation
    train.write_text("\n".join(lines) + "\n")

    corpus = read_corpus(root)
    reasons = _reasons(corpus)
    assert reasons["common_voice_en_900001"].startswith("unreadable audio")
    assert reasons["common_voice_en_900002"].startswith("audio file missing")
    assert reasons["common_voice_en_900003"].startswith("empty transcript")
    assert len(corpus.rows) == 6

    header = (en / "dev.tsv").read_text().splitlines()
    cols = header[0].split("\t")
    keep = [i for i, c in enumerate(cols) if c != "sentence"]
    (en / "dev.tsv").write_text("\n".join("\t".join(line.split("\t")[i] for i in keep)
                                          for line in header) + "\n")
    with pytest.raises(ValueError, match=r"dev\.tsv lacks required column\(s\) \['sentence'\]"):
        read_corpus(root)
    with pytest.raises(CorpusLayoutError, match=r"locales present: \['en'\]"):
        read_corpus(root, locale="fr")
    with pytest.raises(CorpusLayoutError, match="validated_extra.tsv not found"):
        read_corpus(REAL / CV, splits={"train": "validated_extra"})
