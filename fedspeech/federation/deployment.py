"""The same ServerApp/ClientApp for Flower's Deployment Engine (`flwr run` against a SuperLink).

Under `flwr run` the apps are imported by module path from the installed app bundle (FAB), so
the experiment config cannot be handed over in memory as in simulation: it is read from a
composed fedspeech config file named in the run config, e.g.

    python -m fedspeech.main --cfg job --resolve <overrides> > /abs/experiment.yaml
    flwr run . <superlink-connection> \
        --run-config 'fedspeech-config="/abs/experiment.yaml" run-dir="/abs/run"' --stream

The config must be composed with `--resolve`: unresolved, `paths.*` would point into the
bundle's install directory. The file, and the data it names, must exist at the same path on the
SuperLink's machine and on every SuperNode's. Each SuperNode holds one partition:
`flower-supernode ... --node-config "partition-id=3 num-partitions=12"`.

With SuperNode authentication, `supernode-registry="/abs/registry.json"` (written by
`python -m fedspeech.federation.supernode_registry`) names each node id's public key, and the
run dir gets supernodes.csv: round, node id, partition id, key fingerprint, outcome.
"""

from __future__ import annotations

import functools
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig, OmegaConf

from fedspeech.config import register_resolvers, validate_config
from fedspeech.federation.client_app import client_query, client_train
from fedspeech.federation.server_app import run_federated
from fedspeech.federation.supernode_registry import load_registry

CONFIG_KEY = "fedspeech-config"
RUN_DIR_KEY = "run-dir"
REGISTRY_KEY = "supernode-registry"
PARTITION_KEY = "partition-id"


@functools.lru_cache(maxsize=4)
def load_config(path: str) -> DictConfig:
    """The composed experiment config named in the run config (read once per process)."""
    register_resolvers()
    if not path:
        raise ValueError(f"run config '{CONFIG_KEY}' is empty: pass the absolute path of a composed "
                         "fedspeech config (python -m fedspeech.main --cfg job --resolve ... > file)")
    file = Path(path)
    if not file.is_absolute():
        raise ValueError(f"{CONFIG_KEY}={path!r} must be an absolute path: the apps run in "
                         "processes started by the SuperLink and SuperNodes, not in your shell")
    if not file.is_file():
        raise FileNotFoundError(f"{CONFIG_KEY} {file} does not exist on this machine")
    text = file.read_text()
    if "${project_root:" in text:
        raise ValueError(f"{file} holds unresolved interpolations: compose it with "
                         "`python -m fedspeech.main --cfg job --resolve ...`")
    return OmegaConf.create(text)


def config_from_context(context: Context) -> DictConfig:
    return load_config(str(context.run_config.get(CONFIG_KEY, "")))


def run_dir_from_context(cfg: DictConfig, context: Context) -> Path:
    """`run-dir` from the run config; relative to the project the config was composed in."""
    value = str(context.run_config.get(RUN_DIR_KEY, "") or "")
    run_dir = Path(value) if value else Path("outputs") / "deployment" / f"run-{context.run_id}"
    if not run_dir.is_absolute():
        run_dir = Path(str(cfg.paths.project)) / run_dir
    return run_dir


def node_keys_from_context(context: Context) -> dict[int, str] | None:
    """node id -> key fingerprint from the registry named in the run config (None: not given)."""
    value = str(context.run_config.get(REGISTRY_KEY, "") or "")
    if not value:
        return None
    if not Path(value).is_absolute():
        raise ValueError(f"{REGISTRY_KEY}={value!r} must be an absolute path on the SuperLink's "
                         "machine")
    return {node_id: node.fingerprint for node_id, node in load_registry(value).items()}


def _require_partition(context: Context) -> None:
    if PARTITION_KEY not in context.node_config:
        raise ValueError(f"this SuperNode has no '{PARTITION_KEY}' in its node config: start it with "
                         f"--node-config \"{PARTITION_KEY}=<i> num-partitions=<n>\"")


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    _require_partition(context)
    return client_train(config_from_context(context), msg, context)


@client_app.query()
def query(msg: Message, context: Context) -> Message:
    _require_partition(context)
    return client_query(config_from_context(context), msg, context)


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = config_from_context(context)
    validate_config(cfg)
    node_keys = node_keys_from_context(context)
    run_dir = run_dir_from_context(cfg, context)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    print(f"deployment run {context.run_id}: {cfg.num_rounds} rounds, strategy {cfg.strategy.name}, "
          f"model {cfg.model.name} -> {run_dir}", flush=True)
    run_federated(cfg, run_dir, grid, node_keys=node_keys)
