"""The near-identity gate of hybrid duplicate confirmation, derived from data for one model.

The novelty service checks a result against library entries on pixels only when
its nearest entry is at least ``near_identity_similarity`` (cosine) away. Where
that gate belongs depends on the encoder: an untrained ResNet puts everything
above 0.96, a contrastively trained one spreads unrelated layouts far apart and
re-simulations of one layout anywhere from 0.5 up. So the gate is read off the
similarities the model in use gives to re-simulations of one layout: a low
quantile of the cosine similarity of same-``group`` pairs (two results of one
layout under another window, dose or focus), results with a defect left out
(a defect is not a re-simulation).

The gate only decides which results are worth the pixel checks; it never
confirms anything. Set too low it costs time, set too high it loses
re-simulations, so the quantile is low (1 % by default) and the data set should
hold re-simulations as different as the farm makes them (``lithowatch dataset
make --max-shift-px`` as large as the farm's window moves).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from shared.errors import ConfigError
from shared.index.thresholds import NearIdentityGate
from toolkit.calibration.pairs import LabelValue, pair_similarities, sample_pairs

NEAR_IDENTITY_QUANTILE_DEFAULT = 0.01
NEAR_IDENTITY_MAX_PAIRS = 20_000


def _is_defective(labels: Mapping[str, LabelValue]) -> bool:
    defect = labels.get("defect")
    return defect not in (None, "", "none", False)


def near_identity_gate(
    embeddings: np.ndarray,
    labels: Sequence[Mapping[str, LabelValue]],
    *,
    group_label: str = "group",
    quantile: float = NEAR_IDENTITY_QUANTILE_DEFAULT,
    max_pairs: int = NEAR_IDENTITY_MAX_PAIRS,
    seed: int = 0,
) -> NearIdentityGate:
    """The ``quantile`` of same-group pair similarities (defect-free results) as the gate.

    Raises :class:`~shared.errors.ConfigError` when the labels form no same-group pair.
    """
    if not 0.0 <= quantile < 0.5:
        raise ConfigError(f"the near-identity quantile must lie in [0, 0.5), got {quantile}")
    if len(labels) != len(embeddings):
        raise ConfigError(f"{len(labels)} label rows for {len(embeddings)} embeddings")
    groups = [None if _is_defective(row) else row.get(group_label) for row in labels]
    pairs = sample_pairs(groups, max_pairs=max_pairs, seed=seed)
    similarities = pair_similarities(np.asarray(embeddings), pairs.same)
    gate = float(np.quantile(similarities, quantile))
    return NearIdentityGate(
        similarity=round(min(1.0, max(0.0, gate)), 6),
        quantile=quantile,
        n_pairs=int(similarities.size),
        pair_min=round(float(similarities.min()), 6),
        pair_median=round(float(np.median(similarities)), 6),
        group_label=group_label,
    )
