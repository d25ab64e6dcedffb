"""CTC loss over characters and greedy decoding, shared by every CTC model."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedspeech.data.text import CharTokenizer


def encode_targets(texts: list[str], tokenizer: CharTokenizer,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ids = [tokenizer.encode(t) for t in texts]
    lens = torch.tensor([len(i) for i in ids], dtype=torch.long)
    flat = torch.tensor([x for i in ids for x in i], dtype=torch.long)
    return flat.to(device), lens.to(device)


def ctc_loss(logits: torch.Tensor, lens: torch.Tensor, texts: list[str],
             tokenizer: CharTokenizer) -> torch.Tensor:
    """Mean CTC loss per target character (PyTorch's 'mean'); infeasible alignments give 0."""
    targets, target_lens = encode_targets(texts, tokenizer, logits.device)
    log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)   # (T, B, V)
    return F.ctc_loss(log_probs, targets, lens, target_lens, blank=tokenizer.blank_id,
                      reduction="mean", zero_infinity=True)


def greedy_decode(logits: torch.Tensor, lens: torch.Tensor, tokenizer: CharTokenizer) -> list[str]:
    best = logits.argmax(-1).cpu()
    return [tokenizer.decode_ctc(best[i, : int(n)].tolist()) for i, n in enumerate(lens.cpu())]
