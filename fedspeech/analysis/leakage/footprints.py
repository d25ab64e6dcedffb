"""Per-layer footprints and weight deltas of recorded client updates, one client at a time.

Footprint (Mdhaffar et al., ICASSP 2022): run a fixed *indicator* set of utterances from speakers
who never trained through the client's updated model and through the global model it started
from; per layer, the difference of the hidden outputs averaged over each utterance's valid frames
and then over the utterances. Weight delta: the client's parameters minus the global ones, per
layer, flattened and (above `delta_dim` entries) sketched by a seeded sparse random projection,
which keeps inner products and so cosines and linear separability (Johnson-Lindenstrauss).

Two views of an update:
- `received`: the update as the server receives it (what `record_updates` stores);
- `released`: what a user-level DP round releases about this one client to the strongest outside
  attacker, who knows every other client's update exactly and subtracts them from the noised
  sum: the client's clipped delta plus Gaussian noise of the round's std on the sum. Each client
  gets its own noise draw, because the DP guarantee is about one client at a time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from flwr.app import Array, ArrayRecord
from sklearn.random_projection import SparseRandomProjection

from fedspeech.analysis.leakage.layers import LayerTaps
from fedspeech.data.batching import Batch, UtteranceLoader
from fedspeech.experiment_data import ExperimentData
from fedspeech.federation.parameters import load_record
from fedspeech.federation.privacy import clip_delta, noise_std_on_sum
from fedspeech.federation.update_recording import RecordedUpdates

VIEWS = ("received", "released")


def indicator_rows(data: ExperimentData, n: int) -> pd.DataFrame:
    """`n` utterances of speakers outside the training partition, dealt round-robin by speaker.

    Taken from the test split (the dev split when the test split has no such speakers), in
    utterance-id order within each speaker, so the set is the same for every run of the corpus.
    """
    trained = set(data.train_rows()["speaker"])
    for split in ("test", "dev"):
        rows = data.manifest.loc[(data.manifest["split"] == split)
                                 & ~data.manifest["speaker"].isin(trained)]
        if not rows.empty:
            break
    else:
        raise ValueError("no test or dev utterances of speakers outside the training partition: "
                         "the indicator set must come from speakers that never trained")
    rows = rows.sort_values(["speaker", "id"]).copy()
    rows["_rank"] = rows.groupby("speaker").cumcount()
    picked = rows.sort_values(["_rank", "speaker"]).head(int(n)).drop(columns="_rank")
    if len(picked) < n:
        print(f"indicator: only {len(picked)} utterances of unseen speakers exist "
              f"(asked for {n})", flush=True)
    return picked.sort_values(["speaker", "id"]).reset_index(drop=True)


def indicator_batches(rows: pd.DataFrame, data: ExperimentData,
                      batch_seconds: float) -> list[Batch]:
    """The indicator set decoded once and kept: every client is measured on the same batches."""
    return list(UtteranceLoader(rows, data.audio_cache, batch_seconds, shuffle=False))


@torch.no_grad()
def layer_means(taps: LayerTaps, batches: list[Batch], device: torch.device) -> dict[str, np.ndarray]:
    """Per layer: hidden outputs averaged over each utterance's valid frames, then over utterances."""
    taps.model.eval()
    sums: dict[str, np.ndarray] = {}
    count = 0
    for batch in batches:
        batch.to(device)
        for name, (states, valid) in taps.states(batch).items():
            mask = valid.unsqueeze(-1).to(states.dtype)
            per_utt = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
            total = per_utt.double().sum(0).cpu().numpy()
            sums[name] = sums[name] + total if name in sums else total
        count += len(batch)
    return {name: s / count for name, s in sums.items()}


def load_arrays(model: torch.nn.Module, arrays: dict[str, np.ndarray]) -> None:
    load_record(model, ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}))


class DeltaSketch:
    """Per-layer flattening of a weight delta, projected to at most `dim` entries (seeded)."""

    def __init__(self, taps: LayerTaps, names: list[str], shapes: dict[str, tuple[int, ...]],
                 dim: int, seed: int) -> None:
        self.groups: dict[str, list[str]] = {}
        for name in names:
            self.groups.setdefault(taps.layer_of(name), []).append(name)
        self.projections: dict[str, SparseRandomProjection] = {}
        for i, (layer, params) in enumerate(self.groups.items()):
            size = sum(int(np.prod(shapes[p])) for p in params)
            if size > dim:
                proj = SparseRandomProjection(n_components=dim, dense_output=True,
                                              random_state=seed + i)
                self.projections[layer] = proj.fit(np.zeros((1, size), dtype=np.float32))  # only the width is read

    def __call__(self, delta: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for layer, params in self.groups.items():
            flat = np.concatenate([delta[p].ravel() for p in params]).astype(np.float64)
            proj = self.projections.get(layer)
            out[layer] = proj.transform(flat[None])[0] if proj is not None else flat
        return out


@dataclass
class ReleasedView:
    """The run's DP clipping and noise, applied to one client's delta (see the module docstring)."""

    clip_norm: float
    clipping: str
    noise_multiplier: float
    virtual_cohort: int | None
    seed: int
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def __call__(self, delta: dict[str, np.ndarray], cohort: int) -> dict[str, np.ndarray]:
        clipped, *_ = clip_delta(delta, self.clip_norm, self.clipping)
        sigma = noise_std_on_sum(self.noise_multiplier, self.clip_norm, cohort, self.virtual_cohort)
        return {k: d + (self.rng.standard_normal(d.shape, dtype=np.float32) * sigma).astype(d.dtype)
                for k, d in clipped.items()}


@dataclass
class ClientFeatures:
    """One recorded update seen through one view: who it is, and its per-layer vectors."""

    round: int
    partition_id: int
    identity: str
    gender: str
    view: str
    footprint: dict[str, np.ndarray]
    delta: dict[str, np.ndarray]


def client_features(updates: RecordedUpdates, taps: LayerTaps, batches: list[Batch],
                    device: torch.device, *, delta_dim: int, seed: int,
                    released: ReleasedView | None = None,
                    cohort_of: dict[int, int] | None = None,
                    verbose: bool = True) -> Iterator[ClientFeatures]:
    """Footprints and delta sketches of every recorded update, streamed round by round.

    Memory holds the model, one round's global parameters and one client's update at a time.
    With `released`, each update is also yielded in the `released` view (`cohort_of`: sampled
    clients per round, which sets the noise on the sum).
    """
    model = taps.model
    sketch: DeltaSketch | None = None
    for rnd in updates.rounds:
        t0 = time.perf_counter()
        base = updates.global_arrays(rnd)
        if sketch is None:
            sketch = DeltaSketch(taps, list(base), {k: v.shape for k, v in base.items()},
                                 delta_dim, seed)
        load_arrays(model, base)
        reference = layer_means(taps, batches, device)
        rows = updates.index.loc[updates.index["round"] == rnd].sort_values("partition_id")
        for row in rows.to_dict("records"):
            arrays = updates.client_arrays(row)
            delta = {k: arrays[k] - base[k] for k in base}
            del arrays
            views = {"received": delta}
            if released is not None:
                cohort = (cohort_of or {}).get(rnd, len(rows))
                views["released"] = released(delta, cohort)
            for view, d in views.items():
                load_arrays(model, {k: (base[k] + d[k]).astype(base[k].dtype) for k in base})
                means = layer_means(taps, batches, device)
                yield ClientFeatures(
                    round=rnd, partition_id=int(row["partition_id"]),
                    identity=str(row["speakers"]) or f"partition {row['partition_id']}",
                    gender=str(row["gender"]), view=view,
                    footprint={k: means[k] - reference[k] for k in taps.names},
                    delta=sketch(d))
        if verbose:
            print(f"  round {rnd}: {len(rows)} client updates measured "
                  f"({time.perf_counter() - t0:.1f} s)", flush=True)
