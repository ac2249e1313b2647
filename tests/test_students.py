"""OFDD students: stacked == separate students, losses by hand, set-up from data, masks, training plumbing."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cmm_lightning.config import StudentsConfig
from cmm_lightning.students.encoders import StackedLinear, fold_input_affine
from cmm_lightning.students.losses import feat_loss, ofdd_loss, weighted_mse
from cmm_lightning.students.modules import (DataStudents, LayerStudents, TaskStudents, evaluate,
                                            train_students)
from cmm_lightning.students.stacked import StackedStudents

from .helpers import quiet_trainer
from .helpers.students import HIDDEN, N_LAYERS1, PLAN, make_data, small_cfg


@pytest.fixture(scope="module")
def dm():
    return make_data(n=1600)


def _cfg_dict(**kw):
    d = {"hidden": 16, "channels": 8, "kernel": 4, "pca_dim": 8, "kd_lambdas": [1.0, 100.0]}
    d.update(kw)
    return d


@pytest.mark.parametrize("enc", ["tcn", "gru", "mixer"])
def test_stacked_equals_loop_over_separate_students(enc):
    torch.manual_seed(0)
    m = StackedStudents(4, 20, 11, encoder=enc, hidden=12, channels=6, kernel=4, proj_dim=5)  # T % k == 0
    m2 = StackedStudents(3, 22, 11, encoder=enc, hidden=12, channels=6, kernel=4, proj_dim=5)  # T % k != 0
    for mod, T in ((m, 20), (m2, 22)):
        x = torch.randn(7, T, 11)
        y, h, p = mod(x)
        for i in range(mod.n_students):
            yi, hi, pi = mod.select([i])(x)
            torch.testing.assert_close(yi[0], y[i], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(hi[0], h[i], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(pi[0], p[i], rtol=1e-5, atol=1e-5)
    both = StackedStudents.concat([m.select([0, 2]), m.select([1])])
    torch.testing.assert_close(both(torch.ones(2, 20, 11))[0], m(torch.ones(2, 20, 11))[0][[0, 2, 1]])


def test_tcn_student_is_two_plain_conv1d():
    """Student i of the stacked tcn == Conv1d(F→C, k, stride k) → ReLU → Conv1d(C→d, T//k) → ReLU."""
    torch.manual_seed(1)
    S, T, F, C, d, k = 3, 24, 7, 5, 6, 4
    m = StackedStudents(S, T, F, "tcn", hidden=d, channels=C, kernel=k)
    x = torch.randn(4, T, F)
    _, h, _ = m(x)
    enc = m.encoder
    for i in range(S):
        c1, c2 = nn.Conv1d(F, C, k, stride=k), nn.Conv1d(C, d, T // k)
        with torch.no_grad():
            c1.weight.copy_(enc.first.weight[i].reshape(k, F, C).permute(2, 1, 0))
            c1.bias.copy_(enc.first.bias[i, 0])
            c2.weight.copy_(enc.second.weight[i].reshape(T // k, C, d).permute(2, 1, 0))
            c2.bias.copy_(enc.second.bias[i, 0])
        ref = torch.relu(c2(torch.relu(c1(x.transpose(1, 2))))).squeeze(-1)
        torch.testing.assert_close(h[i], ref, rtol=1e-5, atol=1e-5)


def test_gru_student_is_torch_gru():
    torch.manual_seed(2)
    S, T, F, d = 2, 9, 5, 6
    m = StackedStudents(S, T, F, "gru", hidden=d)
    x = torch.randn(3, T, F)
    _, h, _ = m(x)
    enc = m.encoder
    for i in range(S):
        g = nn.GRU(F, d, batch_first=True)
        with torch.no_grad():
            g.weight_ih_l0.copy_(enc.first.weight[i].T); g.bias_ih_l0.copy_(enc.first.bias[i, 0])
            g.weight_hh_l0.copy_(enc.recurrent.weight[i].T); g.bias_hh_l0.copy_(enc.recurrent.bias[i, 0])
        torch.testing.assert_close(h[i], g(x)[1][0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("enc", ["tcn", "gru", "mixer"])
def test_default_students_fit_the_parameter_budget(enc):
    c = StudentsConfig()
    m = StackedStudents(3, 32, 23, enc, c.hidden, c.channels, c.kernel, proj_dim=c.pca_dim)
    assert 1_000 < m.params_per_student() <= 100_000


def test_fold_input_affine_is_exact():
    torch.manual_seed(3)
    lin = StackedLinear(2, 3 * 4, 5)  # patch of 3 snapshots, F = 4
    x = torch.randn(6, 3 * 4)
    scale, shift = torch.rand(4) + 0.5, torch.randn(4)
    want = lin((x.view(6, 3, 4) * scale + shift).reshape(6, 12))
    fold_input_affine(lin, scale, shift, patch=3)
    torch.testing.assert_close(lin(x), want, rtol=1e-5, atol=1e-5)


def test_losses_by_hand():
    proj = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # S=1, B=2, D=2
    target = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])
    mask = torch.ones(1, 2)
    # nmse = (0 + 1 + 0 + 1) / (1 + 1 + 0 + 1) = 2/3
    assert feat_loss(proj, target, mask, "nmse").item() == pytest.approx(2 / 3)
    # cosine: 1 - 1/sqrt(2) and 1 - 1 → mean
    assert feat_loss(proj, target, mask, "cosine").item() == pytest.approx((1 - 2 ** -0.5) / 2, rel=1e-6)
    yhat = torch.tensor([[[1.0, 0.0, 0.0], [3.0, 0.0, 0.0]], [[0.0, 2.0, 0.0], [0.0, 0.0, 0.0]]])  # S=2, B=2
    y = torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # student 0 sees window 0 only
    tw = torch.tensor([[1.0, 1.0, 1.0], [1.0, 3.0, 1.0]])
    got = weighted_mse(yhat, y, mask, tw)
    assert got[0].item() == pytest.approx((1.0 + 0 + 0) / 3)  # window 1 (error 9) is masked out
    assert got[1].item() == pytest.approx((0 + 3 * (4.0 / 2) + 0) / 5)
    parts = ofdd_loss(yhat, y, mask, tw, kd=torch.zeros(2, 3), alpha=1.0, beta=2.0, gamma=0.5)
    torch.testing.assert_close(parts["total"], 2 * got + 0.5 * got)
    assert parts["feat"].abs().sum() == 0


def test_setup_from_data_normalisers_pca_and_planted_kd(dm):
    m = TaskStudents(PLAN, _cfg_dict(), dm.windows.n_features, dm.windows.window, [N_LAYERS1, HIDDEN])
    m.setup_from_data(dm)
    ids = dm.split_ids("train")
    x = dm.windows.inputs(ids).reshape(-1, dm.windows.n_features).astype(np.float64)
    std = x.std(0)
    np.testing.assert_allclose(m.x_mean.numpy(), x.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(m.x_std.numpy(), np.where(std > 1e-6, std, 1.0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(m.y_mean.numpy(), dm.windows.targets[ids].mean(0), rtol=1e-4, atol=1e-4)
    # PCA axes orthonormal; slice targets centred with unit mean square per component on train
    eye = torch.eye(m.pca.shape[-1])
    for s in range(3):
        torch.testing.assert_close(m.pca[s].T @ m.pca[s], eye, atol=1e-4, rtol=0)
    t = torch.from_numpy(dm.teacher[ids].astype(np.float32))
    sl = m.teacher_slices(t)
    assert sl.mean(1).abs().max() < 1e-3
    assert (sl ** 2).mean().item() == pytest.approx(1.0, rel=1e-2)
    # the KD ridge recovers the planted relation (layer l_k reads task k) on the test windows
    te = dm.split_ids("test")
    kd = m.kd_targets({"teacher": torch.from_numpy(dm.teacher[te].astype(np.float32))})
    y = (torch.from_numpy(dm.windows.targets[te]) - m.y_mean) / m.y_std
    r2 = 1 - ((kd - y) ** 2).mean(0) / y.var(0)
    assert (r2 > 0.8).all(), r2


def test_slices_follow_the_plan(dm):
    names = {}
    for cls in (LayerStudents, TaskStudents, DataStudents):
        m = cls(PLAN, _cfg_dict(), dm.windows.n_features, dm.windows.window, [N_LAYERS1, HIDDEN])
        names[cls.dimension] = m.student_names
        if cls is LayerStudents:
            np.testing.assert_allclose(m.mix.numpy(), [[.5, .5, 0, 0, 0], [0, 0, .5, .5, 0], [0, 0, 0, 0, 1]])
        if cls is TaskStudents:
            assert m.mix.argmax(1).tolist() == [3, 2, 4]
            assert m.task_w.tolist() == [[3, 1, 1], [1, 3, 1], [1, 1, 3]]
        if cls is DataStudents:
            assert m.mix.argmax(1).tolist() == [1, 2, 3] and m.regime_of.tolist() == [0, 1, 2]
    assert names == {"layer": ["layer_shallow", "layer_middle", "layer_deep"],
                     "task": ["task_mid", "task_spread", "task_volume"],
                     "data": ["data_calm", "data_normal", "data_volatile"]}


def test_data_students_only_see_their_regime(dm):
    torch.manual_seed(0)
    m = DataStudents(PLAN, _cfg_dict(), dm.windows.n_features, dm.windows.window, [N_LAYERS1, HIDDEN])
    m.setup_from_data(dm)
    batch = next(iter(dm.train_dataloader()))
    r = batch["regime"]
    assert set(r.tolist()) == {0, 1, 2}
    m.log = lambda *a, **k: None
    grads = []
    for perturb in (False, True):
        b = dict(batch)
        if perturb:  # change inputs, targets and teacher features of the calm windows only
            sel = r == 0
            b["y"] = b["y"].clone(); b["y"][sel] += 5.0
            b["x"] = b["x"].clone(); b["x"][sel] *= 3.0
            b["teacher"] = b["teacher"].clone(); b["teacher"][sel] += 1.0
        m.zero_grad()
        m._step(b, "train").backward()
        grads.append({k: p.grad.clone() for k, p in m.students.named_parameters()})
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k][1:], grads[1][k][1:])  # normal / volatile students: identical
        assert not torch.allclose(grads[0][k][0], grads[1][k][0])  # the calm student sees the change


def test_train_students_checkpoints_resume_and_skip(dm, tmp_path):
    import lightning as L

    cfg = small_cfg(**{"students.max_epochs": 2})

    class Crash(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 0:
                trainer.save_checkpoint(Path(trainer.checkpoint_callback.dirpath) / "last.ckpt")
                raise RuntimeError("killed")  # the process dies after epoch 0

    class Epochs(L.Callback):
        seen = []

        def on_train_epoch_start(self, trainer, pl_module):
            Epochs.seen.append(trainer.current_epoch)

    with pytest.raises(RuntimeError, match="killed"):
        train_students("layer", PLAN, dm, cfg, tmp_path, callbacks=[Crash()])
    ck = tmp_path / "checkpoints" / "layer"
    assert (ck / "last.ckpt").is_file() and not (ck / "done.json").exists()
    m = train_students("layer", PLAN, dm, cfg, tmp_path, callbacks=[Epochs()])
    assert Epochs.seen == [1]  # resumed at epoch 1, did not start over
    done = json.loads((ck / "done.json").read_text())
    blob = torch.load(ck / "best.ckpt", weights_only=True)
    assert blob["hyper_parameters"]["plan"]["groups"] == PLAN["groups"]
    Epochs.seen = []
    again = train_students("layer", PLAN, dm, cfg, tmp_path, callbacks=[Epochs()])
    assert Epochs.seen == [] and json.loads((ck / "done.json").read_text()) == done  # reused, not retrained
    for a, b in zip(m.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b)
    # contracts
    b = next(iter(dm.test_dataloader()))
    h, sl = again.hidden_and_slices(b)
    assert h.shape == (3, len(b["x"]), 16) and sl.shape == (3, len(b["x"]), 8)
    pw = again.predict_windows(b["x"])
    torch.testing.assert_close(pw, again.predict_students(b["x"]).mean(0))
    res = evaluate(again, dm, "test")
    assert set(res) == {"layer_shallow", "layer_middle", "layer_deep", "layer_mean"}
    y = torch.from_numpy(dm.windows.targets[dm.split_ids("test")])
    p = torch.cat([again.predict_windows(bb["x"]) for bb in dm.test_dataloader()])
    assert res["layer_mean"]["mid"]["mse"] == pytest.approx(((p[:, 0] - y[:, 0]) ** 2).mean().item(), rel=1e-4)
    # a changed config is a new fingerprint: the stale checkpoints are not reused
    cfg2 = small_cfg(**{"students.max_epochs": 1, "students.alpha": 0.5})
    Epochs.seen = []
    train_students("layer", PLAN, dm, cfg2, tmp_path, callbacks=[Epochs()])
    assert Epochs.seen == [0]


def test_validation_logs_per_student_metrics(dm, tmp_path):
    m = TaskStudents(PLAN, _cfg_dict(), dm.windows.n_features, dm.windows.window, [N_LAYERS1, HIDDEN])
    m.setup_from_data(dm)
    tr = quiet_trainer(max_epochs=1, enable_checkpointing=False, limit_train_batches=2, default_root_dir=tmp_path)
    tr.fit(m, datamodule=dm)
    keys = set(tr.callback_metrics)
    assert {f"student/{n}/loss" for n in m.student_names} <= keys
    for n in m.student_names:
        for t in ("mid", "spread", "volume"):
            assert {f"student/{n}/{t}_r2", f"student/{n}/{t}_mse", f"student/{n}/{t}_mae"} <= keys
    assert {"val/loss", "val/feat", "val/task", "val/kd", "train/loss"} <= keys
    assert tr.callback_metrics["val/feat"] > 0 and tr.callback_metrics["val/kd"] > 0


def test_feature_and_kd_terms_only_count_windows_with_teacher_features():
    """teacher_mask: windows without cached teacher features add nothing to the feat/KD terms."""
    from cmm_lightning.students.losses import ofdd_loss

    torch.manual_seed(0)
    S, B, D = 2, 6, 4
    yhat, y = torch.randn(S, B, 3), torch.randn(B, 3)
    proj, target, kd = torch.randn(S, B, D), torch.randn(S, B, D), torch.randn(B, 3)
    mask, task_w = torch.ones(S, B), torch.ones(S, 3)
    have = torch.tensor([1, 1, 0, 1, 0, 0], dtype=torch.float32)
    out = ofdd_loss(yhat, y, mask, task_w, proj=proj, target=target, kd=kd, teacher_mask=have)
    keep = have.bool()
    ref = ofdd_loss(yhat[:, keep], y[keep], mask[:, keep], task_w, proj=proj[:, keep],
                    target=target[:, keep], kd=kd[keep])
    torch.testing.assert_close(out["feat"], ref["feat"])
    torch.testing.assert_close(out["kd"], ref["kd"])
    # by hand for student 0: nmse = Σ‖p−t‖² / Σ‖t‖² over the kept windows
    hand = ((proj[0, keep] - target[0, keep]) ** 2).sum() / (target[0, keep] ** 2).sum()
    torch.testing.assert_close(out["feat"][0], hand)
    full = ofdd_loss(yhat, y, mask, task_w)  # the task term still sees every window
    torch.testing.assert_close(out["task"], full["task"])


# ---------------------------------------------------------------------------------------------
# per-student early stopping: every student on its own val loss, with its own best weights
# ---------------------------------------------------------------------------------------------
class _Planted:
    """A tiny stacked 'students' module whose per-student val losses follow a planted schedule."""

    NAN = float("nan")
    # patience 2: a improves up to epoch 5 (done at 7); b is best at epoch 1 (done at 3);
    # c logs NaN first, is best at epoch 1 and flat afterwards (done at 3) → the fit stops after epoch 7
    LOSSES = {"a": [5, 4, 3, 2, 1, 0.9, 2, 2, 2, 2, 2, 2], "b": [1, 0.5, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
              "c": [NAN, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3]}
    BEST = {"a": 5, "b": 1, "c": 1}

    @staticmethod
    def module():
        import lightning as L

        class Planted(L.LightningModule):
            def __init__(self):
                super().__init__()
                self.student_names = list(_Planted.LOSSES)
                self.students = nn.Module()
                self.students.w = nn.Parameter(torch.randn(3, 4, 2))
                self.students.b = nn.Parameter(torch.zeros(3, 2))
                self.register_buffer("shared", torch.arange(4.0))  # outside students.: never copied
                self.snaps, self.epochs = [], []

            def training_step(self, batch, batch_idx):
                (x,) = batch
                return ((torch.einsum("bi,sio->sbo", x, self.students.w) + self.students.b[:, None] - 1) ** 2).mean()

            def validation_step(self, batch, batch_idx):
                pass

            def on_train_epoch_start(self):
                self.epochs.append(self.current_epoch)

            def on_validation_epoch_end(self):
                self.snaps.append({k: v.detach().clone() for k, v in self.students.state_dict().items()})
                for n, vals in _Planted.LOSSES.items():
                    self.log(f"student/{n}/loss", float(vals[self.current_epoch]), sync_dist=True)

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.05)

        return Planted()


def test_per_student_early_stopping_keeps_each_students_best_epoch(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader, TensorDataset

    from cmm_lightning.students.early_stopping import PerStudentEarlyStopping

    torch.manual_seed(0)
    m = _Planted.module()
    shared = m.shared.clone()
    stop = PerStudentEarlyStopping(patience=2)
    last = ModelCheckpoint(dirpath=tmp_path, filename="last", enable_version_counter=False)  # every epoch
    tr = quiet_trainer(max_epochs=12, num_sanity_val_steps=0, callbacks=[stop, last], default_root_dir=tmp_path)
    tr.fit(m, DataLoader(TensorDataset(torch.randn(16, 4)), batch_size=4),
           DataLoader(TensorDataset(torch.randn(4, 4)), batch_size=4))
    assert m.epochs == list(range(8))  # stopped once every student was done (epoch 7), not at max_epochs
    summary = stop.summary()
    for s, n in enumerate(m.student_names):
        e = _Planted.BEST[n]
        assert summary[n] == {"best_epoch": e, "best_loss": pytest.approx(_Planted.LOSSES[n][e]), "done": True}
        for k, v in m.students.state_dict().items():  # the module holds each student's own best epoch
            torch.testing.assert_close(v[s], m.snaps[e][k][s], rtol=0, atol=0)
    # b and c kept training after they were done: their last weights are not their kept ones
    assert not torch.equal(m.snaps[-1]["w"][1], m.snaps[1]["w"][1])
    torch.testing.assert_close(m.shared, shared)
    # the state is plain tensors/numbers: it round-trips through a weights_only load
    path = tmp_path / "state.pt"
    torch.save(stop.state_dict(), path)
    again = PerStudentEarlyStopping(patience=2)
    again.load_state_dict(torch.load(path, weights_only=True))
    assert again.summary() == summary
    fresh = _Planted.module()
    again.apply_best(fresh)
    for k, v in m.students.state_dict().items():
        torch.testing.assert_close(fresh.students.state_dict()[k], v, rtol=0, atol=0)
    with pytest.raises(ValueError, match="students"):
        again.names = ["x", "y", "z"]
        again.load_state_dict(torch.load(path, weights_only=True))
    # killed after the last epoch's checkpoint (every student done): the resumed fit trains no further epoch
    resumed = _Planted.module()
    tr = quiet_trainer(max_epochs=12, enable_checkpointing=False, num_sanity_val_steps=0,
                       callbacks=[PerStudentEarlyStopping(patience=2)], default_root_dir=tmp_path)
    tr.fit(resumed, DataLoader(TensorDataset(torch.randn(16, 4)), batch_size=4), ckpt_path=tmp_path / "last.ckpt",
           weights_only=True)
    assert resumed.epochs == []
    for k, v in m.students.state_dict().items():
        torch.testing.assert_close(resumed.students.state_dict()[k], v, rtol=0, atol=0)


def test_student_val_loss_is_exact_and_data_students_see_only_their_regime(dm, tmp_path):
    """student/<name>/loss = the OFDD loss over all the val windows the student sees, whatever the batching."""
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    m = DataStudents(PLAN, _cfg_dict(), dm.windows.n_features, dm.windows.window, [N_LAYERS1, HIDDEN])
    m.setup_from_data(dm)
    m.eval()
    full = {k: torch.cat([b[k] for b in dm.val_dataloader()]) for k in ("x", "y", "regime", "teacher")}
    r = full["regime"]
    assert set(r.tolist()) == {0, 1, 2}

    perm = torch.randperm(len(r))
    mixed, rest = perm[:60], perm[60:]

    def batches(f):  # a mixed batch + single-regime batches (most hold none of a given student's windows)
        out = [{k: v[mixed] for k, v in f.items()}]
        for g in range(3):
            ids = rest[r[rest] == g]
            out += [{k: v[ids[i:i + 37]] for k, v in f.items()} for i in range(0, len(ids), 37)]
        return out

    def logged(f):
        tr = quiet_trainer(default_root_dir=tmp_path)
        tr.validate(m, dataloaders=DataLoader(batches(f), batch_size=None, collate_fn=lambda b: b), verbose=False)
        return torch.stack([tr.callback_metrics[f"student/{n}/loss"] for n in m.student_names]).double()

    @torch.no_grad()
    def by_hand(b):  # ofdd_loss with every given window in one batch
        yhat, _, proj = m(b["x"])
        return ofdd_loss(yhat, (b["y"] - m.y_mean) / m.y_std, m.window_mask(b["regime"]), m.task_w, proj=proj,
                         target=m.teacher_slices(b["teacher"]), kd=m.kd_targets(b), alpha=m.cfg["alpha"],
                         beta=m.cfg["beta"], gamma=m.cfg["gamma"])["total"].double()

    got = logged({**full, "index": torch.arange(len(r))})
    torch.testing.assert_close(got, by_hand(full), rtol=1e-5, atol=0)
    for s in range(3):  # = its loss over its regime's val windows alone
        own = {k: v[r == s] for k, v in full.items()}
        torch.testing.assert_close(got[s], by_hand(own)[s], rtol=1e-5, atol=0)
    # plant different targets on the calm val windows: only the calm student's value moves, and up
    planted = dict(full, y=full["y"].clone())
    planted["y"][r == 0] += 5 * full["y"].std(0)
    got2 = logged(planted)
    assert got2[0] > got[0] + 10
    torch.testing.assert_close(got2[1:], got[1:], rtol=0, atol=0)
    torch.testing.assert_close(got2[0], by_hand({k: v[r == 0] for k, v in planted.items()})[0], rtol=1e-5, atol=0)


def test_per_student_fit_resumes_to_the_uninterrupted_result(dm, tmp_path):
    import lightning as L

    cfg = small_cfg(**{"students.max_epochs": 4, "students.patience": 2, "students.lr": 3e-3})

    class Killed(L.Callback):  # the process dies after epoch 1 (last.ckpt holds epochs 0–1)
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                raise RuntimeError("killed")

    class Epochs(L.Callback):
        def __init__(self):
            self.seen = []

        def on_train_epoch_start(self, trainer, pl_module):
            self.seen.append(trainer.current_epoch)

    ref = train_students("data", PLAN, dm, cfg, tmp_path / "ref")
    with pytest.raises(RuntimeError, match="killed"):
        train_students("data", PLAN, dm, cfg, tmp_path / "crash", callbacks=[Killed()])
    ck = tmp_path / "crash" / "checkpoints" / "data"
    assert (ck / "last.ckpt").is_file() and not (ck / "done.json").exists()
    epochs = Epochs()
    got = train_students("data", PLAN, dm, cfg, tmp_path / "crash", callbacks=[epochs])
    assert epochs.seen == [2, 3]  # resumed after epoch 1
    want = json.loads((tmp_path / "ref" / "checkpoints" / "data" / "done.json").read_text())
    done = json.loads((ck / "done.json").read_text())
    assert done["students"] == want["students"] and done["best_score"] == want["best_score"]
    best = [v["best_epoch"] for v in done["students"].values()]
    assert min(best) <= 1 < max(best), best  # some student's best is from before the crash, some after
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(got.state_dict()[k], v, rtol=0, atol=0, msg=k)
    # the returned (= best.ckpt) module reproduces every student's best val loss
    tr = quiet_trainer(default_root_dir=tmp_path)
    tr.validate(got, datamodule=dm, verbose=False)
    for n, v in done["students"].items():
        assert float(tr.callback_metrics[f"student/{n}/loss"]) == pytest.approx(v["best_loss"], rel=1e-5)
