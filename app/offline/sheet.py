"""The contact sheet of ``dedupe --sheet``: one row per group, the kept result beside its duplicates.

Each row is an explanation panel (:func:`services.explain.render.render_panel`): the kept
result's mask and print, then each duplicate's print captioned with its method and distance;
rows are stacked, left-aligned, on a white page.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app.offline.dedupe import Group, Member
from services.explain.render import KNOWN_BGR, NOVEL_BGR, Tile, encode_panel_png, render_panel
from shared.errors import ConfigError

MAX_GROUPS_DEFAULT = 100
MAX_DUPLICATES_SHOWN_DEFAULT = 6


def _image(member: Member, which: str) -> np.ndarray | None:
    try:
        return member.item.load_mask() if which == "mask" else member.item.load_simulated()
    except ConfigError:
        return None  # read when deduped, gone since: an empty tile


def _duplicate_tile(member: Member, kept_id: str) -> Tile:
    record = member.duplicate
    assert record is not None
    lines = [member.id[:30], f"d {record.distance:.3f}"]
    shift = record.details.get("shift_px")
    if isinstance(shift, list) and len(shift) == 2:
        lines[1] += f"  shift {shift[0]},{shift[1]}"
    if record.duplicate_of != kept_id:  # a duplicate of another duplicate of the kept result
        lines.append(f"of {record.duplicate_of}"[:30])
    return Tile(_image(member, "print"), f"{record.method} duplicate", lines, NOVEL_BGR)


def group_row(group: Group, number: int, max_duplicates: int) -> np.ndarray:
    kept = group.kept
    lone = kept.item.mask_path == kept.item.simulated_path
    tiles = [] if lone else [Tile(_image(kept, "mask"), "kept: mask", [kept.id[:30]], KNOWN_BGR)]
    tiles.append(Tile(_image(kept, "print"), "kept" if lone else "kept: print", [kept.id[:30]], KNOWN_BGR))
    shown = group.duplicates[:max_duplicates]
    tiles.extend(_duplicate_tile(member, kept.id) for member in shown)
    more = len(group.duplicates) - len(shown)
    title = f"group {number}: {kept.id} and {len(group.duplicates)} duplicate(s)"
    if more:
        title += f" ({more} more not shown)"
    return render_panel(tiles, title)


def render_sheet(groups: Sequence[Group], max_groups: int = MAX_GROUPS_DEFAULT,
                 max_duplicates: int = MAX_DUPLICATES_SHOWN_DEFAULT) -> np.ndarray:
    """A BGR uint8 page of the first ``max_groups`` groups (a one-line page when there are none)."""
    rows = [group_row(group, n, max_duplicates) for n, group in enumerate(groups[:max_groups], start=1)]
    if not rows:
        rows = [render_panel([Tile(None, "no duplicates found")], "no duplicates found")]
    left = len(groups) - len(rows) if groups else 0
    if left > 0:
        rows.append(render_panel([Tile(None, f"{left} more groups")], f"{left} more groups in the JSON"))
    width = max(row.shape[1] for row in rows)
    gap = np.full((8, width, 3), 255, np.uint8)
    page: list[np.ndarray] = []
    for row in rows:
        padded = np.full((row.shape[0], width, 3), 255, np.uint8)
        padded[:, : row.shape[1]] = row
        page += [padded, gap]
    return np.vstack(page[:-1])


def write_sheet(path: Path, groups: Sequence[Group], max_groups: int = MAX_GROUPS_DEFAULT,
                max_duplicates: int = MAX_DUPLICATES_SHOWN_DEFAULT) -> tuple[int, int]:
    """Write the sheet as PNG; returns its (width, height) in pixels."""
    sheet = render_sheet(groups, max_groups, max_duplicates)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_panel_png(sheet))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the contact sheet ({exc.strerror or exc})") from exc
    return sheet.shape[1], sheet.shape[0]
