"""Synthetic checks of the calibration logic that print measured figures.

``python -m toolkit.calibration.selfcheck [--seeds 20]`` prints:

1. each candidate threshold fitted on a sample of novel/known scores (three
   shapes, four sizes) and judged on a large fresh sample: how far its F1 falls
   below the best any threshold reaches there (mean over seeds);
2. per-cluster thresholds on a library with a tight and a loose cluster, where a
   novel result near the tight cluster is as far from it as loose members are
   from each other: F1 of the global threshold vs per-cluster thresholds;
3. the conformal gate on a stream with 5 % novel results: realised false
   discovery proportion and power at the requested FDR, and flags on a null stream.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import numpy as np

from toolkit.calibration.clusters import cluster_threshold_of, cluster_thresholds
from toolkit.calibration.conformal import ConformalGate
from toolkit.calibration.roc import confusion_at, sweep
from toolkit.calibration.similarity import l2_normalise, novelty_scores
from toolkit.calibration.thresholds import recommend_threshold

Sampler = Callable[[np.random.Generator, int], np.ndarray]
SCENARIOS: dict[str, tuple[Sampler, Sampler]] = {
    "gaussians": (lambda r, n: r.normal(1.5, 1.0, n), lambda r, n: r.normal(0.0, 1.0, n)),
    "skewed_known_wide_novel": (lambda r, n: r.normal(0.15, 0.06, n), lambda r, n: r.gamma(4.0, 0.01, n)),
    "bimodal_novel": (
        lambda r, n: np.where(r.random(n) < 0.5, r.normal(0.08, 0.01, n), r.normal(0.3, 0.05, n)),
        lambda r, n: r.gamma(4.0, 0.01, n),
    ),
}
SIZES = ((5, 6), (10, 30), (40, 200), (2000, 3000))
TEST_POSITIVES = 4000


def candidate_generalisation(seeds: int) -> list[dict[str, object]]:
    """Each candidate fitted on a sample, judged on a large fresh sample: mean F1 below the best."""
    rows: list[dict[str, object]] = []
    for name, (novel, known) in SCENARIOS.items():
        for n_pos, n_neg in SIZES:
            gaps: dict[str, list[float]] = {
                "f1_smooth": [], "f1_max": [], "youden_j": [], "valley": [], "recommended": []
            }
            for seed in range(seeds):
                rng = np.random.default_rng(seed)
                pos, neg = novel(rng, n_pos), known(rng, n_neg)
                test_pos = novel(rng, TEST_POSITIVES)
                test_neg = known(rng, TEST_POSITIVES * n_neg // n_pos)
                best = float(sweep(test_pos, test_neg).f1.max())
                rec = recommend_threshold(pos, neg)
                for c in rec.candidates:
                    if c.threshold is not None:
                        gaps[c.method].append(best - confusion_at(test_pos, test_neg, c.threshold)["f1"])
                gaps["recommended"].append(best - confusion_at(test_pos, test_neg, rec.threshold)["f1"])
            rows.append({
                "scenario": name, "n_novel": n_pos, "n_known": n_neg, "seeds": seeds,
                **{f"{m}_gap": (round(float(np.mean(v)), 4) if v else None) for m, v in gaps.items()},
                "valley_found": f"{len(gaps['valley'])}/{seeds}",
            })
    return rows


def per_cluster_benefit(seed: int = 0, dim: int = 16) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    a, b = np.eye(dim)[0], np.eye(dim)[1]

    def around(centre: np.ndarray, spread: float, n: int) -> np.ndarray:
        return l2_normalise(centre + spread * rng.normal(size=(n, dim)))

    library = np.concatenate([around(a, 0.02, 300), around(b, 0.25, 300)])
    known = np.concatenate([around(a, 0.02, 100), around(b, 0.25, 100)])
    novel = np.concatenate([around(a, 0.15, 100), around(b, 0.6, 100)])
    known_s, novel_s = novelty_scores(known, library), novelty_scores(novel, library)
    rec = recommend_threshold(novel_s, known_s)
    model = cluster_thresholds(library, rec.threshold, k=2, quantile=0.05)
    thr_known, thr_novel = cluster_threshold_of(model, known), cluster_threshold_of(model, novel)
    tp, fp = int((novel_s >= thr_novel).sum()), int((known_s >= thr_known).sum())
    return {
        "global_threshold": rec.threshold,
        "global_f1_fitted_on_these_scores": confusion_at(novel_s, known_s, rec.threshold)["f1"],
        "cluster_thresholds": [round(c.threshold, 5) for c in model.clusters],
        "per_cluster_f1_from_library_density_only": 2 * tp / (tp + fp + novel_s.size),
    }


def conformal_stream(seed: int = 0, fdr: float = 0.1, window: int = 500) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    gate = ConformalGate(rng.normal(0.1, 0.02, 20_000), fdr=fdr, window=window)
    is_novel = rng.random(5000) < 0.05
    scores = np.where(is_novel, rng.normal(0.2, 0.03, 5000), rng.normal(0.1, 0.02, 5000))
    flags = np.array([d.novel for d in gate.update_many(scores)])
    gate.reset()
    null_flags = sum(d.novel for d in gate.update_many(rng.normal(0.1, 0.02, 5000)))
    return {
        "fdr_target": fdr, "window": window, "n_stream": 5000, "n_novel": int(is_novel.sum()),
        "flagged": int(flags.sum()),
        "false_discovery_proportion": float((flags & ~is_novel).sum() / max(1, flags.sum())),
        "power": float((flags & is_novel).sum() / is_novel.sum()),
        "flags_on_null_stream_of_5000": int(null_flags),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=30)
    args = parser.parse_args()
    report = {
        "candidate_f1_gap_on_fresh_data": candidate_generalisation(args.seeds),
        "per_cluster": per_cluster_benefit(),
        "conformal_gate": conformal_stream(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
