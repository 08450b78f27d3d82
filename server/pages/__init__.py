"""The app's pages, one module each with ``build(ctx) -> Page``, in the order of the page
buttons."""

from __future__ import annotations

from collections.abc import Callable

from embedviz.server.page import Context, Page
from embedviz.server.pages import embeddings, health, model, overview, system

PAGES: dict[str, Callable[[Context], Page]] = {
    "overview": overview.build, "model": model.build, "system": system.build,
    "health": health.build, "embeddings": embeddings.build}
TITLES = {"overview": "Overview", "model": "Model", "system": "System", "health": "Health",
          "embeddings": "Embeddings"}
#: pages that draw training sessions (the embeddings page does not need one)
TRAINING = ("overview", "model", "system", "health")

__all__ = ["PAGES", "TITLES", "TRAINING"]
