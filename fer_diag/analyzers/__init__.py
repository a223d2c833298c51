"""Analyzers: streaming accumulators over captured activations (see :mod:`.base`)."""
