"""Hájek-MoE: formulas against brute force, weights, the noisy student, stacking, every mode trains."""

import itertools

import numpy as np
import pytest
import torch

from cmm_lightning.moe.hajek import (hajek_contributions, hajek_weights, median_sigma2, mix,
                                     pairwise_sq_dists, rbf_kernel, u_statistic)
from cmm_lightning.students.modules import DataStudents, LayerStudents, TaskStudents, evaluate

from .helpers import quiet_trainer
from .helpers.students import HIDDEN, N_LAYERS1, PLAN, make_data, small_cfg

SCFG = {"hidden": 16, "channels": 8, "kernel": 4, "pca_dim": 8, "kd_lambdas": [1.0]}
MCFG = {"embed_dim": 4, "gate_hidden": 8, "max_epochs": 1}


@pytest.fixture(scope="module")
def dm():
    return make_data(n=1600)


@pytest.fixture(scope="module")
def students(dm):
    torch.manual_seed(0)
    mods = []
    for cls in (LayerStudents, TaskStudents, DataStudents):
        mods.append(cls(PLAN, SCFG, dm.windows.n_features, dm.windows.window, [N_LAYERS1, HIDDEN])
                    .setup_from_data(dm).eval())
    return mods


def brute_force(e: np.ndarray, sigma2: float):
    N = len(e)
    k = lambda a, b: np.exp(-np.sum((a - b) ** 2) / (2 * sigma2))
    U = sum(k(e[i], e[j]) for i, j in itertools.permutations(range(N), 2)) / (N * (N - 1))
    c = np.array([sum(k(e[i], e[j]) for j in range(N) if j != i) / (N - 1) - U for i in range(N)])
    return U, c


def test_hajek_contributions_match_a_brute_force_double_loop():
    torch.manual_seed(0)
    e = torch.randn(5, 7, 3, dtype=torch.float64)
    for sigma2 in (0.3, 2.0):
        K = rbf_kernel(e, sigma2)
        U, c = u_statistic(K), hajek_contributions(K)
        for b in range(5):
            Ub, cb = brute_force(e[b].numpy(), sigma2)
            assert U[b].item() == pytest.approx(Ub, rel=1e-10)
            np.testing.assert_allclose(c[b].numpy(), cb, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(c.sum(-1), torch.zeros(5, dtype=torch.float64))
        # the exported form: softmax(κ c/τ) == softmax(κ r/(τ(N−1))), r = row sums with the diagonal
        r = K.sum(-1)
        torch.testing.assert_close(hajek_weights(c, 2.0, 0.5), torch.softmax(2.0 * r / (0.5 * 6), -1))


def test_median_heuristic_and_distances():
    e = torch.tensor([[[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]]])
    d2 = pairwise_sq_dists(e)[0]
    torch.testing.assert_close(d2, torch.tensor([[0.0, 25.0, 1.0], [25.0, 0.0, 18.0], [1.0, 18.0, 0.0]]))
    assert median_sigma2(e).item() == pytest.approx(18.0)  # off-diagonal {1, 1, 18, 18, 25, 25}


def test_weights_sum_to_one_and_noisy_student_gets_less():
    torch.manual_seed(1)
    B, S, m = 64, 6, 4
    centre = torch.randn(B, 1, m)
    e = centre + 0.1 * torch.randn(B, S, m)
    e[:, 3] += 5.0 * torch.randn(B, m)  # student 3 outputs noise, far from the others
    c = hajek_contributions(rbf_kernel(e, median_sigma2(e)))
    gate = torch.randn(B, S)
    for w in (hajek_weights(c, 1.0, 1.0), hajek_weights(c, 3.0, 0.5, gate), hajek_weights(None, 1.0, 2.0, gate)):
        torch.testing.assert_close(w.sum(-1), torch.ones(B))
        assert (w >= 0).all()
    w = hajek_weights(c, 1.0, 0.2)
    others = torch.cat([w[:, :3], w[:, 4:]], 1)
    assert (w[:, 3] < others.min(1).values).all()
    yhat = torch.randn(B, S, 3)
    torch.testing.assert_close(mix(w, yhat), (w[..., None] * yhat).sum(1))


def test_moe_stacks_every_student_exactly(students, dm):
    from cmm_lightning.moe.module import HajekMoE

    # perturb one module's normaliser: the MoE must fold the difference away exactly
    students[2].x_mean += 0.3
    students[2].y_std *= 1.5
    try:
        moe = HajekMoE.from_students(students, MCFG, "hajek_gate").eval()
        assert moe.student_names == [n for s in students for n in s.student_names] and len(moe.student_names) == 9
        x = next(iter(dm.test_dataloader()))["x"]
        got = moe.named_predictions(x)
        for mod in students:
            want = mod.predict_students(x)
            for i, n in enumerate(mod.student_names):
                torch.testing.assert_close(got[n], want[i], rtol=1e-4, atol=1e-4)
    finally:
        students[2].x_mean -= 0.3
        students[2].y_std /= 1.5


def test_noisy_student_gets_a_lower_weight_in_the_module(students, dm):
    from cmm_lightning.moe.module import HajekMoE

    moe = HajekMoE.from_students(students, {**MCFG, "kappa": 1.0, "tau": 0.05}, "hajek")
    with torch.no_grad():  # student 4 (task_spread) now outputs noise: a random, large task head
        moe.students.head.weight[4].normal_(0, 3.0)
        moe.init_embedding(noise=0.0)
    moe.calibrate(dm)
    w = moe.mean_weights(dm, "test")["all"]
    assert w["task_spread"] < min(v for k, v in w.items() if k != "task_spread")
    assert sum(w.values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("mode", ["uniform", "gate", "hajek", "hajek_gate"])
def test_every_mode_trains(students, dm, tmp_path, mode):
    from cmm_lightning.moe.module import HajekMoE, train_moe

    cfg = small_cfg(**{"moe.max_epochs": 1, "moe.embed_dim": 4, "moe.gate_hidden": 8,
                       "moe.sigma": "learned" if mode == "hajek" else "median"})
    before = HajekMoE.from_students(students, dict(cfg.moe), mode)
    moe = train_moe(students, dm, cfg, tmp_path, mode=mode)
    ck = tmp_path / "checkpoints" / f"moe_{mode}" / "best.ckpt"
    blob = torch.load(ck, weights_only=True)
    assert blob["hyper_parameters"]["mode"] == mode
    sd0, sd1 = before.state_dict(), moe.state_dict()
    for k in sd0:
        if k.startswith("students."):
            torch.testing.assert_close(sd0[k], sd1[k])  # frozen
    changed = {k for k in sd0 if not k.startswith("students.") and not torch.equal(sd0[k], sd1[k])}
    x = next(iter(dm.test_dataloader()))["x"]
    out = moe.named_predictions(x)
    if mode == "uniform":
        torch.testing.assert_close(out["moe"], out["students_mean"])
    if "gate" in mode:
        assert any(k.startswith("gate.") for k in changed)
    if "hajek" in mode:
        assert "kappa" in changed and any(k.startswith("embed.") for k in changed)
        assert moe.sigma2 > 0
    if mode == "hajek":
        assert "log_sigma" in changed
    res = evaluate(moe, dm, "test")
    assert {"moe", "students_mean", "task_mid"} <= set(res)
    w = moe.mean_weights(dm, "test")
    assert set(w) == {"calm", "normal", "volatile", "all"}
    assert sum(w["all"].values()) == pytest.approx(1.0, abs=1e-5)


def test_moe_logs_weights_per_student_and_regime(students, dm, tmp_path):
    from cmm_lightning.moe.module import HajekMoE

    moe = HajekMoE.from_students(students, MCFG, "hajek_gate").calibrate(dm)
    tr = quiet_trainer(max_epochs=1, enable_checkpointing=False, limit_train_batches=2, default_root_dir=tmp_path)
    tr.fit(moe, datamodule=dm)
    keys = set(tr.callback_metrics)
    for n in moe.student_names:
        assert f"moe/weight/{n}" in keys
        assert {f"moe/weight_{r}/{n}" for r in ("calm", "normal", "volatile")} <= keys
    total = sum(float(tr.callback_metrics[f"moe/weight/{n}"]) for n in moe.student_names)
    assert total == pytest.approx(1.0, abs=1e-4)
    assert {"val/loss", "moe/mid_r2", "moe/kappa", "moe/tau"} <= keys


def test_stacking_view_fits_on_held_out_val_windows(dm):
    """moe.fit_on=val: the MoE trains on the first half of val, early-stops on the rest after a gap."""
    from cmm_lightning.errors import CMMInputError

    w, val = dm.windows, dm.split_ids("val")
    view = dm.stacking_view(0.5, batch_size=32)
    fit, stop = view.split_ids("train"), view.split_ids("val")
    assert set(fit) | set(stop) <= set(val) and not set(fit) & set(stop)
    assert abs(len(fit) - len(val) / 2) <= 1
    assert w.end[fit].max() + w.horizon <= w.end[stop].min()  # no target of one inside the other
    assert len(val) - len(fit) - len(stop) <= w.horizon // 2 + 1  # the gap drops only a few windows
    np.testing.assert_array_equal(view.split_ids("test"), dm.split_ids("test"))
    batches = list(view.train_dataloader())
    served = np.concatenate([b["index"].numpy() for b in batches])
    assert sorted(served) == sorted(fit) and max(len(b["index"]) for b in batches) == 32
    assert batches[0]["teacher"].shape[1:] == dm.teacher.shape[1:]  # the teacher features come along
    with pytest.raises(CMMInputError, match="moe.fit_frac"):
        dm.stacking_view(1.0)
    tiny = dm.with_splits(val=val[:3])
    with pytest.raises(CMMInputError, match="moe.fit_on=train"):
        tiny.stacking_view(0.5)
