"""The same ServerApp/ClientApp for Flower's Deployment Engine (`flwr run` against a SuperLink).

Under `flwr run` the apps are imported by module path, so the experiment config cannot be handed
over in memory as in simulation: it is read from a composed fedspeech config file named in the
run config, e.g.

    python -m fedspeech.main --cfg job --resolve <overrides> > experiment.yaml
    flwr run . <federation> --run-config 'fedspeech-config="/abs/experiment.yaml" run-dir="/abs/run"'

Each SuperNode is started with its partition: `flower-supernode ... --node-config "partition-id=3"`.
"""

from __future__ import annotations

import functools
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig, OmegaConf

from fedspeech.federation.client_app import client_identity, client_train
from fedspeech.federation.server_app import run_federated


@functools.lru_cache(maxsize=4)
def _load(path: str) -> DictConfig:
    if not path:
        raise ValueError("run config 'fedspeech-config' is empty: pass the path of a composed "
                         "fedspeech config (python -m fedspeech.main --cfg job --resolve ... > file)")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"fedspeech-config {file} does not exist on this machine")
    return OmegaConf.load(file)


def config_from_context(context: Context) -> DictConfig:
    return _load(str(context.run_config.get("fedspeech-config", "")))


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    return client_train(config_from_context(context), msg, context)


@client_app.query()
def query(msg: Message, context: Context) -> Message:
    return client_identity(msg, context)


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = config_from_context(context)
    run_dir = Path(str(context.run_config.get("run-dir", "") or "outputs/deployment"))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    run_federated(cfg, run_dir, grid)
