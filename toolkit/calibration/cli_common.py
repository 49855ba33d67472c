"""What the data-set commands share on the command line: their arguments and their output.

``lithowatch calibrate``, ``lithowatch eval ...`` and ``python -m toolkit.calibration.gap``
all name a data set and where its embeddings come from, and all print a JSON summary
(and write it with ``--json``). Kept apart from either command's module so that the
evaluation commands do not import the calibration command (nor the reverse).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from shared.dataset import Dataset, read_dataset
from shared.errors import ConfigError
from toolkit.calibration.data import embed


def add_embedding_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="data set folder with manifest.jsonl")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--model", help="encoder checkpoint directory (default: the shipped model)")
    source.add_argument("--embeddings", help="saved (N, D) .npy embeddings in manifest order")
    p.add_argument("--model-version", default=None, help="model version of --embeddings")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--json", dest="json_out", default=None, help="also write the JSON summary to this file")
    p.add_argument("--seed", type=int, default=0)


def load_embedded(args: argparse.Namespace) -> tuple[Dataset, np.ndarray, str]:
    """The data set named by :func:`add_embedding_args`' options, its embeddings and their model version."""
    dataset = read_dataset(args.dataset)
    embeddings, version = embed(
        dataset,
        model=args.model,
        embeddings_file=args.embeddings,
        model_version=args.model_version,
        batch_size=args.batch_size,
        device=args.device,
    )
    return dataset, embeddings, version


def split_values(text: str | None) -> list[str] | None:
    if text is None:
        return None
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise ConfigError("--holdout-values is empty")
    return values


def emit(summary: dict[str, Any], json_out: str | None) -> None:
    """Print the summary as JSON on stdout and write it to ``json_out`` when given."""
    text = json.dumps(summary, indent=2, default=str)
    print(text)
    if json_out:
        path = Path(json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n", encoding="utf-8")
