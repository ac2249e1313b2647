"""Lightning callbacks, installed as ``cmm_lightning.callbacks`` (see pyproject's package-dir)."""
