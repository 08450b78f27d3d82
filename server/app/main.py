"""The Bokeh directory app: ``bokeh serve server/app --args runs.db [--lang ja]``.

Each browser tab gets its own document over the state app_hooks opened once for the
server (embedviz.server.app_doc builds it)."""

from bokeh.io import curdoc
from embedviz.server import state_of
from embedviz.server.app_doc import build_document

doc = curdoc()
build_document(doc, state_of(doc))
