"""Normalized fluorescent probe (docs/method.md, "Probe"): where in the teacher each market quantity lives, per regime."""

from .fluorescence import (REGIMES_ALL, ProbeResult, Readout, fluorescence, make_plan, run_probe,
                           run_probe_stage, segment_profiles, thirds)
from .ridge import RidgeFit, fit_ridge, fit_ridge_gram, linear_cka, r2_score

__all__ = ["REGIMES_ALL", "ProbeResult", "Readout", "RidgeFit", "fit_ridge", "fit_ridge_gram",
           "fluorescence", "linear_cka", "make_plan", "r2_score", "run_probe", "run_probe_stage",
           "segment_profiles", "thirds"]
