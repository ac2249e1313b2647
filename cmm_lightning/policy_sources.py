"""Where each prediction-driven policy's predictions come from (registered in ``registry.POLICIES``).

Each function takes the :class:`~cmm_lightning.pipeline.Run` and returns float32 ``[W, 3]`` —
predicted mid move (ticks), spread (ticks) and log1p volume for every window of the run, NaN where
the policy has no prediction (it then quotes nothing there). A policy of your own is a function
like these, registered from a ``run.plugins`` module (see ``registry.py``).
"""

from __future__ import annotations

import numpy as np


def _every(run) -> np.ndarray:
    return np.arange(len(run.windows.end))


def cmm(run) -> np.ndarray:
    """The Hájek-MoE of the configured mode over the layer, task and data students."""
    return run.predict(run.moe[run.cfg.moe.mode], _every(run))


def cmm_no_teacher(run) -> np.ndarray:
    """The same students and MoE trained with α = γ = 0: what the LLM adds."""
    return run.predict(run.moe_no_teacher, _every(run))


def single_student_kd(run) -> np.ndarray:
    """One student distilled from the teacher's last layer only (feature slice and KD readout)."""
    return run.predict(run.single_student, _every(run))


def teacher_probe(run) -> np.ndarray:
    """The teacher as a trader: the probe's ridge readout of its features, where it read the window."""
    out = np.full((len(run.windows.end), 3), np.nan, np.float32)
    out[run.teacher.ids] = run.probe.readout(run.teacher.features)
    return out


def llm_agent(run) -> np.ndarray:
    """The teacher's generated numbers (``teacher.agent=true``); NaN where unparsable or not decoded."""
    answers = run.agent_answers
    out = np.full((len(run.windows.end), 3), np.nan, np.float32)
    out[answers["ids"]] = answers["preds"]
    return out


__all__ = ["cmm", "cmm_no_teacher", "llm_agent", "single_student_kd", "teacher_probe"]
