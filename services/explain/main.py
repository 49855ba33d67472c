"""Entry point of the explain service: wires settings, blob store and the runtime."""

from __future__ import annotations

from services.explain.core import ExplainCore
from shared.blobstore import LocalBlobStore
from shared.imageref import ImageLoader
from shared.metrics import Route
from shared.runtime import StageRunner
from shared.settings import StageSettings, load_settings


class ExplainSettings(StageSettings):
    explain_max_neighbours: int = 3
    explain_keep_recent: int = 200


def main(settings_file: str | None = None) -> int:
    settings = load_settings(ExplainSettings, settings_file)
    store = LocalBlobStore(settings.blob_root)
    core = ExplainCore(
        ImageLoader(store, settings.max_image_pixels),
        store,
        settings.explain_max_neighbours,
        settings.explain_keep_recent,
    )
    routes: dict[str, Route] = {"/alerts": core.alerts_page, "/panels/": core.panel_page}
    return StageRunner(core, settings, routes=routes).run()
