"""Real-layout re-simulations for the dedupe benchmark: SKY130 cells in rows, windows moved by a few pixels.

The cells of a standard-cell library (SkyWater ``sky130_fd_sc_hd``, Apache-2.0) are
read and abutted into rows as ``lithowatch dataset from-layout --rows`` does
(:mod:`toolkit.litho.cell_rows`), on the li1 routing layer and the licon and mcon
contact layers (contact arrays in diffusion and along the rails). Windows
(256 px at 4 nm/px) are tiled over the rows; besides the row windows, windows at
the ends of the rows show a block edge, so a few percent of the window or less
is drawn (the sparse clips). Each chosen window (one *group*) is simulated

- at its place (role ``original``),
- three more times with the window moved 1-16 px (``duplicate``; the larger
  axis at least 1 px, at most 16, the other anywhere in that range), at the
  same dose and focus: a farm's re-simulation of the same layout;
- for some windows, once with the window moved 17-31 px (``far``, a group of its
  own): an overlapping window whose strips show drawn content the original's
  window does not, which strict dedupe must keep.

Windows whose drawn pattern repeats one already chosen (a cell sharing another's
layout) are skipped with :class:`toolkit.litho.layout_import.WindowPatterns`, so a
merge between groups is a merge of different layouts. Items are written as PNG
bytes into a cache (no pickle) and shuffled by the caller, so a re-simulation can
arrive before its original.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from toolkit.litho.cell_rows import (
    LayerSpec,
    Placement,
    RowWindow,
    place_rows,
    placed_layout,
    read_cell,
    row_cells,
)
from toolkit.litho.farm import context_pad_px, simulate_clip
from toolkit.litho.geometry import Layout, rasterize
from toolkit.litho.layout_import import WindowPatterns, dose_to_size
from toolkit.litho.simulator import LithoSimulator

REAL_CACHE_VERSION = 2
MIN_DRAWN = 0.002  # share of a window drawn, at least (an empty clip is not a layout)
SIZE_PX = 256
NM_PER_PX = 4.0
SHRINK = 0.37
ROW_WIDTH_NM = 16384.0
LAYERS = ("li1=67/20", "licon=66/44", "mcon=67/44")


@dataclass(frozen=True)
class RealClip:
    """One simulated window: PNG bytes and the truth the figures are computed from."""

    result_id: str
    group: str
    family: str  # the mask layer
    role: str  # "original" | "duplicate" | "far"
    window_x_nm: float  # lower-left corner of the window on the placed rows
    window_y_nm: float
    shift_x_px: int  # window moved from the group's original
    shift_y_px: int
    print_fill: float  # share of the clip printed
    edge: bool  # a block-edge window (sparse)
    mask_png: bytes
    print_png: bytes


def _png8(image: np.ndarray) -> bytes:
    pixels = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    ok, buffer = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return bytes(buffer.tobytes())


def _window_origins(placements: list[Placement], window_nm: float) -> list[tuple[float, float, bool]]:
    """Row windows side by side (as ``row_windows``) and one block-edge window past each row's end."""
    row_height = placements[0].cell.height_nm
    rows: dict[float, float] = {}
    for p in placements:
        rows[p.y_nm] = max(rows.get(p.y_nm, 0.0), p.x_nm + p.cell.width_nm)
    origins: list[tuple[float, float, bool]] = []
    for row_y, end in sorted(rows.items()):
        y0 = row_y + (row_height - window_nm) / 2.0
        n = max(1, int(end // window_nm))
        origins.extend((i * window_nm, y0, False) for i in range(n - 1))  # the last is left for the edge
        origins.append((end - window_nm * 0.08, y0, True))  # 8 % of the window over the last cell
    return origins


def _shift(rng: np.random.Generator, low: int, high: int) -> tuple[int, int]:
    """A window move whose larger axis lies in [low, high] px, the other within +-high, random signs."""
    major = int(rng.integers(low, high + 1)) * int(rng.choice([-1, 1]))
    minor = int(rng.integers(-high, high + 1))
    return (major, minor) if rng.random() < 0.5 else (minor, major)


def _drawn_shift(rng: np.random.Generator, layout: Layout, origin: tuple[float, float], low: int,
                 high: int) -> tuple[int, int]:
    """A move (as :func:`_shift`) after which the window still shows some drawn layout."""
    for _ in range(20):
        dx, dy = _shift(rng, low, high)
        at = (origin[0] + dx * NM_PER_PX, origin[1] + dy * NM_PER_PX)
        if float(rasterize(layout, at, SIZE_PX, NM_PER_PX).mean()) >= MIN_DRAWN:
            break
    return dx, dy


@lru_cache(maxsize=1)
def _rows(seed: int, cells_dir: Path) -> tuple[Placement, ...]:
    rng = np.random.default_rng(seed)
    specs = [LayerSpec.parse(text) for text in LAYERS]
    cells, _ = row_cells([read_cell(path, specs, SHRINK) for path in sorted(cells_dir.glob("*.gds"))])
    return tuple(place_rows(cells, ROW_WIDTH_NM, rng))


def shows_moved_window(a: RealClip, b: RealClip, shift: tuple[int, int], seed: int, cells_dir: Path) -> bool:
    """Whether ``b``'s mask is, pixel for pixel, the layout under ``a``'s window moved by ``shift``
    (``b[y, x] == a[y + dy, x + dx]``; mask rows run along +y of the layout): the truth for a merge of
    two windows from different sets (a cell repeating another's drawn pattern)."""
    if a.family != b.family:
        return False
    layout = placed_layout(list(_rows(seed, cells_dir)), a.family, a.family)
    moved = rasterize(layout, (a.window_x_nm + shift[0] * NM_PER_PX, a.window_y_nm + shift[1] * NM_PER_PX),
                      SIZE_PX, NM_PER_PX)
    mask_b = cv2.imdecode(np.frombuffer(b.mask_png, np.uint8), cv2.IMREAD_GRAYSCALE)
    if mask_b is None:
        return False
    return int(np.count_nonzero(np.abs(_u8(moved).astype(np.int16) - mask_b.astype(np.int16)) > 2)) <= 4


def _u8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def generate_real(windows_per_layer: int, far_share: float, seed: int, cells_dir: Path) -> Iterator[RealClip]:
    """The clips of every chosen window of every layer (originals first within a group)."""
    rng = np.random.default_rng(seed)
    specs = [LayerSpec.parse(text) for text in LAYERS]
    files = sorted(cells_dir.glob("*.gds"))
    cells, _ = row_cells([read_cell(path, specs, SHRINK) for path in files])
    placements = place_rows(cells, ROW_WIDTH_NM, rng)  # as _rows(seed, ...) rebuilds them
    simulator = LithoSimulator(SIZE_PX, NM_PER_PX)
    pad_px = context_pad_px(SIZE_PX, NM_PER_PX)
    window_nm = SIZE_PX * NM_PER_PX
    origins = _window_origins(placements, window_nm)
    for spec in specs:
        layout: Layout = placed_layout(placements, spec.name, spec.name)
        patterns = WindowPatterns(min_ncc=0.97)
        order = rng.permutation(len(origins))
        edge_first = sorted(order, key=lambda i: not origins[i][2])  # every block edge, then row windows
        edges = [i for i in edge_first if origins[i][2]][: windows_per_layer // 5]
        chosen_order = edges + [i for i in order if not origins[i][2]]
        sample = [origins[i] for i in chosen_order]
        probes = [RowWindow(x, y, "", ()) for x, y, edge in sample[:64] if not edge]
        dose = dose_to_size(simulator, layout, probes, SIZE_PX, pad_px)
        kept = 0
        for x0, y0, edge in sample:
            if kept >= windows_per_layer:
                break
            drawn = rasterize(layout, (x0, y0), SIZE_PX, NM_PER_PX)
            if float(drawn.mean()) < MIN_DRAWN or not patterns.add(drawn):
                continue
            group = f"{spec.name}-{kept:04d}"
            kept += 1
            moves = [(0, 0)] + [_drawn_shift(rng, layout, (x0, y0), 1, 16) for _ in range(3)]
            for index, (dx, dy) in enumerate(moves):
                role = "original" if index == 0 else "duplicate"
                yield _clip(simulator, layout, pad_px, dose, f"{group}-{index}", group, spec.name, role,
                            (x0, y0), (dx, dy), edge)
            if rng.random() < far_share:
                dx, dy = _drawn_shift(rng, layout, (x0, y0), 17, 31)
                yield _clip(simulator, layout, pad_px, dose, f"{group}-far", f"{group}-far", spec.name, "far",
                            (x0, y0), (dx, dy), edge)


def _clip(simulator: LithoSimulator, layout: Layout, pad_px: int, dose: float, result_id: str, group: str,
          family: str, role: str, origin: tuple[float, float], shift: tuple[int, int],
          edge: bool) -> RealClip:
    x = origin[0] + shift[0] * NM_PER_PX
    y = origin[1] + shift[1] * NM_PER_PX
    mask, printed = simulate_clip(simulator, layout, (x, y), SIZE_PX, pad_px, dose)
    return RealClip(result_id, group, family, role, round(x, 3), round(y, 3), shift[0], shift[1],
                    round(float((printed > 0.5).mean()), 5), edge, _png8(mask), _png8(printed))


PngPair = TypeVar("PngPair")


def read_png_pairs(meta_path: Path, blob_path: Path, make: Callable[..., PngPair]) -> list[PngPair] | None:
    """A cached clip set (JSON lines of fields with the byte offsets of each clip's mask and print
    PNGs in one blob; no pickle), or None when not cached."""
    if not (meta_path.exists() and blob_path.exists()):
        return None
    blob = blob_path.read_bytes()
    clips = []
    for line in meta_path.read_text().splitlines():
        row = json.loads(line)
        a, b, c = row.pop("offsets")
        clips.append(make(mask_png=blob[a:b], print_png=blob[b:c], **row))
    return clips


def write_png_pairs(meta_path: Path, blob_path: Path, clips: Sequence[Any]) -> None:
    """Cache dataclass clips with ``mask_png``/``print_png`` bytes as :func:`read_png_pairs` reads them."""
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    offset = 0
    with blob_path.open("wb") as blob_file, meta_path.open("w") as meta_file:
        for clip in clips:
            a, b = offset, offset + len(clip.mask_png)
            c = b + len(clip.print_png)
            blob_file.write(clip.mask_png + clip.print_png)
            offset = c
            row = {k: v for k, v in asdict(clip).items() if k not in ("mask_png", "print_png")}
            meta_file.write(json.dumps({**row, "offsets": [a, b, c]}) + "\n")


def cached_png_pairs(cache_dir: Path, name: str, make: Callable[..., PngPair],
                     generate: Callable[[], Iterable[PngPair]]) -> list[PngPair]:
    """The clip set ``name``, read from ``cache_dir`` when cached (:func:`read_png_pairs`), else generated
    and cached."""
    meta_path, blob_path = cache_dir / f"{name}.jsonl", cache_dir / f"{name}.bin"
    cached = read_png_pairs(meta_path, blob_path, make)
    if cached is not None:
        return cached
    clips = list(generate())
    write_png_pairs(meta_path, blob_path, clips)
    return clips


def load_or_generate_real(cache_dir: Path, windows_per_layer: int, far_share: float, seed: int,
                          cells_dir: Path) -> list[RealClip]:
    """The real-layout clip set, read from the cache when there (JSON lines + one blob of PNG bytes)."""
    name = f"dedupe_real_v{REAL_CACHE_VERSION}_{windows_per_layer}_{far_share}_{seed}"
    return cached_png_pairs(cache_dir, name, RealClip,
                            lambda: generate_real(windows_per_layer, far_share, seed, cells_dir))
