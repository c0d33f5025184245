"""Model lifecycle kept apart from the web layer: training, verified loading, fast inference."""
