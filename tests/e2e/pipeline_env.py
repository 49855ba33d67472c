"""The environment the end-to-end tests start every stage with."""

from __future__ import annotations

from pathlib import Path

from app.demo.assets import DemoAssets


def service_env(assets: DemoAssets, tmp_path: Path) -> dict[str, str]:
    """The demo assets' model and thresholds, snapshots under ``tmp_path``, quick group joins."""
    return {
        "LITHOWATCH_MODEL_PATH": str(assets.model_dir),
        "LITHOWATCH_THRESHOLDS_PATH": str(assets.thresholds_path),
        "LITHOWATCH_SNAPSHOT_DIR": str(tmp_path / "snapshots"),
        "LITHOWATCH_MAX_POLL_INTERVAL_MS": "8000",
        "LITHOWATCH_SESSION_TIMEOUT_MS": "6000",
        "LITHOWATCH_TORCH_THREADS": "1",
    }
