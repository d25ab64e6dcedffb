"""Typed configs: every shipped config validates, a bad key or value fails naming it, the schemas
stay in step with the classes they configure. Composed in-process (milliseconds), except one run
of the real entry point."""

from __future__ import annotations

import dataclasses
import inspect
import shutil
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import get_object

from conftest import run_module
from fedspeech import CONFIG_DIR
from fedspeech.config import CONFIG_ERROR_EXIT, ConfigError, compose_config, validate_config
from fedspeech.schema.datasets import DOWNLOADERS, READERS
from fedspeech.schema.logger import LOGGERS
from fedspeech.schema.models import MODELS
from fedspeech.schema.partitioners import PARTITIONERS
from fedspeech.schema.strategy import BUILDERS, FLOWER_STRATEGIES, SCHEDULES
from fedspeech.schema.tasks import TASKS

NEEDS_ROOT = {"commonvoice", "librispeech", "mls", "tedlium3"}


def _choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def _group_overrides() -> list[list[str]]:
    cases = []
    for group in ("model", "dataset", "partitioner", "strategy", "strategy/dp", "logger", "task", "faults"):
        for choice in _choices(group):
            extra = ["dataset.root=/corpora/x"] if group == "dataset" and choice in NEEDS_ROOT else []
            cases.append([f"{group}={choice}", *extra])
    cases += [[f"experiment={name}", "dataset.root=/corpora/TEDLIUM_release-3"]
              for name in _choices("experiment")]
    return cases


#: choices that only validate together with others (a pretraining model needs its task; a
#: student needs a teacher export, made by the `teacher` fixture)
COMPANIONS = {"model=hubert_pretrain": ["task=pretrain"], "model=hubert_base_pretrain": ["task=pretrain"],
              "model=distilhubert": ["task=distill", "model.teacher={teacher}"],
              "task=distill": ["model.teacher={teacher}"]}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    from tiny_pretrained import save_tiny_encoder
    return str(save_tiny_encoder("hubert", tmp_path_factory.mktemp("teacher")))


@pytest.mark.parametrize("overrides", _group_overrides(), ids=lambda o: o[0])
def test_every_shipped_config_validates(overrides, request):
    extra = COMPANIONS.get(overrides[0], [])
    if extra:
        path = request.getfixturevalue("teacher") if any("{teacher}" in e for e in extra) else ""
        overrides = [*overrides, *(e.format(teacher=path) for e in extra)]
    typed = validate_config(compose_config(overrides))
    group, choice = overrides[0].split("=")
    if group in ("model", "dataset", "partitioner", "strategy", "logger", "task", "faults"):
        assert typed[group].name == choice


@pytest.mark.parametrize("overrides, message", [
    (["strategy.fraction_train=abc"], "strategy.fraction_train: 'abc' is not a number or null"),
    (["+model.dropuot=0.3"], "model.dropuot: unknown key; TinyCTCConfig takes: name, n_mels"),
    (["+model.spec_augment.time_maks=2"], "model.spec_augment.time_maks: unknown key"),
    (["model=wav2vec2", "+model.hidden_size=3"], "model.hidden_size: unknown key; SSLCTCConfig"),
    (["+dataset.reader.subset=[dev-clean]", "dataset=librispeech", "dataset.root=/x"],
     "dataset.reader.subset: unknown key; LibriSpeechReader takes: verify, num_workers, subsets"),
    (["+partitioner.num_client=3", "partitioner=iid"], "partitioner.num_client: unknown key"),
    (["strategy=fedadam", "strategy.builder.beta_1=high"], "strategy.builder.beta_1: 'high' is not a number"),
    (["strategy=fedlamb", "+strategy.builder.eta.warmup=3"], "strategy.builder.eta.warmup: unknown key"),
    (["strategy=fedavgm", "strategy.builder.server_momentum=much"],
     "strategy.builder.server_momentum: 'much' is not a number"),
    (["strategy=krum", "+strategy.builder.flower.num_malicious_node=1"],
     "strategy.builder.flower.num_malicious_node: unknown key; Krum takes: num_malicious_nodes"),
    (["strategy=dp_adaptive", "+strategy.builder.wraps.fraction_train=0.5"],
     "strategy.builder.wraps.fraction_train: unknown key; FedAvg takes:"),
    (["strategy=krum", "strategy.builder.flower._target_=flwr.serverapp.strategy.Krumm"],
     "strategy.builder.flower._target_: no schema for 'flwr.serverapp.strategy.Krumm'"),
    (["+task.stage=2"], "task.stage: unknown key; ASRTask takes: name"),
    (["faults.crash_prob=often"], "faults.crash_prob: 'often' is not a number"),
    (["+strategy.fracton_train=0.5"], "strategy.fracton_train: unknown key; StrategyConfig"),
    (["strategy.dp.noise_multiplier=lots"], "strategy.dp.noise_multiplier: 'lots' is not a number"),
    (["logger=wandb", "+logger.projekt=x"], "logger.projekt: unknown key; WandbLogger takes: name, project"),
    (["logger=wandb", "logger.mode=sometimes"], "logger.mode: must be one of offline, online, disabled"),
    (["+logger.name=mlflow", "~logger"], "logger.name: no schema for 'mlflow'; known: none, tensorboard, wandb"),
    (["num_rounds=-1"], "num_rounds: must be >= 1, got -1"),
    (["seed=abc"], "seed: 'abc' is not an integer"),
    (["train.max_steps=1.5"], "train.max_steps: '1.5' is not an integer or null"),
    (["train.precision=fp8"], "train.precision: must be one of fp32, bf16, fp16; got 'fp8'"),
    (["train.speed_perturb=[0.9,3]"], "train.speed_perturb: must be null or a list of speed factors"),
    (["prepare_stages=[manifest,tokens]"], "prepare_stages: must be one of manifest, partition; got 'tokens'"),
    (["eval.split=holdout"], "eval.split: must be one of train, dev, test"),
    (["dataset=commonvoice"], "dataset.root: is required for dataset commonvoice"),
    (["+record_update=true"], "record_update: unknown key; ExperimentConfig takes:"),
    (["simulation.nodes=0"], "simulation.nodes: must be >= 1 or null, got 0"),
    (["simulation.nodes=4", "simulation.runtime=flwr_run"],
     "simulation.nodes: needs simulation.runtime=in_process"),
    (["ray_init_args.address=auto", "ray_init_args.num_cpus=4"],
     "ray_init_args.num_cpus: must be null when joining a running cluster"),
])
def test_bad_key_or_value_names_it(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate_config(compose_config(overrides))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("overrides, message", [
    (["model.unit_kl_weight=1.5"], "model.unit_kl_weight: must be in [0, 1], got 1.5"),
    (["model.unit_kl_weight=-0.1"], "model.unit_kl_weight: must be in [0, 1], got -0.1"),
    (["model.objective=logits"], "model.objective: must be one of layers, units; got 'logits'"),
    (["model.kl_temperature=0"], "model.kl_temperature: must be > 0, got 0.0"),
    (["model.mask_prob=0"], "model.mask_prob: must be in (0, 1], got 0.0"),
    (["model.objective=units"], "model.teacher: {teacher}/unit_head.pt is missing: model.objective=units"),
])
def test_bad_distillation_setting_names_it(overrides, message, teacher):
    base = ["task=distill", f"model.teacher={teacher}"]
    with pytest.raises(ConfigError) as err:
        validate_config(compose_config([*base, *overrides]))
    assert message.format(teacher=teacher) in str(err.value)
    assert "\n" not in str(err.value)


def test_unit_distillation_validates_with_a_unit_head(teacher, tmp_path):
    from fedspeech.models.pretraining.unit_head import UnitHead

    with_head = tmp_path / "teacher"
    shutil.copytree(teacher, with_head)
    UnitHead(32, 8, 4).save(with_head)
    typed = validate_config(compose_config(["task=distill", f"model.teacher={with_head}",
                                            "model.objective=units"]))
    assert (typed.model.objective, typed.model.unit_kl_weight, typed.model.kl_temperature) == \
        ("units", 0.5, 1.0)


def test_hydra_rejects_unknown_keys_without_plus():
    with pytest.raises(ConfigCompositionException, match="hidden_sise"):
        compose_config(["model.hidden_sise=3"])


def test_typed_view_converts_and_resolves():
    typed = validate_config(compose_config(["strategy.fraction_train=0.5", "train.speed_perturb=[0.9,1.1]"]))
    assert typed.strategy.fraction_train == 0.5 and list(typed.train.speed_perturb) == [0.9, 1.1]
    assert typed.strategy.client_lr.value == typed.train.lr           # ${train.lr}, resolved
    assert Path(typed.paths.partition) == Path(typed.paths.data) / "synthetic" / "partitions" / "speaker"
    assert typed.faults.crash_prob == 0.0 and typed.task.name == "asr" and typed.record_updates is False


# ---- the schemas describe the classes they configure -------------------------------------------
def _accepted(target: str) -> set[str]:
    """Keyword parameters of a function, or of every `__init__` along a class's MRO."""
    obj = get_object(target)
    functions = [vars(c)["__init__"] for c in obj.__mro__ if "__init__" in vars(c)] \
        if inspect.isclass(obj) else [obj]
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for f in functions for p in inspect.signature(f).parameters.values()
            if p.kind in kinds} - {"self"}


def _fields(schema: type) -> set[str]:
    return {f.name for f in dataclasses.fields(schema)} - {"_target_"}


# parameters filled at run time, never from a config file
RUNTIME = {"tokenizer", "llm_tokenizer", "root"}


@pytest.mark.parametrize("table", [MODELS, READERS, DOWNLOADERS, PARTITIONERS, SCHEDULES, TASKS],
                         ids=["models", "readers", "downloaders", "partitioners", "schedules", "tasks"])
def test_schema_keys_are_the_targets_parameters(table):
    from fedspeech.models.pretraining.hubert import ENCODER_KEYS
    from fedspeech.models.ssl_ctc import CONFIG_OVERRIDES

    for target, schema in table.items():
        accepted = _accepted(target) - RUNTIME
        if target.endswith("SSLCTC"):
            accepted |= set(CONFIG_OVERRIDES)     # taken through **options, checked by the class
        if target.endswith("HubertPretrain"):
            accepted |= set(ENCODER_KEYS)         # HubertConfig keys, through **encoder
        assert _fields(schema) == accepted, target


def test_builder_keys_are_accepted_by_the_strategy():
    for target, schema in BUILDERS.items():
        assert _fields(schema) <= _accepted(target), target


def test_flower_strategies_take_their_own_hyper_parameters():
    krum = FLOWER_STRATEGIES["flwr.serverapp.strategy.Krum"]
    assert _fields(krum) == {"_partial_", "num_malicious_nodes"}
    assert {"server_learning_rate", "server_momentum"} <= _fields(
        FLOWER_STRATEGIES["flwr.serverapp.strategy.FedAvgM"])
    for target in FLOWER_STRATEGIES:
        assert _fields(FLOWER_STRATEGIES[target]) - {"_partial_"} <= _accepted(target), target


def test_logger_schemas_are_the_config_files():
    assert sorted(LOGGERS) == _choices("logger")


def test_entry_point_prints_one_line_and_exits_2(tmp_path):
    proc = run_module("fedspeech.main", "strategy.fraction_train=abc", f"hydra.run.dir={tmp_path}",
                      check=False)
    assert proc.returncode == CONFIG_ERROR_EXIT
    assert proc.stderr.strip().splitlines() == [
        "config error: strategy.fraction_train: 'abc' is not a number or null"]
