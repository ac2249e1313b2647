"""The exported CMM: equals the Lightning modules, fused batch-1 path equals forward, safe round trip."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from cmm_lightning.export import export_cmm, load_cmm, random_cmm, save_cmm
from cmm_lightning.students.modules import DataStudents, LayerStudents, TaskStudents

from .helpers.students import HIDDEN, N_LAYERS1, PLAN, make_data

SCFG = {"hidden": 16, "channels": 8, "kernel": 4, "pca_dim": 8, "kd_lambdas": [1.0]}


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    dm = make_data(n=1200)
    mods = [cls(PLAN, SCFG, dm.windows.n_features, dm.windows.window, [N_LAYERS1, HIDDEN]).setup_from_data(dm)
            for cls in (LayerStudents, TaskStudents, DataStudents)]
    x = torch.cat([b["x"] for b in dm.test_dataloader()])
    return dm, mods, x


def _trained_like_moe(mods, dm, mode, sigma="median"):
    from cmm_lightning.moe.module import HajekMoE

    moe = HajekMoE.from_students(mods, {"embed_dim": 4, "gate_hidden": 8, "kappa": 3.0, "tau": 0.7,
                                        "sigma": sigma}, mode).calibrate(dm)
    with torch.no_grad():  # non-trivial gate and embedding, as after training
        for p in moe.gate.parameters():
            p.normal_(0, 0.3)
        moe.embed.weight.add_(0.05 * torch.randn_like(moe.embed.weight))
        moe.log_sigma.add_(0.2)
    return moe.eval()


@pytest.mark.parametrize("mode,sigma", [("uniform", "median"), ("gate", "median"), ("hajek", "median"),
                                        ("hajek_gate", "median"), ("hajek_gate", "learned")])
def test_export_equals_the_lightning_moe(setup, mode, sigma):
    dm, mods, x = setup
    moe = _trained_like_moe(mods, dm, mode, sigma)
    ex = export_cmm(moe)
    want = moe.predict_windows(x)
    torch.testing.assert_close(ex(x), want, rtol=1e-4, atol=1e-4)
    w_moe = moe(x)["w"]
    torch.testing.assert_close(ex.weights(x), w_moe, rtol=1e-4, atol=1e-5)
    if mode != "uniform":
        assert w_moe.std(0).max() > 1e-3  # the weights really depend on the window
    # the fused batch-1 path gives the same decision
    for i in range(0, len(x), max(1, len(x) // 16)):
        np.testing.assert_allclose(ex.decide(x[i]), want[i].numpy(), rtol=1e-4, atol=1e-4)
    # ... and from the book rows (compiled window + fused kernel): the same float32 output
    w = dm.windows
    for i in w.indices("test")[::7]:
        np.testing.assert_array_equal(ex.decide_book(w.book, w.end[i]), ex.decide(w.inputs(np.array([i]))[0]))


def test_students_module_exports_as_their_average(setup):
    _, mods, x = setup
    ex = export_cmm(mods[1])
    torch.testing.assert_close(ex(x), mods[1].predict_windows(x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ex.decide(x[0].numpy()), mods[1].predict_windows(x[:1])[0].numpy(),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("enc", ["gru", "mixer"])
def test_other_encoders_export_through_forward(setup, enc):
    dm, _, x = setup
    mod = TaskStudents(PLAN, {**SCFG, "encoder": enc}, dm.windows.n_features, dm.windows.window,
                       [N_LAYERS1, HIDDEN]).setup_from_data(dm)
    ex = export_cmm(mod)
    torch.testing.assert_close(ex(x[:32]), mod.predict_windows(x[:32]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ex.decide(x[3]), mod.predict_windows(x[3:4])[0].numpy(), rtol=1e-4, atol=1e-4)
    w = dm.windows  # decide_book: the compiled window, then forward
    i = w.indices("test")[3]
    np.testing.assert_allclose(ex.decide_book(w.book, w.end[i]), ex.decide(w.inputs(np.array([i]))[0]),
                               rtol=1e-6, atol=0)


def test_save_load_round_trip_weights_only_without_lightning(setup, tmp_path):
    dm, mods, x = setup
    ex = export_cmm(_trained_like_moe(mods, dm, "hajek_gate"))
    path = save_cmm(ex, tmp_path / "cmm.pt")
    blob = torch.load(path, weights_only=True)
    assert blob["spec"]["mode"] == "hajek_gate" and len(blob["spec"]["names"]) == 9
    back = load_cmm(path)
    torch.testing.assert_close(back(x), ex(x))
    np.save(tmp_path / "x.npy", x[:5].numpy())
    np.save(tmp_path / "want.npy", ex(x[:5]).numpy())
    code = textwrap.dedent(f"""
        import sys
        for name in ("lightning", "pytorch_lightning", "transformers", "torchmetrics"):
            sys.modules[name] = None  # importing any of them now fails
        import numpy as np, torch
        from cmm_lightning.export import load_cmm
        m = load_cmm({str(path)!r})
        x = torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r}))
        got = m(x).numpy()
        assert np.allclose(got, np.load({str(tmp_path / 'want.npy')!r}), atol=1e-5), got
        assert np.allclose(m.decide(x[0]), got[0], atol=1e-4)
        assert not any(k.startswith(("lightning", "transformers")) and sys.modules[k] is not None
                       for k in sys.modules)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_random_cmm_default_shape_and_traceable():
    m = random_cmm()
    assert m.students.n_students == 9 and m.mode == "hajek_gate"
    x = torch.randn(3, 32, 23)
    tr = torch.jit.trace(m, x[:1], check_trace=False)
    torch.testing.assert_close(tr(x[:1]), m(x[:1]))
    np.testing.assert_allclose(m.decide(x[2]), m(x)[2].numpy(), rtol=1e-4, atol=1e-5)
