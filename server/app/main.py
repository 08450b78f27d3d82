"""The Bokeh directory app: ``bokeh serve server/app --args runs.db [--lang ja]``.

Each browser tab gets its own document over the store that app_hooks opened once for the
server process (embedviz.server.app_doc builds it)."""

import sys

from bokeh.io import curdoc
from embedviz.server import app_settings, open_shared
from embedviz.server.app_doc import build_document

settings = app_settings(sys.argv[1:])
build_document(curdoc(), open_shared(settings["store"]), lang=settings["lang"])
