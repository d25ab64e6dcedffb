"""Local training and evaluation loops, shared by federated clients and the centralised baseline."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from fedspeech.augment import SpeedPerturbation
from fedspeech.data.batching import UtteranceLoader
from fedspeech.models.base import SpeechModel


@dataclass
class TrainStats:
    loss: float
    steps: int
    num_examples: int
    num_seconds: float          # audio seconds trained on (all epochs)
    compute_s: float
    skipped_utterances: int = 0  # utterances of the client that could not be decoded


@dataclass
class EvalOutput:
    loss: float
    records: list[dict] = field(default_factory=list)   # one per utterance: id, speaker, ref, hyp, ...


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and precision in ("bf16", "fp16"):
        return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()


def proximal_term(model: SpeechModel, anchor: dict[str, torch.Tensor]) -> torch.Tensor:
    """FedProx's ||w - w_global||^2 over the exchanged (trainable) parameters."""
    terms = [((p - anchor[n]) ** 2).sum() for n, p in model.named_parameters() if n in anchor]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def scaled_param_groups(model: SpeechModel, lr: float, base_lr: float | None,
                        weight_decay: float) -> list[dict]:
    """The model's parameter groups at this round's `lr`.

    Groups with their own rate (e.g. `model.encoder_lr` / `head_lr`) are defined against the
    configured `train.lr` (`base_lr`); a round's `lr` from the server's schedule scales every group
    by `lr / base_lr`, so schedules and warm-ups apply to them as well. `base_lr=None`: `lr` as is.
    """
    reference = lr if base_lr is None else float(base_lr)
    groups = model.param_groups(reference, weight_decay)
    for group in groups:
        group["lr"] = group["lr"] * lr / reference
    return groups


def train_local(model: SpeechModel, loader: UtteranceLoader, device: torch.device, *, lr: float,
                base_lr: float | None = None, weight_decay: float = 0.0, epochs: int = 1,
                max_steps: int | None = None, grad_clip: float | None = None, grad_accum: int = 1,
                precision: str = "fp32", proximal_mu: float = 0.0,
                speed_perturb: Sequence[float] | None = None) -> TrainStats:
    """Train for `epochs` over the loader (or `max_steps` optimiser steps), fresh AdamW each call.

    `lr` is this round's learning rate and `base_lr` the configured `train.lr` it is relative to
    (see `scaled_param_groups`). `speed_perturb` lists speed factors, one drawn per batch from a
    generator seeded by the loader's seed; `num_seconds` counts the audio before perturbation.
    """
    model.train()
    exchanged = set(model.trainable_names())     # before param_groups may freeze some for K steps
    anchor = ({n: p.detach().clone() for n, p in model.named_parameters() if n in exchanged}
              if proximal_mu > 0 else {})
    optimizer = torch.optim.AdamW(scaled_param_groups(model, lr, base_lr, weight_decay))
    perturb = SpeedPerturbation(speed_perturb, seed=loader.seed) if speed_perturb else None
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and precision == "fp16")
    t0 = time.perf_counter()
    steps = micro = examples = 0
    seconds = loss_sum = 0.0
    done = False
    for _ in range(epochs):
        for batch in loader:
            batch.to(device)
            examples += len(batch)
            seconds += batch.seconds
            if perturb is not None:
                batch = perturb(batch)
            with _autocast(device, precision):
                loss = model.loss(batch)
                if proximal_mu > 0:
                    loss = loss + 0.5 * proximal_mu * proximal_term(model, anchor)
            scaler.scale(loss / grad_accum).backward()
            micro += 1
            loss_sum += float(loss.detach())
            if micro % grad_accum == 0:
                model.on_step(steps)
                if grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(
                        [p for g in optimizer.param_groups for p in g["params"]], grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                steps += 1
                if max_steps and steps >= max_steps:
                    done = True
                    break
        if done:
            break
    return TrainStats(loss=loss_sum / max(micro, 1), steps=steps, num_examples=examples,
                      num_seconds=seconds, compute_s=time.perf_counter() - t0,
                      skipped_utterances=len(loader.skipped))


@torch.no_grad()
def evaluate(model: SpeechModel, loader: UtteranceLoader, device: torch.device,
             precision: str = "fp32") -> EvalOutput:
    """Loss and one decoded record per utterance (references are the manifest's normalised text)."""
    model.eval()
    records: list[dict] = []
    loss_sum = 0.0
    n = 0
    for batch in loader:
        batch.to(device)
        with _autocast(device, precision):
            loss_sum += float(model.loss(batch)) * len(batch)
            preds = model.predict(batch)
        n += len(batch)
        lens = batch.audio_lens.cpu().tolist()
        for i, pred in enumerate(preds):
            rec = {"id": batch.ids[i], "speaker": batch.speakers[i], "ref": batch.texts[i],
                   "hyp": pred.text, "seconds": lens[i] / 16_000, "parsed": pred.parsed}
            truth = batch.attributes[i] if batch.attributes else {}
            for key, value in pred.attributes.items():
                rec[f"pred_{key}"] = value
                if key in truth:
                    rec[f"true_{key}"] = truth[key]
            records.append(rec)
    return EvalOutput(loss=loss_sum / max(n, 1), records=records)
