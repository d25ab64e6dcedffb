"""Client partitions of a manifest's train split: which client holds which utterance.

A partitioner (built by Hydra from `conf/partitioner/*.yaml`) labels every train utterance with
a client or excludes it with a reason; `write_partition` turns the labels into consecutive client
ids and writes `clients.csv`, `summary.json`, `excluded.csv` and `client_sizes.png`. The
implementations live in `fedspeech.data.partitioners`; this module is the stable import path.

`python -m fedspeech.data.partition MAP` prints statistics of the TED-LIUM 3 paper client map.
"""

from __future__ import annotations

import argparse
import json

from fedspeech.data.partitioners import *  # noqa: F401,F403  (the public API)
from fedspeech.data.partitioners import __all__, map_statistics


def main(argv: list[str] | None = None) -> None:
    """Print statistics of a published client map (no audio needed)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("map_path", help="all_clients.csv.gz or the authors' folder of client_<i>/ CSVs")
    args = parser.parse_args(argv)
    print(json.dumps(map_statistics(args.map_path), indent=1))


if __name__ == "__main__":
    main()
