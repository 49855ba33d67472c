"""The reference distribution of novelty scores that the drift watch compares the stream with.

What a result of a *known* layout scores in service: its ``novelty_score`` against a library
that holds its layout's other results. Calibration measures exactly that on the data set the
library is built from: every known item (not one of the held-out novel ones) scored against the
other known items, leaving itself out. The held-out split's known queries would do too, but
their library lacks the other queries of the same layout, so they score higher than a farm
re-simulating library layouts does, and there are fewer of them.

The distribution is stored compactly in the thresholds file
(:class:`~shared.index.thresholds.ScoreReference`): quantiles for a KS distance and equal-mass
bins (deciles by default) for a population stability index
(:mod:`services.novelty.drift` computes both over a sliding window of live scores).
"""

from __future__ import annotations

import numpy as np

from shared.errors import ContractError
from shared.index.thresholds import ScoreReference
from toolkit.calibration.similarity import top1_cosine

REFERENCE_QUANTILES = 101
REFERENCE_BINS = 10
MIN_REFERENCE_SCORES = 20


def leave_one_out_scores(embeddings: np.ndarray) -> np.ndarray:
    """Each row's ``novelty_score`` against the other rows (L2-normalised input)."""
    _, best = top1_cosine(embeddings, embeddings, exclude_self=True)
    return np.clip(1.0 - best.astype(np.float64), 0.0, 2.0)


def score_reference(
    scores: np.ndarray,
    *,
    quantiles: int = REFERENCE_QUANTILES,
    bins: int = REFERENCE_BINS,
    source: str | None = None,
) -> ScoreReference:
    """Quantiles and equal-mass bins of ``scores``.

    Bin edges are score values of the sample (its ``1/bins, 2/bins, ...`` quantiles, lower
    method), kept only when above the smallest score and distinct, so no bin is empty: ties
    (many identical scores) merge bins instead.
    """
    values = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if values.size < MIN_REFERENCE_SCORES:
        raise ContractError(
            f"a score reference needs at least {MIN_REFERENCE_SCORES} scores, got {values.size}"
        )
    if not np.isfinite(values).all():
        raise ContractError("scores for the reference contain NaN or infinity")
    if quantiles < 2 or bins < 1:
        raise ContractError("a score reference needs at least 2 quantiles and 1 bin")
    probabilities = np.linspace(0.0, 1.0, quantiles)
    quantile_values = np.quantile(values, probabilities)
    cut = np.quantile(values, np.arange(1, bins) / bins, method="lower")
    edges = np.unique(cut[cut > values[0]])
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=edges.size + 1)
    proportions = counts / values.size
    return ScoreReference(
        quantiles=[float(v) for v in quantile_values],
        bin_edges=[float(v) for v in edges],
        bin_proportions=[float(p) for p in proportions],
        n_scores=int(values.size),
        **({"source": source} if source is not None else {}),
    )
