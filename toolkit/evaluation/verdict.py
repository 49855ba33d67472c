"""Does a learned embedding beat the baselines on real layouts? One table and a verdict.

:func:`compare_embeddings` embeds an evaluation data set (layouts never trained on) with
each candidate, computes the two baselines (32x32 pixel thumbnails and pHash) on the same
items, and measures, for every feature set in one run:

- retrieval by ``group`` (P@1, P@5, mAP@R: do the re-simulations of a layout window find
  each other first?);
- novelty AUROC when a share of the layouts *within* each family is held out (new cells
  of a known library), and when each family is held out in turn.

:func:`verdict` then says, for each candidate, whether it meets the bars: P@5 at or above
the target and at least ``margin`` above both baselines, and a novelty AUROC above both
baselines under both protocols (or both at the ceiling, 0.999).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.dataset import Dataset
from toolkit.calibration.data import dataset_labels
from toolkit.evaluation.baselines import baseline_features
from toolkit.evaluation.novelty import NoveltyFeatureSets
from toolkit.evaluation.novelty_commands import eval_novelty_protocols
from toolkit.evaluation.retrieval import retrieval_metrics

if TYPE_CHECKING:
    from shared.model.encoder import Encoder

BASELINES = ("pixels32", "phash")
TARGET_P_AT_5 = 0.90
MARGIN = 0.05
CEILING_AUROC = 0.999  # at this AUROC a tie with a baseline is a tie at the ceiling, not a loss


@dataclass(frozen=True)
class Row:
    """The figures of one feature set."""

    name: str
    p_at_1: float
    p_at_5: float
    map_at_r: float
    auroc_within_family: float | None
    auroc_families: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _holdout_label(labels: list[dict[str, Any]]) -> str:
    """New layouts within a family: cell kinds when the items carry them, else cells, else groups."""
    for name in ("cell_kind", "cell"):
        if all(row.get(name) is not None for row in labels):
            return name
    return "group"


def compare_embeddings(
    dataset: Dataset,
    embeddings: Mapping[str, np.ndarray],
    *,
    novelty: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> tuple[list[Row], dict[str, Any]]:
    """Rows for every embedding and both baselines (in that order) and the details behind them."""
    labels = dataset_labels(dataset)
    pixels, hashes = baseline_features(dataset, pixel_size=32, with_phash=True, progress=progress)
    assert hashes is not None
    sets: NoveltyFeatureSets = {name: (np.asarray(v), "cosine") for name, v in embeddings.items()}
    sets = {**sets, "pixels32": (pixels, "cosine"), "phash": (hashes, "hamming")}
    groups = [row.get("group") for row in labels]
    families = {row.get("family") for row in labels}
    details: dict[str, Any] = {"n_items": len(labels), "n_groups": len(set(groups))}
    table: dict[str, dict[str, dict[str, float]]] = {}
    if novelty:
        within = _holdout_label(labels)
        protocols = ("within-family", "families") if len(families) >= 2 else ("within-family",)
        summary = eval_novelty_protocols(sets, labels, protocols=protocols, holdout_within=within, seed=seed)
        table = summary["table"]
        details["novelty_holdout_within"] = within
    rows = []
    for name, (features, metric) in sets.items():
        assert metric in ("cosine", "hamming")
        r = retrieval_metrics(np.asarray(features), groups, label_name="group", metric=metric)
        rows.append(
            Row(
                name=name,
                p_at_1=round(r.precision_at[1], 4),
                p_at_5=round(r.precision_at[5], 4),
                map_at_r=round(r.map_at_r, 4),
                auroc_within_family=_auroc(table, "within-family", name),
                auroc_families=_auroc(table, "families", name),
            )
        )
    return rows, details


def _auroc(table: dict[str, dict[str, dict[str, float]]], protocol: str, name: str) -> float | None:
    value = table.get(protocol, {}).get(name, {}).get("auroc")
    return None if value is None else round(float(value), 4)


def embed_with(
    encoders: Mapping[str, Encoder], dataset: Dataset, progress: bool = True
) -> dict[str, np.ndarray]:
    """Every encoder's vectors of ``dataset`` (each item at its own nm_per_px)."""
    from shared.model.embed import embed_dataset

    return {name: embed_dataset(dataset, enc, progress=progress) for name, enc in encoders.items()}


def verdict(rows: list[Row], target: float = TARGET_P_AT_5, margin: float = MARGIN) -> list[str]:
    """One line per candidate: which bars it meets and which it misses."""
    base = {r.name: r for r in rows if r.name in BASELINES}
    lines = []
    for row in rows:
        if row.name in BASELINES:
            continue
        best_p5 = max(b.p_at_5 for b in base.values())
        missed = []
        if row.p_at_5 < target:
            missed.append(f"P@5 {row.p_at_5:.3f} < target {target:.2f}")
        if row.p_at_5 < best_p5 + margin:
            missed.append(f"P@5 not {margin:.2f} above the best baseline ({best_p5:.3f})")
        for protocol, value in (("within-family", row.auroc_within_family), ("families", row.auroc_families)):
            others = [getattr(b, f"auroc_{protocol.replace('-', '_')}") for b in base.values()]
            at_ceiling = value is not None and value >= CEILING_AUROC
            if value is not None and not at_ceiling and any(o is not None and value <= o for o in others):
                missed.append(f"novelty AUROC ({protocol}) {value:.3f} not above both baselines")
        lines.append(f"{row.name}: " + ("beats the baselines" if not missed else "; ".join(missed)))
    return lines


def format_table(rows: list[Row], target: float = TARGET_P_AT_5) -> str:
    """A fixed-width table; the target is the seed's retrieval bar."""
    head = f"{'features':<28} {'P@1':>6} {'P@5':>6} {'mAP@R':>6} {'AUROC new cells':>16} "
    head += f"{'AUROC new family':>17}"
    lines = [head, "-" * len(head)]
    for r in rows:
        within = "-" if r.auroc_within_family is None else f"{r.auroc_within_family:.3f}"
        fam = "-" if r.auroc_families is None else f"{r.auroc_families:.3f}"
        figures = f"{r.p_at_1:>6.3f} {r.p_at_5:>6.3f} {r.map_at_r:>6.3f}"
        lines.append(f"{r.name:<28} {figures} {within:>16} {fam:>17}")
    lines.append(f"{'target':<28} {'':>6} {target:>6.2f}")
    return "\n".join(lines)
