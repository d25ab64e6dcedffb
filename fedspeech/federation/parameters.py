"""Parameter exchange: only trainable tensors travel, by name, as a Flower ArrayRecord."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord

from fedspeech.models.base import SpeechModel


def trainable_state(model: SpeechModel) -> dict[str, torch.Tensor]:
    """Detached CPU copies of the exchanged tensors, in a stable (module) order."""
    names = set(model.trainable_names())
    return {n: p.detach().cpu() for n, p in model.named_parameters() if n in names}


def to_record(model: SpeechModel) -> ArrayRecord:
    return ArrayRecord(torch_state_dict=trainable_state(model))


def load_record(model: SpeechModel, record: ArrayRecord) -> None:
    """Copy received tensors into the model; names must be exactly the exchanged set."""
    expected = set(model.trainable_names())
    received = set(record.keys())
    if received != expected:
        missing, extra = sorted(expected - received)[:5], sorted(received - expected)[:5]
        raise KeyError(f"parameter names differ from the model's trainable set: "
                       f"missing {missing}, unexpected {extra}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in record.to_torch_state_dict().items():
            params[name].copy_(tensor.to(params[name].dtype))


def record_nbytes(record: ArrayRecord) -> int:
    """Bytes of tensor data in a record (what a round sends per client and direction)."""
    return sum(len(arr.data) for arr in record.values())
