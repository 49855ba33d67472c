"""The farm streams the long end-to-end tests publish (chaos, soak)."""

from __future__ import annotations

from app.demo.assets import KNOWN_FAMILIES, NOVEL_FAMILY
from app.launcher import EmbeddedStack
from services.simfarm.core import FarmSettings, FarmStream
from shared.blobstore import LocalBlobStore
from shared.settings import CommonSettings


def stream_settings(stack: EmbeddedStack) -> CommonSettings:
    """Settings to publish into ``stack``, images over its blob store."""
    return CommonSettings(kafka_bootstrap=stack.bootstrap, blob_root=stack.workdir / "blobs")


def known_farm(settings: CommonSettings, seed: int, novel_fraction: float, job_id: str) -> FarmStream:
    """The demo's known families at 256 px, 15 % re-simulations, some of the held-out family."""
    return FarmStream(
        FarmSettings(
            seed=seed,
            families=KNOWN_FAMILIES,
            novel_families=(NOVEL_FAMILY,),
            novel_fraction=novel_fraction,
            duplicate_fraction=0.15,
            size_px=256,
            job_id=job_id,
        ),
        store=LocalBlobStore(settings.blob_root),
    )
