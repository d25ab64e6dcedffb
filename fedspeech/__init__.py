"""fedspeech: federated training and fine-tuning of speech recognisers across speakers."""

import time
import zlib
from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "conf"
# when this process imported fedspeech: run records measure elapsed time from the launch
LAUNCH_TIME = time.time()



def _dir_name(text: str, limit: int = 120) -> str:
    """A run-dir name made from overrides: no path separators, short enough for any filesystem."""
    name = str(text).replace("/", "_").replace("\\", "_")
    return name if len(name) <= limit else name[: limit - 9] + "-" + format(zlib.crc32(name.encode()), "08x")


if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
if not OmegaConf.has_resolver("dir_name"):
    OmegaConf.register_new_resolver("dir_name", _dir_name)
