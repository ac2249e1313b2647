"""Normalized fluorescent probe (docs/method.md, "Probe"): where in the teacher each market quantity lives, per regime.

``ridge`` (closed-form probes), ``fluorescence`` (run_probe: the protocol), ``plan`` (F and the
plan the students follow), ``result`` (ProbeResult, Readout), ``stage`` (the ``probe`` stage),
``plots`` (heatmaps).
"""

from .fluorescence import run_probe
from .plan import REGIMES_ALL, fluorescence, make_plan, segment_profiles, thirds
from .result import ProbeResult, Readout
from .ridge import RidgeFit, fit_ridge, fit_ridge_gram, linear_cka, r2_score
from .stage import run_probe_stage

__all__ = ["REGIMES_ALL", "ProbeResult", "Readout", "RidgeFit", "fit_ridge", "fit_ridge_gram",
           "fluorescence", "linear_cka", "make_plan", "r2_score", "run_probe", "run_probe_stage",
           "segment_profiles", "thirds"]
