"""Which items form the library, the known queries and the novel queries (seeded).

Three ways to choose the novel queries: a random share of groups (the default),
every item whose ``holdout_label`` is in ``holdout_values`` (e.g. a whole family),
or, with ``holdout_within``, a random share of the values of a label (``cell``,
``group``) inside each family: new members of a known library. The library and
the known queries always come from the remaining items in the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.errors import ConfigError
from toolkit.calibration.pairs import LabelValue


@dataclass(frozen=True)
class CalibrationSplit:
    library: np.ndarray  # item indices
    known_cal: np.ndarray
    known_test: np.ndarray
    novel_cal: np.ndarray
    novel_test: np.ndarray
    novel_rule: str
    details: Mapping[str, Any] = field(default_factory=dict)  # how the novel queries were chosen

    @property
    def n_queries(self) -> int:
        return int(self.known_cal.size + self.known_test.size + self.novel_cal.size + self.novel_test.size)

    def describe(self) -> dict[str, Any]:
        return {
            "novel_rule": self.novel_rule,
            "n_library": int(self.library.size),
            "n_known_cal": int(self.known_cal.size),
            "n_known_test": int(self.known_test.size),
            "n_novel_cal": int(self.novel_cal.size),
            "n_novel_test": int(self.novel_test.size),
            **self.details,
        }


def group_keys(labels: Sequence[Mapping[str, LabelValue]], group_label: str) -> list[str]:
    """Each item's group; an item without the label is a group of its own."""
    keys = []
    for i, row in enumerate(labels):
        value = row.get(group_label)
        keys.append(f"\x00item{i}" if value is None else str(value))
    return keys


def _split_by_group(
    items: np.ndarray, keys: list[str], cal_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Calibration / test halves with no group in both; by item when there is one group only."""
    groups = sorted({keys[i] for i in items})
    if len(groups) >= 2:
        order = [groups[j] for j in rng.permutation(len(groups))]
        n_cal = min(max(1, round(cal_fraction * len(groups))), len(groups) - 1)
        cal_groups = set(order[:n_cal])
        in_cal = np.array([keys[i] in cal_groups for i in items], dtype=bool)
    else:
        if items.size < 2:
            raise ConfigError("a query population has fewer than two items: cannot split cal/test")
        in_cal = np.zeros(items.size, dtype=bool)
        n_cal = min(max(1, round(cal_fraction * items.size)), items.size - 1)
        in_cal[rng.permutation(items.size)[:n_cal]] = True
    return np.sort(items[in_cal]), np.sort(items[~in_cal])


NO_FAMILY = "(no family)"


def _held_out_within_families(
    labels: Sequence[Mapping[str, LabelValue]],
    holdout_within: str,
    family_label: str,
    share: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict[str, list[int]]]:
    """Items whose ``holdout_within`` value was drawn as novel, and per family [held out, values].

    Items without a family label form one family of their own (:data:`NO_FAMILY`);
    items without a ``holdout_within`` value are never held out.
    """
    if not 0.0 < share < 1.0:
        raise ConfigError(f"holdout share must be in (0, 1), got {share}")
    families = [NO_FAMILY if row.get(family_label) is None else str(row[family_label]) for row in labels]
    values_of: dict[str, set[str]] = {}
    for family, row in zip(families, labels, strict=True):
        value = row.get(holdout_within)
        values_of.setdefault(family, set())
        if value is not None:
            values_of[family].add(str(value))
    if not any(values_of.values()):
        raise ConfigError(f"no item carries the label {holdout_within!r}: nothing to hold out in families")
    thin = {family: len(values) for family, values in values_of.items() if len(values) < 2}
    if thin:
        shown = ", ".join(f"{family!r} ({n})" for family, n in sorted(thin.items())[:12])
        raise ConfigError(
            f"holding out {holdout_within!r} values within each {family_label!r} needs two or more values "
            f"per family (one on each side); too few in: {shown}"
        )
    chosen: set[tuple[str, str]] = set()
    counts: dict[str, list[int]] = {}
    for family in sorted(values_of):
        values = sorted(values_of[family])
        n_out = min(max(1, round(share * len(values))), len(values) - 1)
        chosen.update((family, values[j]) for j in rng.choice(len(values), n_out, replace=False))
        counts[family] = [n_out, len(values)]
    novel = np.zeros(len(labels), dtype=bool)
    for i, (family, row) in enumerate(zip(families, labels, strict=True)):
        value = row.get(holdout_within)
        novel[i] = value is not None and (family, str(value)) in chosen
    return novel, counts


def split_for_calibration(
    labels: Sequence[Mapping[str, LabelValue]],
    *,
    group_label: str = "group",
    holdout_label: str | None = None,
    holdout_values: Sequence[str] | None = None,
    holdout_within: str | None = None,
    holdout_share: float = 0.3,
    family_label: str = "family",
    query_fraction: float = 0.3,
    novel_group_fraction: float = 0.15,
    cal_fraction: float = 0.5,
    seed: int = 0,
) -> CalibrationSplit:
    """Library, known queries (other members of library groups) and novel queries, each query
    population halved into calibration and test parts with no group in both.

    Novel queries are, in order of precedence: items with ``holdout_label`` in
    ``holdout_values``; with ``holdout_within``, every item carrying one of the
    ``holdout_share`` of that label's values drawn within each ``family_label``
    value (each family keeps at least one value on each side); otherwise
    ``novel_group_fraction`` of the ``group_label`` values.
    """
    if holdout_label is not None and holdout_within is not None:
        raise ConfigError("hold out either by --holdout-label/--holdout-values or within families, not both")
    if not 0.0 < query_fraction < 1.0:
        raise ConfigError(f"query fraction must be in (0, 1), got {query_fraction}")
    if not 0.0 < cal_fraction < 1.0:
        raise ConfigError(f"calibration fraction must be in (0, 1), got {cal_fraction}")
    rng = np.random.default_rng(seed)
    n = len(labels)
    details: dict[str, Any] = {}
    keys = group_keys(labels, group_label)
    if holdout_label is not None:
        if not holdout_values:
            raise ConfigError("--holdout-label needs --holdout-values (comma-separated)")
        wanted = {str(v) for v in holdout_values}
        values = [row.get(holdout_label) for row in labels]
        novel = np.array([v is not None and str(v) in wanted for v in values], dtype=bool)
        if not novel.any():
            seen = sorted({str(v) for v in values if v is not None})[:12]
            raise ConfigError(f"no item has {holdout_label} in {sorted(wanted)}; values seen: {seen}")
        rule = f"{holdout_label} in {sorted(wanted)}"
    elif holdout_within is not None:
        novel, counts = _held_out_within_families(labels, holdout_within, family_label, holdout_share, rng)
        n_out = sum(c[0] for c in counts.values())
        n_values = sum(c[1] for c in counts.values())
        rule = (
            f"{holdout_share:.0%} of the {holdout_within} values within each {family_label} held out at "
            f"random ({n_out} of {n_values} values in {len(counts)} families, seed {seed})"
        )
        details = {
            "holdout_within": holdout_within,
            "holdout_share": holdout_share,
            "family_label": family_label,
            "held_out_per_family": {f: {"held_out": c[0], "values": c[1]} for f, c in counts.items()},
        }
    else:
        if not 0.0 < novel_group_fraction < 1.0:
            raise ConfigError(f"novel group fraction must be in (0, 1), got {novel_group_fraction}")
        groups = sorted(set(keys))
        if len(groups) < 3:
            raise ConfigError(f"need at least 3 values of {group_label!r} to hold some out as novel")
        n_novel = min(max(2, round(novel_group_fraction * len(groups))), len(groups) - 1)
        chosen = {groups[j] for j in rng.choice(len(groups), n_novel, replace=False)}
        novel = np.array([k in chosen for k in keys], dtype=bool)
        rule = f"{n_novel} of {len(groups)} {group_label} values held out at random (seed {seed})"
    if novel.all():
        raise ConfigError("every item is held out as novel: nothing left for the library")

    library: list[int] = []
    known_queries: list[int] = []
    members: dict[str, list[int]] = {}
    for i in np.flatnonzero(~novel):
        members.setdefault(keys[i], []).append(int(i))
    for key in sorted(members):
        group = members[key]
        if len(group) < 2:
            library.extend(group)
            continue
        n_query = min(max(1, int(query_fraction * len(group))), len(group) - 1)
        picked = set(rng.choice(group, n_query, replace=False).tolist())
        known_queries.extend(i for i in group if i in picked)
        library.extend(i for i in group if i not in picked)
    if not known_queries:
        raise ConfigError(f"no known group has two or more members ({group_label!r}): no known queries")
    known_cal, known_test = _split_by_group(np.array(known_queries), keys, cal_fraction, rng)
    novel_cal, novel_test = _split_by_group(np.flatnonzero(novel), keys, cal_fraction, rng)
    del n
    return CalibrationSplit(
        np.sort(np.array(library)), known_cal, known_test, novel_cal, novel_test, rule, details
    )
