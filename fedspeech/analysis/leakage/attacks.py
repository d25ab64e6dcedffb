"""The two attacks on per-client vectors (footprints or weight deltas) of one layer.

- Gender: a linear classifier (standardised features, logistic regression) evaluated by
  cross-validation whose folds split by speaker (`StratifiedGroupKFold`), so no speaker is in the
  training and the test fold at once; chance is the majority-class rate of the evaluated set.
- Speaker verification: cosine scores between two updates of the same speaker from different
  rounds (target trials) and of different speakers (non-target trials); the EER is read off
  `sklearn.metrics.roc_curve`. 0.5 is chance, 0 is perfect linking.

Before either attack the vectors of each round are centred on that round's mean: an attacker at
the server sees the whole cohort of a round, and the centring removes what every client of the
round shares (the common learning direction from the same global model).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_curve
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

MAX_FOLDS = 5


def center_by_round(x: np.ndarray, rounds: np.ndarray) -> np.ndarray:
    """Subtract from each row the mean of the rows of its round."""
    out = np.array(x, dtype=np.float64, copy=True)
    for rnd in np.unique(rounds):
        rows = rounds == rnd
        out[rows] -= out[rows].mean(0)
    return out


@dataclass(frozen=True)
class GenderResult:
    accuracy: float
    chance: float
    n_clients: int
    n_speakers: int
    folds: int


def gender_attack(x: np.ndarray, genders: np.ndarray, speakers: np.ndarray,
                  seed: int = 0) -> GenderResult:
    """Cross-validated accuracy of predicting each update's gender, folds grouped by speaker.

    Needs at least two speakers of each gender; otherwise accuracy is NaN.
    """
    genders, speakers = np.asarray(genders), np.asarray(speakers)
    classes = np.unique(genders)
    per_class = [len(np.unique(speakers[genders == c])) for c in classes]
    n_speakers = len(np.unique(speakers))
    if len(classes) < 2 or min(per_class) < 2:
        return GenderResult(float("nan"), float("nan"), len(genders), n_speakers, 0)
    folds = min(MAX_FOLDS, min(per_class))
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    predicted = cross_val_predict(classifier, x, genders, groups=speakers, cv=cv)
    _, counts = np.unique(genders, return_counts=True)
    return GenderResult(accuracy=float(np.mean(predicted == genders)),
                        chance=float(counts.max() / counts.sum()), n_clients=len(genders),
                        n_speakers=n_speakers, folds=folds)


@dataclass(frozen=True)
class VerificationResult:
    eer: float
    n_target: int
    n_nontarget: int


def equal_error_rate(labels: np.ndarray, scores: np.ndarray) -> float:
    """The operating point where false acceptances and false rejections are equally frequent."""
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1.0 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2)


def speaker_verification(x: np.ndarray, identities: np.ndarray,
                         rounds: np.ndarray) -> VerificationResult:
    """EER of cosine scoring; NaN when no speaker has updates from two recorded rounds."""
    identities, rounds = np.asarray(identities), np.asarray(rounds)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = np.divide(x, norms, out=np.zeros_like(x, dtype=np.float64), where=norms > 0)
    scores = unit @ unit.T
    i, j = np.triu_indices(len(x), k=1)
    same = identities[i] == identities[j]
    target = same & (rounds[i] != rounds[j])
    keep = target | ~same
    n_target = int(target.sum())
    n_nontarget = int((~same).sum())
    if n_target == 0 or n_nontarget == 0:
        return VerificationResult(float("nan"), n_target, n_nontarget)
    eer = equal_error_rate(target[keep].astype(int), scores[i[keep], j[keep]])
    return VerificationResult(eer, n_target, n_nontarget)
