"""The DVC stage scripts, one module per stage of dvc.yaml; their library is triage/."""
