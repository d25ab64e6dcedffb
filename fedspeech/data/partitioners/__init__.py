"""Client partitioners of a manifest's train split (public API re-exported by `fedspeech.data.partition`)."""

from .base import EXCLUDED_COLUMNS, Assignment, Partitioner, PartitionError, natural_key
from .natural import GroupedSpeakersPartitioner, SpeakerPartitioner
from .output import ClientIndex, client_rows, read_partition, write_partition
from .skewed import DirichletPartitioner, IidPartitioner, SizeSkewPartitioner
from .tedlium_paper import (PAPER_EVAL_SETS, TedliumPaperPartitioner, map_statistics, paper_eval_ids,
                            paper_eval_sets, read_paper_map)

__all__ = [
    "EXCLUDED_COLUMNS", "Assignment", "Partitioner", "PartitionError", "natural_key",
    "SpeakerPartitioner", "GroupedSpeakersPartitioner", "IidPartitioner", "DirichletPartitioner",
    "SizeSkewPartitioner", "TedliumPaperPartitioner", "write_partition", "read_partition", "client_rows",
    "ClientIndex",
    "read_paper_map", "paper_eval_sets", "paper_eval_ids", "map_statistics", "PAPER_EVAL_SETS",
]
