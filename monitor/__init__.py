"""embedviz.monitor: listeners that record training into the stats store."""
