"""fedspeech: federated training and fine-tuning of speech recognisers across speakers."""

import time
from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "conf"
# when this process imported fedspeech: run records measure elapsed time from the launch
LAUNCH_TIME = time.time()

if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
