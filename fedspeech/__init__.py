"""fedspeech: federated training and fine-tuning of speech recognisers across speakers."""

import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "conf"
# when this process imported fedspeech: run records measure elapsed time from the launch
LAUNCH_TIME = time.time()
