"""The pipeline stages: one module per DVC stage, plus the helpers they share."""
