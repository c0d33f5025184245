"""The model: its manifest, the predictor that serves it, training and verified loading."""
