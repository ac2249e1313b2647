"""notebooks/quickstart.ipynb runs top to bottom (nbclient) on the smoke config and shows the run it made."""

from __future__ import annotations

import base64
import json
import os

import pytest

from .helpers import ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"


@pytest.mark.timeout(900)
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("CMM_QUICKSTART_DIR", str(tmp_path))
    monkeypatch.delenv("CMM_QUICKSTART_RUN", raising=False)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()

    report = json.loads((tmp_path / "run" / "report.json").read_text())
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    pngs = [base64.b64decode(o.data["image/png"]) for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 3 and all(p.startswith(b"\x89PNG") for p in pngs)  # heatmaps, MoE weights, equity
    html = "\n".join(o.data["text/html"] for o in outputs if "text/html" in o.get("data", {}))
    from cmm_lightning.report import policies

    for policy, m in policies(report["backtest"]).items():  # the results table, from report.json
        assert policy in html and f"{m['pnlmap']:.4f}".rstrip("0").rstrip(".") in html
    for baseline in report["backtest"]["paired"]:  # cmm against every other policy
        assert f">{baseline}<" in html
    for student in report["students"]:  # the MoE weights by regime and the test R² table
        assert html.count(student) >= 2
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"run folder: {tmp_path / 'run'}" in text and "layer per task, chosen on val" in text
    assert os.path.isfile(tmp_path / "run" / "backtest" / "equity.png")
