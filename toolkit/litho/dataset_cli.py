"""``lithowatch dataset``: make simulated data sets, import user layouts, draw a contact sheet.

- ``dataset make``: random layouts of the chosen families, each rendered under
  several variants (one ``group`` per layout), optional defects with ground truth.
- ``dataset from-layout``: ``.glp`` clips or GDSII/OASIS files cut into windows and
  simulated (with the computed optics, or SOCS kernels read from contest files).
- ``dataset sheet``: a PNG with every family and every defect type, mask beside print.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from shared.dataset import DatasetWriter
from shared.errors import ConfigError
from toolkit.litho.cell_rows import (
    LayerSpec,
    place_rows,
    read_cell,
    row_cells,
    split_kinds,
)
from toolkit.litho.families import FAMILIES
from toolkit.litho.farm import FarmGenerator, LabelValue, context_pad_px
from toolkit.litho.kernel_io import CONTEST_PERIOD_NM, read_kernel_dir
from toolkit.litho.layout_import import CellLibraryImport, VariantPlan, WindowPatterns
from toolkit.litho.layout_io import GDS_SUFFIXES, layout_windows, read_layout, scaled
from toolkit.litho.simulator import LithoSimulator, ResistSettings


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """An argparse ``type`` accepting only positive numbers of ``kind``."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return value

    return parse


def _families(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in FAMILIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown families {unknown} (known: {', '.join(FAMILIES)})")
    return names


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``dataset`` command and its subcommands."""
    parser = subparsers.add_parser("dataset", help="make, import or inspect lithography data sets")
    sub = parser.add_subparsers(dest="dataset_command", required=True)

    make = sub.add_parser("make", help="simulate random layouts into a data set folder")
    make.add_argument("--families", type=_families, default=list(FAMILIES), help="comma-separated families")
    make.add_argument("--n", type=_positive(int), default=100, help="number of layouts")
    make.add_argument("--variants", type=_positive(int), default=4, help="results per layout (one group)")
    make.add_argument("--defect-rate", type=float, default=0.0, help="probability a result carries a defect")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--size", type=_positive(int), default=256, help="clip size in pixels")
    make.add_argument("--nm-per-px", type=_positive(float), default=4.0)
    make.add_argument("--max-shift-px", type=int, default=16, help="largest window shift of a variant")
    make.add_argument("--format", choices=("png", "npy"), default="png", help="image files")
    make.add_argument("--out", type=Path, required=True)
    make.set_defaults(func=cmd_make)

    imp = sub.add_parser(
        "from-layout",
        help="cut .glp / GDSII / OASIS layouts (or a cell library placed in rows) into simulated windows",
        description="Cut layouts into windows and simulate each under process variants. With --rows, "
        "the files are the cells of a standard-cell library (a folder is read whole): cells are placed "
        "side by side in rows as a placer abuts them, windows are tiled over the rows, each --layer "
        "becomes a family, and --eval-share puts whole cell kinds into a separate evaluation set.",
    )
    imp.add_argument("files", nargs="+", type=Path, help=".glp, .gds or .oas files, or folders of them")
    imp.add_argument("--kernels", type=Path, default=None, help="folder with scales.txt and fh*.bin")
    imp.add_argument(
        "--kernel-period-nm",
        type=_positive(float),
        default=CONTEST_PERIOD_NM,
        help="window the kernel files were made for (contest: 2048)",
    )
    imp.add_argument("--window-nm", type=_positive(float), default=1024.0)
    imp.add_argument("--nm-per-px", type=_positive(float), default=4.0)
    imp.add_argument(
        "--layer",
        action="append",
        default=None,
        help="glp layer name (M1) or GDS 'L' / 'L/D'; with --rows NAME=L/D, repeatable, one family each "
        "(SKY130: li1=67/20 routing, mcon=67/44 contacts, licon=66/44, met1=68/20); default all shapes",
    )
    imp.add_argument(
        "--shrink",
        type=_positive(float),
        default=1.0,
        help="scale factor on every coordinate, e.g. 0.4 maps a 130 nm library onto the 193i limit",
    )
    imp.add_argument(
        "--dose",
        default=None,
        help="exposure dose (clear field = 1); 'auto' = dose to size per layer "
        "(default: 1.0, with --rows auto)",
    )
    imp.add_argument(
        "--threshold", type=_positive(float), default=None, help="resist threshold (clear field = 1)"
    )
    imp.add_argument("--defocus-nm", type=float, default=0.0, help="focus of every window (without --rows)")
    rows = imp.add_argument_group("cell library in rows (--rows) and process variants")
    rows.add_argument("--rows", action="store_true", help="the files are library cells: place them in rows")
    rows.add_argument(
        "--row-width-nm", type=_positive(float), default=16384.0, help="row length (after shrink)"
    )
    rows.add_argument("--copies", type=_positive(int), default=1, help="placements of each cell")
    rows.add_argument(
        "--eval-share",
        type=float,
        default=0.0,
        help="share of cell kinds (all drive strengths of a function) written to OUT/eval, the rest to "
        "OUT/train; 0 = one data set in OUT",
    )
    rows.add_argument("--variants", type=_positive(int), default=1, help="results per window (one group)")
    rows.add_argument("--max-shift-nm", type=float, default=24.0, help="largest window shift of a variant")
    rows.add_argument("--dose-range", type=float, default=0.03, help="dose of a variant within +-this share")
    rows.add_argument("--bias-nm", type=float, default=2.0, help="mask bias of a variant within +-this")
    rows.add_argument(
        "--variant-defocus-nm", type=float, default=40.0, help="defocus of the one defocused variant"
    )
    rows.add_argument(
        "--no-defects", action="store_true", help="no variant with a mask defect (default: one per window)"
    )
    rows.add_argument("--seed", type=int, default=0)
    imp.add_argument("--format", choices=("png", "npy"), default="png")
    imp.add_argument("--out", type=Path, required=True)
    imp.set_defaults(func=cmd_from_layout)

    sheet = sub.add_parser("sheet", help="draw every family and defect type into one PNG")
    sheet.add_argument("--out", type=Path, default=Path("sheet.png"))
    sheet.add_argument("--seed", type=int, default=0)
    sheet.add_argument("--size", type=_positive(int), default=256)
    sheet.add_argument("--nm-per-px", type=_positive(float), default=4.0)
    sheet.set_defaults(func=cmd_sheet)


def cmd_make(args: argparse.Namespace) -> int:
    if not 0.0 <= args.defect_rate <= 1.0:
        raise ConfigError(f"--defect-rate must lie in [0, 1], got {args.defect_rate}")
    if args.max_shift_px < 0:
        raise ConfigError("--max-shift-px must not be negative")
    farm = FarmGenerator(
        seed=args.seed,
        size_px=args.size,
        nm_per_px=args.nm_per_px,
        families=args.families,
        defect_rate=args.defect_rate,
    )
    farm.window_nm((args.max_shift_px, args.max_shift_px))  # fails early if shifts leave the canvas
    total = args.n * args.variants
    defects = 0
    with DatasetWriter(args.out, image_format=args.format) as writer:
        samples = farm.samples(args.n, args.variants, max_shift_px=args.max_shift_px)
        for sample in tqdm(samples, total=total, desc="simulating", unit="result"):
            writer.add(sample.id, sample.mask, sample.simulated, sample.nm_per_px, sample.labels)
            defects += sample.labels["defect"] != "none"
    print(f"wrote {total} results of {args.n} layouts ({defects} with defects) to {args.out}")
    return 0


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "layout"


def _layout_files(paths: list[Path]) -> list[Path]:
    """Files as given; a folder contributes its layout files in name order."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in (*GDS_SUFFIXES, ".glp"))
            if not found:
                raise ConfigError(f"{path}: no .glp, .gds or .oas files in this folder")
            out.extend(found)
        elif not path.is_file():
            raise ConfigError(f"{path}: no such file")
        else:
            out.append(path)
    return out


def _dose(text: str | None, rows: bool) -> float | None:
    """``None`` = dose to size; a number otherwise."""
    if text is None:
        return None if rows else 1.0
    if text == "auto":
        return None
    try:
        value = float(text)
    except ValueError as exc:
        raise ConfigError(f"--dose takes a number or 'auto', got {text!r}") from exc
    if not value > 0:
        raise ConfigError(f"--dose must be positive, got {value}")
    return value


def _simulator(args: argparse.Namespace) -> tuple[LithoSimulator, int, int]:
    kernels = read_kernel_dir(args.kernels, args.kernel_period_nm) if args.kernels is not None else None
    defocused = args.defocus_nm != 0 or (args.rows and args.variants >= 3 and args.variant_defocus_nm != 0)
    if kernels is not None and defocused:
        raise ConfigError(
            "defocus needs the computed optics; kernel files have a fixed focus (--variant-defocus-nm 0)"
        )
    size = args.window_nm / args.nm_per_px
    if abs(size - round(size)) > 1e-6:
        raise ConfigError(f"--window-nm {args.window_nm} is not a whole number of {args.nm_per_px} nm pixels")
    size_px = round(size)
    resist = ResistSettings() if args.threshold is None else ResistSettings(threshold=args.threshold)
    simulator = LithoSimulator(size_px, args.nm_per_px, resist=resist, kernels=kernels)
    return simulator, size_px, context_pad_px(size_px, args.nm_per_px)


def _plan(args: argparse.Namespace) -> VariantPlan:
    plan = VariantPlan(
        variants=args.variants,
        max_shift_nm=args.max_shift_nm,
        dose_range=args.dose_range,
        bias_nm=args.bias_nm,
        defocus_nm=args.variant_defocus_nm,
        defects=not args.no_defects,
    )
    plan.check()
    return plan


def cmd_from_layout(args: argparse.Namespace) -> int:
    files = _layout_files(args.files)
    if args.rows:
        return _from_cell_rows(args, files)
    if args.layer is not None and len(args.layer) > 1:
        raise ConfigError("several --layer values need --rows (one family per layer)")
    layer = args.layer[0] if args.layer else None
    simulator, size_px, pad_px = _simulator(args)
    dose = _dose(args.dose, rows=False)
    plan = _plan(args)
    importer = CellLibraryImport(simulator, size_px, pad_px, plan, np.random.default_rng(args.seed), dose)
    layouts = [(path, scaled(read_layout(path, layer), args.shrink)) for path in files]
    count = blank = 0
    with DatasetWriter(args.out, image_format=args.format) as writer:
        for path, layout in tqdm(layouts, desc="layouts", unit="file"):
            stem = _safe_id(path.stem)
            origins = list(layout_windows(layout, args.window_nm))
            offset = (float(layout.params["offset_x_nm"]), float(layout.params["offset_y_nm"]))
            for index, origin in enumerate(origins):
                labels: dict[str, LabelValue] = {
                    "family": "imported",
                    "source": path.name,
                    "layer": layer or "all",
                    "shrink": args.shrink,
                    "optics": "kernel_files" if args.kernels is not None else "computed",
                    "window_index": index,
                }
                group = stem if len(origins) == 1 else f"{stem}-{index:04d}"
                base_dose = dose if dose is not None else 1.0
                for sample in importer.window_variants(layout, origin, group, base_dose, labels):
                    x_nm, y_nm = origin[0] + offset[0], origin[1] + offset[1]
                    sample.labels.update(window_x_nm=round(x_nm, 3), window_y_nm=round(y_nm, 3))
                    item_id = sample.id if plan.variants > 1 else f"{stem}-{index:04d}"
                    writer.add(item_id, sample.mask, sample.simulated, sample.nm_per_px, sample.labels)
                    count += 1
                    blank += float(sample.simulated.max()) < 0.5
    if count == 0:
        raise ConfigError("the layouts hold no shapes to simulate")
    print(f"wrote {count} windows of {len(layouts)} layout files to {args.out}")
    if blank:
        print(
            f"note: {blank} windows print nothing (features below resolution at this dose and threshold;"
            " try --dose or --threshold)"
        )
    return 0


def _from_cell_rows(args: argparse.Namespace, files: list[Path]) -> int:
    if not args.layer:
        raise ConfigError("--rows needs at least one --layer NAME=L/D (e.g. --layer li1=67/20)")
    layers = [LayerSpec.parse(text) for text in args.layer]
    names = [spec.name for spec in layers]
    if len(set(names)) != len(names):
        raise ConfigError(f"layer names must differ: {', '.join(names)}")
    simulator, size_px, pad_px = _simulator(args)
    dose = _dose(args.dose, rows=True)
    plan = _plan(args)
    cells = [read_cell(path, layers, args.shrink) for path in tqdm(files, desc="reading cells", unit="cell")]
    cells, skipped = row_cells(cells)
    if skipped:
        shown = ", ".join(c.name for c in skipped[:6])
        print(f"note: {len(skipped)} cells of another row height left out ({shown}, ...)")
    train, held = split_kinds(cells, args.eval_share, args.seed)
    splits = [("train", train), ("eval", held)] if args.eval_share > 0 else [("all", cells)]
    rng = np.random.default_rng(args.seed)
    patterns = {spec.name: WindowPatterns() for spec in layers}  # across splits: eval shows no train pattern
    for split, members in splits:
        out = args.out / split if args.eval_share > 0 else args.out
        placements = place_rows(members, args.row_width_nm, rng, args.copies)
        kinds = len({c.kind for c in members})
        count = blank = repeated = 0
        with DatasetWriter(out, image_format=args.format) as writer:
            for spec in layers:
                importer = CellLibraryImport(simulator, size_px, pad_px, plan, rng, dose)
                prefix = f"{spec.name}-{split}"
                layout, windows = importer.windows(placements, spec.name, spec.name, args.window_nm)
                samples = importer.samples(
                    layout, windows, spec.name, spec.name, split, prefix, patterns[spec.name]
                )
                planned = len(windows) * plan.variants
                bar = tqdm(samples, desc=f"{split} {spec.name}", unit="result", total=planned)
                for sample in bar:
                    sample.labels.update(shrink=args.shrink, source=sample.labels["cell"])
                    writer.add(sample.id, sample.mask, sample.simulated, sample.nm_per_px, sample.labels)
                    count += 1
                    blank += float(sample.simulated.max()) < 0.5
                    bar.total = planned - importer.repeated_windows * plan.variants  # repeats are not made
                bar.close()
                repeated += importer.repeated_windows
        print(f"wrote {count} results ({len(members)} cells of {kinds} kinds, {len(layers)} layers) to {out}")
        if repeated:
            print(f"note: {repeated} windows left out: their pattern repeats a window already written")
        if blank:
            print(f"note: {blank} results print nothing at this dose and threshold")
    return 0


def cmd_sheet(args: argparse.Namespace) -> int:
    from toolkit.litho.sheet import make_contact_sheet

    out = make_contact_sheet(args.out, seed=args.seed, size_px=args.size, nm_per_px=args.nm_per_px)
    print(f"wrote {out}")
    return 0
