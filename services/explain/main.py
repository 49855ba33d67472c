"""Entry point of the explain service: wires settings, blob store, the pages and the runtime."""

from __future__ import annotations

from services.explain.core import ExplainCore
from services.explain.routes import AlertPages
from services.explain.stage import ExplainStage
from shared.blobstore import LocalBlobStore
from shared.imageref import ImageLoader
from shared.runtime import StageRunner
from shared.settings import StageSettings, load_settings


class ExplainSettings(StageSettings):
    explain_max_neighbours: int = 3
    explain_keep_recent: int = 200


def main(settings_file: str | None = None) -> int:
    settings = load_settings(ExplainSettings, settings_file)
    store = LocalBlobStore(settings.blob_root)
    core = ExplainCore(ImageLoader(store, settings.max_image_pixels), store, settings.explain_max_neighbours)
    pages = AlertPages(store, settings.explain_keep_recent)
    return StageRunner(ExplainStage(core, pages), settings, routes=pages.routes()).run()
