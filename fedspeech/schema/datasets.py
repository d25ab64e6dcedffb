"""Schemas of `conf/dataset/*.yaml`: the dataset node, and its reader and downloader per corpus."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from fedspeech.schema.slots import slot

CORPORA = "fedspeech.data.corpora"


@dataclass
class ProbingReader:
    """Keys of every reader that probes audio files (`fedspeech.data.corpora.common.probe_many`)."""

    verify: str = "tail"         # header | tail | decode
    num_workers: int = 4


@dataclass
class LibriSpeechReader(ProbingReader):
    _target_: str = f"{CORPORA}.librispeech.read_corpus"
    subsets: Optional[List[str]] = None


@dataclass
class LibriSpeechDownloader:
    _target_: str = f"{CORPORA}.librispeech.download"
    subsets: List[str] = field(default_factory=list)
    keep_archives: bool = True
    progress: bool = True


@dataclass
class TedliumReader(ProbingReader):
    _target_: str = f"{CORPORA}.tedlium3.read_corpus"
    layout: str = "legacy"


@dataclass
class TedliumDownloader:
    _target_: str = f"{CORPORA}.tedlium3.download"
    keep_archive: bool = True
    progress: bool = True


@dataclass
class MLSReader(ProbingReader):
    _target_: str = f"{CORPORA}.mls.read_corpus"
    languages: Optional[List[str]] = None
    opus: Optional[bool] = None


@dataclass
class MLSDownloader:
    _target_: str = f"{CORPORA}.mls.download"
    languages: List[str] = field(default_factory=list)
    opus: bool = True
    keep_archives: bool = True
    progress: bool = True


@dataclass
class CommonVoiceReader(ProbingReader):
    _target_: str = f"{CORPORA}.commonvoice.read_corpus"
    locale: str = "en"
    splits: Optional[Dict[str, str]] = None


@dataclass
class CommonVoiceDownloader:
    _target_: str = f"{CORPORA}.commonvoice.download"
    archive: Optional[str] = None
    md5: Optional[str] = None
    sha256: Optional[str] = None
    progress: bool = True


@dataclass
class SyntheticReader(ProbingReader):
    _target_: str = f"{CORPORA}.synthetic.synthesize_and_read"
    num_train_speakers: int = 18
    num_unseen_speakers: int = 6
    train_sentences: int = 150
    dev_sentences: int = 5
    test_sentences: int = 10
    unseen_sentences: int = 25
    seed: int = 0


#: `dataset.reader._target_` -> schema
READERS: dict[str, type] = {s._target_: s for s in (
    LibriSpeechReader, TedliumReader, MLSReader, CommonVoiceReader, SyntheticReader)}
#: `dataset.downloader._target_` -> schema
DOWNLOADERS: dict[str, type] = {s._target_: s for s in (
    LibriSpeechDownloader, TedliumDownloader, MLSDownloader, CommonVoiceDownloader)}


@dataclass
class DatasetConfig:
    name: str = "???"
    root: str = "???"
    download: bool = False
    reader: Any = slot(READERS)
    downloader: Any = slot(DOWNLOADERS)
    eval_split: str = "test"
