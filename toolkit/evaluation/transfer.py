"""Transfer: how well a light model on frozen features predicts a label the encoder never saw.

Ridge regression (R^2) for numeric labels such as defect severity, logistic
regression (accuracy) for categorical ones such as defect type; both after
standardisation, cross-validated. When a group label is given the folds never
split a group (variants of one layout are near copies: letting them straddle
folds would reward memorising layouts). The same light model on another feature
matrix (downsampled pixels) is the baseline printed beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.model_selection import GroupKFold, KFold, StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from shared.errors import ConfigError, ContractError
from toolkit.calibration.pairs import LabelValue, encode_labels
from toolkit.calibration.similarity import check_matrix

Task = Literal["regression", "classification"]
N_SPLITS_DEFAULT = 5
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-3, 4, 15))


@dataclass(frozen=True)
class TransferResult:
    task: str
    score_name: str
    mean: float
    std: float
    folds: int
    n: int
    cv: str
    chance: float  # R^2 of predicting the mean (0) or accuracy of the majority class

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _targets(values: Sequence[LabelValue], task: Task) -> tuple[np.ndarray, np.ndarray]:
    """Rows with a usable target, and the targets (floats, or class codes)."""
    if task == "regression":
        keep, target = [], []
        for i, v in enumerate(values):
            if isinstance(v, bool) or v is None:
                continue
            try:
                number = float(v)
            except (TypeError, ValueError):
                continue
            if np.isfinite(number):
                keep.append(i)
                target.append(number)
        return np.array(keep, dtype=np.int64), np.array(target, dtype=np.float64)
    codes, _ = encode_labels(values)
    rows = np.flatnonzero(codes >= 0)
    return rows, codes[rows]


def _model(task: Task, seed: int) -> Pipeline:
    if task == "regression":
        return make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))
    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000, random_state=seed))


def transfer_score(
    features: np.ndarray,
    target: Sequence[LabelValue],
    task: Task,
    *,
    groups: Sequence[LabelValue] | None = None,
    n_splits: int = N_SPLITS_DEFAULT,
    seed: int = 0,
) -> TransferResult:
    """Cross-validated R^2 (regression) or accuracy (classification) of a light model."""
    matrix = check_matrix(features, "features")
    if len(target) != matrix.shape[0]:
        raise ContractError(f"{len(target)} targets for {matrix.shape[0]} feature rows")
    rows, y = _targets(target, task)
    if rows.size < 2 * n_splits:
        raise ConfigError(f"only {rows.size} rows carry the target: too few for {n_splits}-fold CV")
    x = matrix[rows]
    if task == "classification":
        counts = np.bincount(y)
        if (counts > 0).sum() < 2:
            raise ConfigError("the categorical target has a single value: nothing to classify")
        chance = float(counts.max() / counts.sum())
        scoring = "accuracy"
    else:
        if np.ptp(y) == 0:
            raise ConfigError("the numeric target is constant: nothing to regress")
        chance = 0.0
        scoring = "r2"
    with threadpool_limits(limits=1):  # BLAS threads only slow these small fits down (measured 10x)
        scores, cv_name = _cross_validate(task, seed, x, y, scoring, groups, rows, n_splits)
    return TransferResult(
        task=task,
        score_name=scoring,
        mean=float(np.mean(scores)),
        std=float(np.std(scores)),
        folds=n_splits,
        n=int(rows.size),
        cv=cv_name,
        chance=chance,
    )


def _cross_validate(
    task: Task,
    seed: int,
    x: np.ndarray,
    y: np.ndarray,
    scoring: str,
    groups: Sequence[LabelValue] | None,
    rows: np.ndarray,
    n_splits: int,
) -> tuple[np.ndarray, str]:
    """Fold scores; group-wise folds when there are enough groups."""
    group_codes = None
    if groups is not None:
        all_codes, _ = encode_labels(groups)
        group_codes = np.where(all_codes[rows] >= 0, all_codes[rows], -1 - np.arange(rows.size))
    if group_codes is not None and np.unique(group_codes).size >= n_splits:
        cv_name = f"GroupKFold({n_splits}) by group"
        scores = cross_val_score(_model(task, seed), x, y, groups=group_codes, scoring=scoring,
                                 cv=GroupKFold(n_splits=n_splits))
    else:
        splitter: KFold | StratifiedKFold = KFold(n_splits=n_splits, shuffle=True, random_state=seed)
        if task == "classification" and np.bincount(y)[np.bincount(y) > 0].min() >= n_splits:
            splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        cv_name = type(splitter).__name__ + f"({n_splits}, shuffled)"
        scores = cross_val_score(_model(task, seed), x, y, scoring=scoring, cv=splitter)
    return np.asarray(scores, dtype=np.float64), cv_name


def compare_transfer(
    feature_sets: Mapping[str, np.ndarray],
    target: Sequence[LabelValue],
    task: Task,
    *,
    groups: Sequence[LabelValue] | None = None,
    n_splits: int = N_SPLITS_DEFAULT,
    seed: int = 0,
) -> dict[str, TransferResult]:
    """The same light model and folds on every feature set (e.g. encoder vs pixels)."""
    return {
        name: transfer_score(feats, target, task, groups=groups, n_splits=n_splits, seed=seed)
        for name, feats in feature_sets.items()
    }
