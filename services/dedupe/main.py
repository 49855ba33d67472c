"""Entry point of the dedupe service: Redis store, core and the runtime."""

from __future__ import annotations

from typing import Any

import redis
from pydantic import Field

from services.dedupe import NAME
from services.dedupe.core import (
    BRIDGE_CANDIDATES_DEFAULT,
    PROFILE_SHORTLIST_DEFAULT,
    DedupeCore,
    DedupeSettings,
)
from services.dedupe.stage import DedupeStage
from services.dedupe.store import BAND_MAX_MEMBERS_DEFAULT, RECENT_POOL_DEFAULT
from services.dedupe.store_redis import RedisDedupeStore
from shared import metrics
from shared.blobstore import LocalBlobStore
from shared.errors import ConfigError
from shared.imageref import ImageLoader
from shared.runtime import StageRunner
from shared.settings import CommonSettings, StageSettings, load_settings


class DedupeServiceSettings(StageSettings):
    dedupe_ttl_seconds: int = Field(7 * 86400, gt=0)
    dedupe_hamming_radius: int = Field(64, ge=0)
    # newest members kept (and read) per band set: bounds a lookup however busy one band value is
    dedupe_band_max_members: int = Field(BAND_MAX_MEMBERS_DEFAULT, ge=1, le=100_000)
    dedupe_key_prefix: str = f"lithowatch:{NAME}"
    # strict (False): new drawn content in a strip outside the compared overlap, beyond
    # dedupe_resimulation_shift_px, keeps a result unique; True: every window of one layout is a duplicate
    dedupe_windows_are_duplicates: bool = False
    dedupe_resimulation_shift_px: int = Field(16, ge=0, le=96)  # the farm's largest window move
    # newest results per namespace ranked by row and column profile when no hash candidate is a duplicate
    # (sparse clips whose window move changed both hashes); dedupe_profile_candidates of them are verified
    dedupe_recent_pool: int = Field(RECENT_POOL_DEFAULT, ge=0, le=100_000)
    dedupe_profile_candidates: int = Field(12, ge=0, le=64)
    # a duplicate is also verified against this many more candidates (by hash and by profile together):
    # an earlier result kept as unique that it matches too becomes its late duplicate; 0: off
    dedupe_bridge_candidates: int = Field(BRIDGE_CANDIDATES_DEFAULT, ge=0, le=64)
    # bridge and profile candidates are verified best first by a coarse score of the masks over their whole
    # overlap (False: nearest by profile first); dedupe_profile_shortlist nearest by profile are ranked so
    dedupe_rank_by_overlap: bool = True
    dedupe_profile_shortlist: int = Field(PROFILE_SHORTLIST_DEFAULT, ge=0, le=256)
    # a ranked candidate scoring above twice what the blocks' phase alone costs the query, plus this slack,
    # is not verified on pixels (it cannot be a window of the query's layout); False: every one is
    dedupe_coarse_gate: bool = True
    dedupe_coarse_gate_slack: float = Field(0.15, ge=0.0, le=1.0)
    # a candidate found by profile alone must compare at least this many mask pixels drawn in both clips
    # (256: no lone contact matched to a lone contact); 0: no floor
    dedupe_profile_min_matched_px: int = Field(0, ge=0)
    # a candidate found by profile alone comparing fewer mask pixels drawn in both clips than this and under a
    # quarter of one clip's drawn pixels is refused (a cut corner agrees with many); 0: off
    dedupe_profile_thin_match_px: int = Field(128, ge=0)
    # every match must compare at least this many mask pixels drawn in both clips; clips showing less stay
    # unique (no lone contacts or sparse rows merged across layouts, at a cost in recall); 0: no floor
    dedupe_min_matched_px: int = Field(0, ge=0)
    # stored results' coarse masks for the overlap ranking kept from batch to batch (about 26 KB each,
    # least recently used out past this budget); 0: made again in each batch
    dedupe_coarse_cache_mib: int = Field(128, ge=0)

    def core_settings(self) -> DedupeSettings:
        """The core's settings, built from these once."""
        return DedupeSettings(
            ttl_seconds=self.dedupe_ttl_seconds,
            hamming_radius=self.dedupe_hamming_radius,
            windows_are_duplicates=self.dedupe_windows_are_duplicates,
            resimulation_shift_px=self.dedupe_resimulation_shift_px,
            profile_candidates=self.dedupe_profile_candidates if self.dedupe_recent_pool else 0,
            bridge_candidates=self.dedupe_bridge_candidates,
            rank_by_overlap=self.dedupe_rank_by_overlap,
            profile_shortlist=self.dedupe_profile_shortlist,
            coarse_gate=self.dedupe_coarse_gate,
            coarse_gate_slack=self.dedupe_coarse_gate_slack,
            profile_min_matched_px=self.dedupe_profile_min_matched_px,
            profile_thin_match_px=self.dedupe_profile_thin_match_px,
            min_matched_px=self.dedupe_min_matched_px,
            coarse_cache_mib=self.dedupe_coarse_cache_mib,
        )


def redis_client(settings: CommonSettings) -> Any:
    """A bytes-returning Redis client with the password / TLS settings passed through."""
    options: dict[str, Any] = {
        "decode_responses": False,
        "socket_timeout": 5.0,
        "socket_connect_timeout": 5.0,
        "health_check_interval": 10,
    }
    if settings.redis_password is not None:
        options["password"] = settings.redis_password.get_secret_value()
    if settings.redis_ssl_ca_certs is not None:
        # redis-py accepts TLS options only on a rediss:// URL; on redis:// every command would fail
        if not settings.redis_url.get_secret_value().lower().startswith("rediss://"):
            raise ConfigError("LITHOWATCH_REDIS_SSL_CA_CERTS needs a rediss:// LITHOWATCH_REDIS_URL")
        options["ssl_ca_certs"] = str(settings.redis_ssl_ca_certs)
    try:
        return redis.Redis.from_url(settings.redis_url.get_secret_value(), **options)
    except ValueError as exc:
        raise ConfigError(f"LITHOWATCH_REDIS_URL is not a valid Redis URL: {exc}") from exc


def main(settings_file: str | None = None) -> int:
    settings = load_settings(DedupeServiceSettings, settings_file)
    store = RedisDedupeStore(
        redis_client(settings),
        settings.dedupe_key_prefix,
        settings.dedupe_ttl_seconds,
        band_max_members=settings.dedupe_band_max_members,
        on_trimmed=metrics.DEDUPE_BAND_TRIMMED.inc,
        recent_pool=settings.dedupe_recent_pool,
    )
    loader = ImageLoader(LocalBlobStore(settings.blob_root), settings.max_image_pixels)
    core = DedupeCore(store, settings.core_settings(), load_image=loader)
    return StageRunner(DedupeStage(core), settings).run()
