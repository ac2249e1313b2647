"""OFDD students (docs/method.md, "OFDD students"): stacked window encoders, the OFDD loss, one LightningModule per dimension.

``encoders`` and ``stacked`` need only torch (the exported CMM imports them); the Lightning
modules and training helpers are imported lazily from ``modules``.
"""

from .stacked import StackedStudents

_LAZY = ("StudentsModule", "LayerStudents", "TaskStudents", "DataStudents", "DIMENSIONS", "train_students",
         "evaluate")


def __getattr__(name):
    if name in _LAZY:
        from . import modules

        return getattr(modules, name)
    raise AttributeError(name)


__all__ = ["StackedStudents", *_LAZY]
