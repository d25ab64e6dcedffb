"""Composing and checking experiment configs: a bad key or value fails before anything starts.

`validate_config` merges the composed config into its typed schema (`fedspeech.schema`: unknown
keys and wrong types fail there, naming the full key) and then checks ranges and choices. Entry
points turn a `ConfigError` into one line on stderr and exit code 2 (`exit_on_config_error`).
OmegaConf resolvers are registered by `register_resolvers`, which every entry point calls.
"""

from __future__ import annotations

import contextlib
import re
import sys
import typing
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from fedspeech import CONFIG_DIR, PROJECT_ROOT
from fedspeech.schema import SchemaChoiceError, typed_schema

#: exit code of an entry point given a bad config (Hydra's own composition errors exit with 1)
CONFIG_ERROR_EXIT = 2
PREPARE_STAGES = ("manifest", "partition")
PRECISIONS = ("fp32", "bf16", "fp16")
EVAL_SPLITS = ("train", "dev", "test", "ted_train_full5", "ted_train_wo5")
WANDB_MODES = ("offline", "online", "disabled")
SIMULATION_RUNTIMES = ("in_process", "flwr_run")


class ConfigError(ValueError):
    """A config key that is unknown, or a value that is out of range or of the wrong kind."""


# ---- resolvers --------------------------------------------------------------------------------
def _dir_name(text: str, limit: int = 120) -> str:
    """A run-dir name made from overrides: no path separators, short enough for any filesystem."""
    name = str(text).replace("/", "_").replace("\\", "_")
    return name if len(name) <= limit else name[: limit - 9] + "-" + format(zlib.crc32(name.encode()), "08x")


def register_resolvers() -> None:
    """`${project_root:}` (the checkout) and `${dir_name:...}` (sweep sub-dirs); idempotent."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("dir_name"):
        OmegaConf.register_new_resolver("dir_name", _dir_name)


def compose_config(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """The experiment config `python -m fedspeech.main <overrides>` would run, composed in-process."""
    from hydra import compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name, overrides=list(overrides))


# ---- one-line errors --------------------------------------------------------------------------
def _expected(annotation: Any) -> str:
    """`Optional[float]` -> 'a number or null', for messages."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union and len(args) == 1:
        return f"{_expected(args[0])} or null"
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        return f"a list of {_expected(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if origin is dict:
        return "a mapping"
    return {float: "a number", int: "an integer", bool: "true or false", str: "a string"}.get(
        annotation, getattr(annotation, "__name__", str(annotation)))


def _annotation(err: OmegaConfBaseException) -> Any:
    schema, key = getattr(err, "object_type", None), getattr(err, "key", None)
    try:
        return typing.get_type_hints(schema).get(str(key)) if schema is not None else None
    except (TypeError, NameError):
        return None


def describe(err: OmegaConfBaseException) -> str:
    """An OmegaConf error as `full.key: what is wrong; what is allowed` (one line)."""
    key = err.full_key or err.key or "config"
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    schema = getattr(err, "object_type", None)
    if isinstance(err, MissingMandatoryValue):
        return f"{key}: is required (no value given)"
    if isinstance(err, ConfigKeyError) and schema is not None and hasattr(schema, "__dataclass_fields__"):
        allowed = [k for k in schema.__dataclass_fields__ if k not in ("_target_", "_partial_")]
        return f"{key}: unknown key; {schema.__name__} takes: {', '.join(allowed)}"
    annotation = _annotation(err)
    value = re.search(r"Value '(.*)' of type", first)
    if annotation is not None and value:
        return f"{key}: {value.group(1)!r} is not {_expected(annotation)}"
    return f"{key}: {first}"


@contextlib.contextmanager
def exit_on_config_error() -> Iterator[None]:
    """Print a ConfigError as one line on stderr and exit with `CONFIG_ERROR_EXIT`."""
    try:
        yield
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(CONFIG_ERROR_EXIT) from None


# ---- the checks -------------------------------------------------------------------------------
def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _one_of(value: Any, choices: Sequence[Any], key: str) -> None:
    _require(value in choices, key, f"must be one of {', '.join(map(str, choices))}; got {value!r}")


def typed_config(cfg: DictConfig) -> DictConfig:
    """`cfg` merged into its schema and resolved; raises ConfigError naming the offending key."""
    register_resolvers()
    try:
        typed = OmegaConf.merge(typed_schema(cfg), cfg)
        OmegaConf.resolve(typed)
    except SchemaChoiceError as err:
        raise ConfigError(str(err)) from None
    except OmegaConfBaseException as err:
        raise ConfigError(describe(err)) from None
    return typed


def validate_config(cfg: DictConfig) -> DictConfig:
    """Check a composed config (keys, types, ranges, choices); returns its typed, resolved view."""
    typed = typed_config(cfg)
    _require(typed.num_rounds >= 1, "num_rounds", f"must be >= 1, got {typed.num_rounds}")
    for stage in typed.prepare_stages:
        _one_of(stage, PREPARE_STAGES, "prepare_stages")
    res = typed.client_resources
    _require(res.num_cpus > 0, "client_resources.num_cpus", f"must be > 0, got {res.num_cpus}")
    _require(res.num_gpus >= 0, "client_resources.num_gpus", f"must be >= 0, got {res.num_gpus}")
    _require(res.num_gpus <= 1 or float(res.num_gpus).is_integer(), "client_resources.num_gpus",
             f"a fraction must be <= 1, got {res.num_gpus}")
    train = typed.train
    _require(train.lr > 0, "train.lr", f"must be > 0, got {train.lr}")
    _require(train.local_epochs >= 1, "train.local_epochs", f"must be >= 1, got {train.local_epochs}")
    _require(train.batch_seconds > 0, "train.batch_seconds", f"must be > 0, got {train.batch_seconds}")
    _require(train.grad_accum >= 1, "train.grad_accum", f"must be >= 1, got {train.grad_accum}")
    _one_of(train.precision, PRECISIONS, "train.precision")
    if train.speed_perturb is not None:
        _require(len(train.speed_perturb) > 0 and all(0.5 <= f <= 2.0 for f in train.speed_perturb),
                 "train.speed_perturb", "must be null or a list of speed factors in [0.5, 2.0], "
                 f"e.g. [0.9, 1.0, 1.1]; got {list(train.speed_perturb)}")
    _one_of(typed.eval.split, EVAL_SPLITS, "eval.split")
    _require(typed.eval.every >= 1, "eval.every", f"must be >= 1, got {typed.eval.every}")
    strategy = typed.strategy
    if strategy.fraction_train is not None:
        _require(0 < strategy.fraction_train <= 1, "strategy.fraction_train",
                 f"must be in (0, 1], got {strategy.fraction_train}")
    _validate_update_recording(typed)
    _validate_simulation(typed)
    _validate_task_model(typed)
    if typed.logger is not None and typed.logger.name == "wandb":
        _one_of(typed.logger.mode, WANDB_MODES, "logger.mode")
    _require(not OmegaConf.is_missing(typed.dataset, "root") and typed.dataset.root != "", "dataset.root",
             f"is required for dataset {typed.dataset.name}: the corpus folder")
    return typed


def _validate_simulation(typed: DictConfig) -> None:
    sim = typed.simulation
    _one_of(sim.runtime, SIMULATION_RUNTIMES, "simulation.runtime")
    _require(sim.superlink_start_timeout_s > 0, "simulation.superlink_start_timeout_s",
             f"must be > 0, got {sim.superlink_start_timeout_s}")
    if sim.nodes is not None:
        _require(sim.nodes >= 1, "simulation.nodes", f"must be >= 1 or null, got {sim.nodes}")
        _require(sim.runtime == "in_process", "simulation.nodes",
                 "needs simulation.runtime=in_process (with flwr_run, Flower starts one SuperNode "
                 "per client); leave it null")
    ray = typed.ray_init_args
    if ray.address is not None:
        # a cluster's size is set where it was started (`ray start`); ray.init refuses it here
        for key in ("num_cpus", "num_gpus", "object_store_memory"):
            _require(ray.get(key) is None, f"ray_init_args.{key}",
                     f"must be null when joining a running cluster (ray_init_args.address="
                     f"{ray.address}): give it to `ray start` on each node instead")
    if sim.runtime == "flwr_run" and typed.federated:
        # Flower's simulation config carries cpus/gpus only; the rest cannot reach ray.init
        for key in ("object_store_memory",):
            _require(typed.ray_init_args.get(key) is None, f"ray_init_args.{key}",
                     "is not passed on by simulation.runtime=flwr_run (Flower's simulation config "
                     "has no such field): leave it null or use simulation.runtime=in_process")
        _require(float(typed.client_resources.num_cpus).is_integer(), "client_resources.num_cpus",
                 "must be a whole number with simulation.runtime=flwr_run (Flower's simulation "
                 f"config counts whole cpus), got {typed.client_resources.num_cpus}")
        _require(not typed.ray_init_args.include_dashboard, "ray_init_args.include_dashboard",
                 "is not passed on by simulation.runtime=flwr_run: use simulation.runtime=in_process")


#: tasks that train one model class: task name -> the model `_target_` and the config to choose
TASK_MODELS = {"pretrain": ("fedspeech.models.pretraining.hubert.HubertPretrain", "hubert_pretrain"),
               "distill": ("fedspeech.models.pretraining.distil.DistilHubert", "distilhubert")}


def _validate_task_model(typed: DictConfig) -> None:
    """task=pretrain|distill with their own model (and those models only with their task), and
    a teacher that is an export."""
    target = typed.model.get("_target_")
    _require(typed.federated or typed.task.name == "asr", "federated",
             f"false runs the centralised ASR baseline only; task={typed.task.name} is federated")
    for task, (wanted, choice) in TASK_MODELS.items():
        if typed.task.name == task:
            _require(target == wanted, "model", f"task={task} trains model={choice}; got "
                                                f"model={typed.model.get('name')}")
        elif target == wanted:
            _require(False, "task", f"model={choice} is trained by task={task}; got "
                                    f"task={typed.task.name}")
    if target == TASK_MODELS["distill"][0]:
        from fedspeech.models.pretraining.distil import check_objective
        from fedspeech.models.pretraining.export import export_problem
        from fedspeech.models.pretraining.unit_head import unit_head_problem

        m = typed.model
        try:
            check_objective(m.objective, m.unit_kl_weight, m.kl_temperature, m.mask_prob, m.mask_length)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        _require(not OmegaConf.is_missing(m, "teacher"), "model.teacher",
                 "is required: a HuBERT/wav2vec2 export, e.g. <pretrain run>/export")
        problem = export_problem(m.teacher)
        if problem is None and m.objective == "units":
            problem = unit_head_problem(m.teacher)
        _require(problem is None, "model.teacher", str(problem))


def _validate_update_recording(typed: DictConfig) -> None:
    if not typed.record_updates:
        return
    _require(typed.federated, "record_updates",
             "needs federated=true (the centralised baseline exchanges no updates)")
    rounds = typed.record_updates_rounds
    if rounds is None:
        return
    _require(len(rounds) > 0 and all(1 <= r <= typed.num_rounds for r in rounds),
             "record_updates_rounds",
             f"must be null or a list of rounds in 1..num_rounds={typed.num_rounds}, e.g. [1,3]; "
             f"got {list(rounds)}")
