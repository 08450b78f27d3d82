"""embedviz.server: the Bokeh app over the stats store (views arrive with the app issue)."""
