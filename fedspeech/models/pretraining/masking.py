"""Span masking with transformers' `_compute_mask_indices`, reproducible under torch's seed.

The helper draws from NumPy's global generator; here it is seeded from torch's (which every
client seeds per round) and NumPy's state is put back afterwards, so masks repeat exactly in a
rerun and nobody else's NumPy draws change.
"""

from __future__ import annotations

import numpy as np
import torch


def span_mask(valid: torch.Tensor, mask_prob: float, mask_length: int, min_masks: int = 2,
              seed: int | None = None) -> torch.Tensor:
    """(B, F) bool mask of time spans inside each row's valid frames (`valid`, bool (B, F))."""
    from transformers.models.hubert.modeling_hubert import _compute_mask_indices

    frames = valid.shape[1]
    length = max(1, min(int(mask_length), frames))
    state = np.random.get_state()
    try:
        np.random.seed(int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else seed)
        mask = _compute_mask_indices((valid.shape[0], frames), mask_prob=float(mask_prob),
                                     mask_length=length, attention_mask=valid.long().cpu(),
                                     min_masks=min_masks)
    finally:
        np.random.set_state(state)
    return torch.from_numpy(mask).to(valid.device) & valid
