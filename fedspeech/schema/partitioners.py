"""Schemas of `conf/partitioner/*.yaml`, one per partitioner class (chosen by `_target_`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

PARTITION = "fedspeech.data.partition"


@dataclass
class CommonFilters:
    """Keys every partitioner takes (`Partitioner.__init__`)."""

    name: Optional[str] = None
    min_duration: float = 0.0
    max_duration: Optional[float] = None
    min_utterances: int = 1


@dataclass
class SpeakerPartitioner(CommonFilters):
    _target_: str = f"{PARTITION}.SpeakerPartitioner"
    key: str = "speaker"


@dataclass
class GroupedSpeakersPartitioner(CommonFilters):
    _target_: str = f"{PARTITION}.GroupedSpeakersPartitioner"
    num_clients: int = 100
    key: str = "speaker"


@dataclass
class IidPartitioner(CommonFilters):
    _target_: str = f"{PARTITION}.IidPartitioner"
    num_clients: int = 100


@dataclass
class DirichletPartitioner(CommonFilters):
    _target_: str = f"{PARTITION}.DirichletPartitioner"
    num_clients: int = 100
    attribute: str = "gender"
    alpha: float = 0.5
    min_partition_size: int = 1
    self_balancing: bool = False
    missing: str = "keep"
    max_tries: int = 10


@dataclass
class SizeSkewPartitioner(CommonFilters):
    _target_: str = f"{PARTITION}.SizeSkewPartitioner"
    num_clients: int = 100
    exponent: float = 1.0
    min_size: int = 1


@dataclass
class TedliumPaperPartitioner(CommonFilters):
    _target_: str = f"{PARTITION}.TedliumPaperPartitioner"
    map_path: str = "???"
    num_clients: Optional[int] = None
    exclude_heldout: bool = False


#: `partitioner._target_` -> schema
PARTITIONERS: dict[str, type] = {s._target_: s for s in (
    SpeakerPartitioner, GroupedSpeakersPartitioner, IidPartitioner, DirichletPartitioner,
    SizeSkewPartitioner, TedliumPaperPartitioner)}
