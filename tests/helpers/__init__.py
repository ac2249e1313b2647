"""Shared test code: constants here, builders in the submodules.

* :mod:`.books`: the one random book builder (:func:`~.books.random_book`) and the L=1 hand-worked
  :func:`~.books.make_book`;
* :mod:`.tables`: a Book as a CSV/Parquet snapshot table, and the malformed tables;
* :mod:`.students`: the hand-built data (planted teacher) and small config of the students / MoE /
  export tests.

Test modules import them package-relative: ``from .helpers import ROOT`` or
``from .helpers.books import random_book``. Subprocesses a test starts cannot import ``tests``:
they get what they need inline or from the package API.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
SMOKE = ROOT / "conf" / "smoke.yaml"  # the smoke pipeline config
AMZN = ROOT.parent / "shared" / "data" / "lobster"  # the shared AMZN LOBSTER day (tests skip without it)

# the smoke pipeline trimmed to what DDP / resume change (teacher extraction, students, MoE, metrics)
FAST = ["data.synthetic.n_snapshots=3000", "moe.ablations=false", "rl.enabled=false",
        "market.policies=[cmm,fixed_spread,avellaneda_stoikov,teacher_probe]",
        "students.max_epochs=2", "moe.max_epochs=2"]


def quiet_trainer(**kw):
    """``lightning.Trainer(**kw)`` without logger, progress bar or model summary unless ``kw`` sets them."""
    import lightning as L

    return L.Trainer(**{"logger": False, "enable_progress_bar": False, "enable_model_summary": False, **kw})
