"""The snippet and the demo page, packaged as ``gateway.static`` (read with importlib.resources)."""
