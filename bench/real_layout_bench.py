"""Embeddings on real layouts: the shipped default, other checkpoints and fixed descriptors
against the pixel and pHash baselines, all in one run, on cells never trained on.

The evaluation set is the ``eval`` half of an import of the SKY130 cell library
(``lithowatch dataset from-layout ... --rows --eval-share 0.3``), made here when absent:
cells abutted in rows, windows tiled over them, six process variants per window
(window shift up to 24 nm, dose, bias, one defocused, one with a mask defect), three
mask layers as families (li1 routing, licon contacts, poly gates).

Printed: retrieval by group (P@1, P@5, mAP@R) and novelty AUROC with new cell kinds
held out within each family and with each family held out, per feature set, then the
verdict of each candidate against the bars (P@5 >= 0.90 and 0.05 above both baselines;
AUROC above both baselines).

    python bench/real_layout_bench.py                         # default model + descriptors
    python bench/real_layout_bench.py --model ckpt_a --model ckpt_b --eval-dir DIR
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.dataset import read_dataset
from shared.model import build_untrained, load_encoder
from shared.model.default import DEFAULT_MODEL_DIR
from shared.model.descriptors import DescriptorSpec
from toolkit.evaluation.verdict import compare_embeddings, embed_with, format_table, verdict

ROOT = Path(__file__).resolve().parents[1]
CELLS = ROOT / "shared" / "data" / "sky130_fd_sc_hd"


def make_eval_set(out: Path, cells: Path) -> Path:
    """Import the cell library (train and eval halves) unless it is there already."""
    if not (out / "eval" / "manifest.jsonl").is_file():
        cmd = [
            sys.executable, "-m", "app.cli", "dataset", "from-layout", str(cells), "--rows",
            "--layer", "li1=67/20", "--layer", "licon=66/44", "--layer", "poly=66/20", "--shrink", "0.37",
            "--variants", "6", "--eval-share", "0.3", "--out", str(out),
        ]
        print("importing:", " ".join(cmd[3:]), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
    return out / "eval"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", default=None, help="checkpoints (default: shipped)")
    parser.add_argument("--eval-dir", type=Path, default=None, help="evaluation data set (default: imported)")
    parser.add_argument("--cache", type=Path, default=ROOT / ".lithowatch" / "bench" / "sky130")
    parser.add_argument("--cells", type=Path, default=CELLS)
    parser.add_argument("--no-descriptors", action="store_true", help="skip the descriptors-only row")
    parser.add_argument("--no-novelty", action="store_true")
    args = parser.parse_args()
    eval_dir = args.eval_dir or make_eval_set(args.cache, args.cells)
    dataset = read_dataset(eval_dir)
    encoders = {Path(m).name: load_encoder(m, device="cpu") for m in (args.model or [str(DEFAULT_MODEL_DIR)])}
    if not args.no_descriptors:
        default = next(iter(encoders.values())).spec
        spec = (default.descriptor or DescriptorSpec()).model_copy(update={"learned_weight": 0.0})
        encoders["descriptors only"] = build_untrained(
            "resnet18-w16", "mask,print", default.input_size, nm_per_px=default.nm_per_px or 16.0,
            descriptor=spec, device="cpu",
        )
    started = time.perf_counter()
    vectors = embed_with(encoders, dataset)
    rows, details = compare_embeddings(dataset, vectors, novelty=not args.no_novelty)
    print(f"\n{dataset.root}: {details['n_items']} results of {details['n_groups']} layout windows; "
          f"new layouts within a family = held-out {details.get('novelty_holdout_within', '-')}")
    print(format_table(rows))
    print("\n".join(verdict(rows)))
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
