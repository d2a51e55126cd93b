"""Training: data streams, loops, recipes and distributed runs (streams for now)."""
