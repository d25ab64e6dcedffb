"""`python -m fedspeech.main model=M dataset=D partitioner=P strategy=S [key=value ...]`.

Composes the config, prepares data if needed, and runs the federated experiment as a Flower
simulation on the Ray backend (`federation/simulation.py`; `simulation.runtime` picks Flower's
engine in this process or `flwr run` against a private local SuperLink), or the centralised
baseline with `federated=false`.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from fedspeech import CONFIG_DIR  # noqa: E402
from fedspeech.config import exit_on_config_error, register_resolvers, validate_config  # noqa: E402
from fedspeech.dataset_preparation import prepare  # noqa: E402
from fedspeech.run_log import run_log  # noqa: E402


def quiet_library_logs() -> None:
    """Flower logs through its own handler; stop it repeating everything through Hydra's."""
    import logging
    logging.getLogger("flwr").propagate = False
    for name in ("alembic", "filelock", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    quiet_library_logs()
    with exit_on_config_error():
        validate_config(cfg)
    # resolved once here: the apps (and Ray workers) see plain values, no resolvers needed there
    OmegaConf.resolve(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with run_log(run_dir):
        prepare(cfg, force=bool(cfg.force_prepare), stages=tuple(cfg.prepare_stages))
        if cfg.federated:
            from fedspeech.federation.simulation import run_simulation
            run_simulation(cfg, run_dir)
        else:
            from fedspeech.centralised import run_centralised
            run_centralised(cfg, run_dir)
    history = run_dir / "history.json"
    if history.is_file():
        import json
        records = [h for h in json.loads(history.read_text()) if "wer" in h]
        return float(records[-1]["wer"]) if records else None
    return None


if __name__ == "__main__":
    register_resolvers()
    main()
