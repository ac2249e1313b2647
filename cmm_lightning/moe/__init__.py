"""Hájek-MoE (docs/method.md, "Hájek-MoE"): pure kernel / U-statistic / contribution functions and the fusion module."""

from . import hajek

_LAZY = ("HajekMoE", "train_moe")


def __getattr__(name):
    if name in _LAZY:
        from . import module

        return getattr(module, name)
    raise AttributeError(name)


__all__ = ["hajek", *_LAZY]
