"""Lightning loggers chosen by ``logger.kind``: csv (default), wandb, none.

W&B runs offline unless credentials are present (``WANDB_API_KEY`` or a ``~/.netrc`` entry for
api.wandb.ai), so a run never blocks on a login prompt; sync later with ``wandb sync <run.dir>/wandb``.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def build_logger(cfg: DictConfig, run_dir: Path, name: str = "fit"):
    """The configured Lightning logger writing under ``run_dir`` (``False`` for none)."""
    kind = cfg.logger.kind
    if kind == "none":
        return False
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(run_dir), name="logs", version=name)
    from lightning.pytorch.loggers import WandbLogger

    offline = cfg.logger.offline if cfg.logger.offline is not None else not wandb_has_credentials()
    if offline:
        os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    logger = WandbLogger(
        project=cfg.logger.project, entity=cfg.logger.entity, tags=list(cfg.logger.tags),
        save_dir=str(run_dir), offline=offline, name=Path(run_dir).name,
    )
    logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return logger


def log_figure(logger, key: str, fig) -> None:
    """Send a matplotlib figure to loggers that take images (W&B); others ignore it."""
    if logger and hasattr(logger, "log_image"):
        import wandb

        logger.log_image(key=key, images=[wandb.Image(fig)])
