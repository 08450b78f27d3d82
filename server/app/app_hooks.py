"""Opens the server's store, read layer and projection pool when it starts (on its
context: every tab of this server shares them) and closes them when it stops."""

import sys

from embedviz.server import AppState, app_settings

SETTINGS = app_settings(sys.argv[1:])  # (read while Bokeh runs this module with --args)


def on_server_loaded(server_context):
    server_context.embedviz = AppState(SETTINGS["store"], lang=SETTINGS["lang"])


def on_server_unloaded(server_context):
    state = getattr(server_context, "embedviz", None)
    if state is not None:
        state.close()
