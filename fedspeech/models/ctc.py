"""CTC loss over characters and greedy decoding, shared by every CTC model (`CTCModel`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedspeech.data.batching import Batch
from fedspeech.data.text import CharTokenizer
from fedspeech.models.base import Prediction, SpeechModel


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


class CTCModel(SpeechModel):
    """A character CTC recogniser: subclasses give `logits`; loss and greedy decoding follow."""

    tokenizer: CharTokenizer

    def logits(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, vocab) logits and the valid frames of each utterance."""
        raise NotImplementedError

    def loss(self, batch: Batch) -> torch.Tensor:
        logits, lens = self.logits(batch)
        return ctc_loss(logits, lens, batch.texts, self.tokenizer)

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Prediction]:
        logits, lens = self.logits(batch)
        return [Prediction(text=t) for t in greedy_decode(logits, lens, self.tokenizer)]
