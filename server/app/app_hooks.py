"""Opens the store once when the server starts and closes it when it stops."""

import sys

from embedviz.server import app_settings, close_shared, open_shared

SETTINGS = app_settings(sys.argv[1:])  # (read while Bokeh runs this module with --args)


def on_server_loaded(server_context):
    open_shared(SETTINGS["store"])


def on_server_unloaded(server_context):
    close_shared()
