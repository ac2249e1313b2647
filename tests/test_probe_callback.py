"""StudentProbeCallback and linear CKA, with a dummy LightningModule that implements the
student contract (``student_names``, ``hidden_and_slices``) and plants its ground truth."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cmm_lightning.callbacks.probe import StudentProbeCallback, linear_cka, probe_students


# ------------------------------------------------------------------------------------------
# linear CKA
# ------------------------------------------------------------------------------------------
def _orthogonal(d, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


@pytest.mark.parametrize("n", [300, 12])  # feature-space and Gram-space branches
def test_linear_cka_invariances(n):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 10))
    Y = X @ rng.normal(size=(10, 6)) + rng.normal(size=(n, 6))
    assert linear_cka(X, X) == pytest.approx(1.0)
    assert linear_cka(X, 3.7 * X @ _orthogonal(10, 1)) == pytest.approx(1.0)
    base = linear_cka(X, Y)
    assert 0.0 < base < 1.0
    assert linear_cka(X @ _orthogonal(10, 2) * 0.01, Y @ _orthogonal(6, 3) * 50 + 4.0) == pytest.approx(base)
    assert linear_cka(Y, X) == pytest.approx(base)  # symmetric


def test_linear_cka_by_hand_and_branches_agree():
    # X = [[1],[2],[3]] -> centred [-1,0,1]; Y = x² -> centred [-2/3, 1/3... ] : orthogonal to X
    X = np.array([[1.0], [2.0], [3.0]])
    Y = np.array([[1.0], [0.0], [1.0]])  # centred (1/3, -2/3, 1/3) ⟂ (-1, 0, 1)
    assert linear_cka(X, Y) == pytest.approx(0.0, abs=1e-12)
    rng = np.random.default_rng(1)
    A, B = rng.normal(size=(20, 30)), rng.normal(size=(20, 25))
    Ac, Bc = A - A.mean(0), B - B.mean(0)
    ref = np.linalg.norm(Bc.T @ Ac) ** 2 / (np.linalg.norm(Ac.T @ Ac) * np.linalg.norm(Bc.T @ Bc))
    assert linear_cka(A, B) == pytest.approx(ref)  # n < d: Gram branch, same number


def test_probe_students_planted():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(800, 3, generator=g)
    h = torch.stack([torch.cat([y @ torch.randn(3, 3, generator=g), torch.randn(800, 5, generator=g)], 1),
                     torch.randn(800, 8, generator=g)])
    res = probe_students(h, y, slices=h.clone())
    assert res["r2"].shape == (2, 3) and (res["r2"][0] > 0.99).all() and (res["r2"][1] < 0.05).all()
    np.testing.assert_allclose(res["cka"], [1.0, 1.0])
    np.testing.assert_allclose(res["F"][0], [1.0, 1.0, 1.0])


# ------------------------------------------------------------------------------------------
# the callback in a real Trainer loop
# ------------------------------------------------------------------------------------------
class _Windows(Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randn(n, 3, generator=g)
        self.x = torch.randn(n, 4, generator=g)
        self.noise = torch.randn(n, 8, generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i], "noise": self.noise[i], "index": torch.tensor(i)}


class _DummyStudents(L.LightningModule):
    """Two 'students': 'planted' holds the targets linearly in h, 'noise' holds nothing.
    planted's teacher slice is a rotated, rescaled copy of its h (CKA 1)."""

    student_names = ["planted", "noise"]

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(4, 3)
        g = torch.Generator().manual_seed(3)
        self.register_buffer("mix", torch.randn(3, 3, generator=g))
        self.register_buffer("rot", torch.linalg.qr(torch.randn(8, 8, generator=g))[0])

    def hidden_and_slices(self, batch):
        y = batch["y"]
        planted = torch.cat([y @ self.mix, batch["noise"][:, :5]], 1)  # [B, 8]
        h = torch.stack([planted, batch["noise"]])  # [S=2, B, 8]
        slices = torch.stack([2.5 * planted @ self.rot, torch.randn_like(planted)])
        return h, slices

    def training_step(self, batch, batch_idx):
        return ((self.net(batch["x"]) - batch["y"]) ** 2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", ((self.net(batch["x"]) - batch["y"]) ** 2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class _ImageLogger(Logger):
    def __init__(self):
        super().__init__()
        self.images, self.metrics = [], []

    @property
    def name(self):
        return "img"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.metrics.append(dict(metrics))

    def log_image(self, key, images, step=None):
        self.images.append((key, images[0].shape, step))


def test_callback_logs_planted_r2_and_cka(tmp_path):
    torch.manual_seed(0)
    cb = StudentProbeCallback(lambdas=[0.01, 1.0, 100.0])
    logger = _ImageLogger()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=logger, callbacks=[cb],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=1, default_root_dir=tmp_path)
    trainer.fit(_DummyStudents(), DataLoader(_Windows(256, 0), batch_size=64, shuffle=True),
                DataLoader(_Windows(800, 1), batch_size=100))
    m = trainer.callback_metrics
    for task in ("mid", "spread", "volume"):
        assert m[f"probe/planted/{task}_r2"] > 0.99
        assert abs(float(m[f"probe/noise/{task}_r2"])) < 0.05
        assert m[f"probe/planted/{task}_F"] == 1.0
    assert m["probe/planted/cka"] == pytest.approx(1.0, abs=1e-5)
    assert m["probe/noise/cka"] < 0.3
    assert [k for k, *_ in logger.images] == ["probe/students"] * 2  # one figure per epoch, not sanity
    assert logger.images[0][1][2] == 3  # RGB
    assert cb.last["names"] == ["planted", "noise"] and cb.last["r2"].shape == (2, 3)
    logged = {k for row in logger.metrics for k in row}
    assert {"probe/planted/mid_r2", "probe/planted/cka", "probe/noise/volume_r2"} <= logged
