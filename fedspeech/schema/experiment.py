"""Schema of a composed experiment config (`conf/config.yaml` and its groups)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from fedspeech.schema.datasets import DatasetConfig
from fedspeech.schema.logger import LOGGERS
from fedspeech.schema.models import MODELS
from fedspeech.schema.partitioners import PARTITIONERS
from fedspeech.schema.slots import slot
from fedspeech.schema.strategy import StrategyConfig
from fedspeech.schema.tasks import TASKS


@dataclass
class PathsConfig:
    project: str = "???"
    data: str = "???"
    shared_data: str = "???"
    prepared: str = "???"
    partition: str = "???"


@dataclass
class TrainConfig:
    lr: float = 1.5e-3
    weight_decay: float = 0.01
    local_epochs: int = 1
    max_steps: Optional[int] = None
    batch_seconds: float = 20.0
    max_batch_utterances: Optional[int] = None
    grad_clip: Optional[float] = 5.0
    grad_accum: int = 1
    precision: str = "fp32"
    num_threads: Optional[int] = None
    speed_perturb: Optional[List[float]] = None


@dataclass
class EvalConfig:
    split: str = "test"
    batch_seconds: float = 60.0
    every: int = 1
    max_utterances: Optional[int] = None


@dataclass
class ClientResources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0


@dataclass
class RayInitArgs:
    """Passed to `ray.init` (null values are left out)."""

    num_cpus: Optional[int] = None
    num_gpus: Optional[int] = None
    include_dashboard: bool = False
    address: Optional[str] = None
    object_store_memory: Optional[int] = None


@dataclass
class SimulationConfig:
    """How `fedspeech.main` starts a federated simulation (`fedspeech/federation/simulation.py`)."""

    runtime: str = "in_process"       # in_process | flwr_run
    #: flwr_run only: seconds to wait for the private SuperLink to answer
    superlink_start_timeout_s: float = 60.0
    #: in_process only: simulated SuperNodes carrying all clients (`federation/virtual_nodes.py`);
    #: None = one SuperNode per client
    nodes: Optional[int] = None


@dataclass
class FaultsConfig:
    """Seeded fault injection in the client path (`conf/faults/*.yaml`)."""

    name: str = "none"
    crash_prob: float = 0.0
    nan_prob: float = 0.0
    delay_prob: float = 0.0
    delay_s: float = 0.0


@dataclass
class ExperimentConfig:
    model: Any = slot(MODELS)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    partitioner: Any = slot(PARTITIONERS)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    logger: Any = slot(LOGGERS, by="name")     # null = no tracking
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    task: Any = slot(TASKS)
    seed: int = 0
    num_rounds: int = 35
    federated: bool = True
    resume: Any = False                 # false, true, or a checkpoint folder
    keep_checkpoints: Optional[int] = 2
    force_prepare: bool = False
    prepare_stages: List[str] = field(default_factory=lambda: ["manifest", "partition"])
    record_updates: bool = False
    record_updates_rounds: Optional[List[int]] = None
    paths: PathsConfig = field(default_factory=PathsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    client_resources: ClientResources = field(default_factory=ClientResources)
    ray_init_args: RayInitArgs = field(default_factory=RayInitArgs)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    audio_cache_mb: float = 1024.0
    verbose: bool = True
