"""Feature extraction as a Lightning ``predict`` run with a crash-safe prediction writer.

For window ``i`` with prompt tokens ``x = [prefix ; body_i]`` (``P`` shared prefix tokens, ``n_i``
own tokens) the teacher's base model (no LM head) gives hidden states ``H_l ∈ R^{(P+n_i)×d}`` for
``l = 0`` (embeddings) .. ``n_layers`` (last block, after the final norm). The feature of layer ``l``:

    mean:  f_l = 1/n_i Σ_{j=P}^{P+n_i−1} H_l[j]        last:  f_l = H_l[P + n_i − 1]   (0-based)

stored float16 as ``[n_layers+1, d]`` per window.

Speed (docs/method.md, "Teacher features"): batches hold prompts of *equal* token length (length buckets: no padding, no
attention mask); with ``prefix_cache`` the prefix's key/value cache is computed once and expanded
over each batch, so only the ``n_i`` own tokens run through the model.

Crash safety: the batch plan is a deterministic function of the token lengths and the batch
size. Batch ``k`` is written as ``shard_<rank>_<k>.npy`` (+ ``.ids.npy``, and ``.sum.json``: the
size and checksum of both, computed from the bytes as they are written) with an atomic rename;
on resume every batch whose shard exists and matches its record is skipped (:func:`check_shards`;
a damaged one is reported and extracted again). Under DDP rank ``r`` runs batches
``k ≡ r (mod world)`` and writes its own shards; rank 0 merges them (see cache.py).

A window's own tokens are its body plus the chat tail that opens the assistant turn, so ``last``
is the hidden state where the answer would start.
"""

from __future__ import annotations

import inspect
import io
import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from ..io import (DamagedFile, atomic_path, atomic_write_bytes, check_file, digest_bytes, load_json_checked,
                  report_damaged, write_json)

CRASH_ENV = "CMM_TEACHER_CRASH_AFTER"  # tests: hard-exit after writing this many shards
FP16_MAX = 65504.0


# ----------------------------------------------------------------------------- prompts → tokens
def tokenize_prompts(tokenizer, head: str, bodies: list[str], tail: str = "") -> tuple[np.ndarray, list[np.ndarray]]:
    """(prefix ids [P], per-window ids) — prefix and bodies tokenized apart, so a prompt's tokens
    are exactly ``prefix + body`` whether or not the prefix cache is used."""
    prefix = np.asarray(tokenizer(head, add_special_tokens=True)["input_ids"], dtype=np.int64)
    enc = tokenizer([b + tail for b in bodies], add_special_tokens=False)["input_ids"] if len(bodies) else []
    return prefix, [np.asarray(e, dtype=np.int64) for e in enc]


def length_buckets(lengths: np.ndarray, batch_size: int, groups: np.ndarray | None = None) -> list[np.ndarray]:
    """Batches of positions with equal length (and equal ``groups`` label): sort by (group, length,
    position), cut each run into chunks of ``batch_size``. Deterministic, zero padding.

    ``groups`` = the windows' splits: a batch never mixes train, val and test windows, so the
    features of a window (whose float rounding depends on the batch it ran in) never depend on
    another split's data — the test split cannot reach what val chooses through the batching."""
    lengths = np.asarray(lengths)
    groups = np.zeros(len(lengths), np.int64) if groups is None else np.asarray(groups)
    order = np.lexsort((np.arange(len(lengths)), lengths, groups))
    cuts = np.flatnonzero((np.diff(lengths[order]) != 0) | (np.diff(groups[order]) != 0)) + 1
    batches = []
    for group in np.split(order, cuts):
        batches.extend(np.split(group, np.arange(batch_size, len(group), batch_size)))
    return [b for b in batches if len(b)]


class PlanDataset(Dataset):
    """Item ``j`` = one whole batch of the plan: {input_ids [B, n], ids [B], k}."""

    def __init__(self, tokens: list[np.ndarray], window_ids: np.ndarray, plan: list[np.ndarray], ks: list[int]):
        self.tokens, self.window_ids, self.plan, self.ks = tokens, window_ids, plan, ks

    def __len__(self) -> int:
        return len(self.ks)

    def __getitem__(self, j: int) -> dict:
        k = self.ks[j]
        pos = self.plan[k]
        return {"input_ids": torch.from_numpy(np.stack([self.tokens[p] for p in pos])),
                "ids": torch.from_numpy(self.window_ids[pos]), "k": k}


class PlanData(L.LightningDataModule):
    """Serves rank ``r`` the batches ``k ≡ r (mod world)`` whose shards are not written yet."""

    def __init__(self, tokens, window_ids, plan, shard_dir: Path):
        super().__init__()
        self.tokens, self.window_ids, self.plan, self.shard_dir = tokens, window_ids, plan, Path(shard_dir)

    def predict_dataloader(self) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        done = finished_shards(self.shard_dir)
        ks = [k for k in range(rank, len(self.plan), world) if k not in done]
        return DataLoader(PlanDataset(self.tokens, self.window_ids, self.plan, ks), batch_size=None)


def finished_shards(shard_dir: Path) -> dict[int, Path]:
    """Plan index ``k`` → its completed ``shard_<rank>_<k>.npy`` (written last, atomically)."""
    out = {}
    for p in Path(shard_dir).glob("shard_*_*.npy"):
        parts = p.name[:-4].split("_")
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            out[int(parts[2])] = p
    return out


# ----------------------------------------------------------------------------- the model run
def _cache_kw(module) -> str:
    """transformers ≥5.2x calls the KV cache ``cache``; older versions ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder without the LM head (``model.model`` for Llama-style models)."""
    base = getattr(model, "base_model", None)
    return base if base is not None and base is not model else model


class TeacherExtractor(L.LightningModule):
    """``predict_step``: token batch → pooled per-layer features float16 [B, n_layers+1, d]."""

    def __init__(self, model: torch.nn.Module, prefix_ids: np.ndarray, pooling: str = "mean",
                 prefix_cache: bool = True):
        super().__init__()
        self.model = model
        self.register_buffer("prefix_ids", torch.as_tensor(prefix_ids, dtype=torch.long)[None], persistent=False)
        self.pooling, self.prefix_cache = pooling, prefix_cache
        self._kv = None

    @property
    def base(self) -> torch.nn.Module:
        return base_model(self.model)

    @torch.inference_mode()
    def _prefix_kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self._kv is None:
            out = self.base(self.prefix_ids, use_cache=True)
            cache = getattr(out, "cache", None) or out.past_key_values
            self._kv = [(layer.keys, layer.values) for layer in cache.layers]
        return self._kv

    def on_predict_start(self) -> None:
        self._kv = None  # recomputed on this device

    @torch.inference_mode()
    def hidden_states(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Hidden states of the window's own tokens only: n_layers+1 tensors [B, n, d]."""
        B, P = input_ids.shape[0], self.prefix_ids.shape[1]
        if self.prefix_cache and P > 0:
            from transformers import DynamicCache

            kv = [(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in self._prefix_kv()]
            out = self.base(input_ids, use_cache=True, output_hidden_states=True,
                            **{_cache_kw(self.base): DynamicCache(kv)})
            return out.hidden_states
        full = torch.cat([self.prefix_ids.expand(B, -1), input_ids], dim=1)
        out = self.base(full, use_cache=False, output_hidden_states=True)
        return tuple(h[:, P:] for h in out.hidden_states)

    def pool(self, hs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """[B, n_layers+1, d] float32."""
        h = torch.stack(hs, dim=1)  # [B, L+1, n, d]
        return h[:, :, -1].float() if self.pooling == "last" else h.float().mean(dim=2)

    def predict_step(self, batch: dict, batch_idx: int = 0) -> dict:
        feats = self.pool(self.hidden_states(batch["input_ids"]))
        feats = feats.clamp_(-FP16_MAX, FP16_MAX).to(torch.float16).cpu().numpy()
        return {"features": feats, "ids": batch["ids"].cpu().numpy(), "k": int(batch["k"])}


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _shard_files(features_path: Path) -> tuple[Path, Path, Path]:
    """(features ``shard_r_k.npy``, ids ``shard_r_k.ids.npy``, record ``shard_r_k.sum.json``)."""
    stem = features_path.name[:-4]
    return features_path, features_path.with_name(stem + ".ids.npy"), features_path.with_name(stem + ".sum.json")


class ShardWriter(BasePredictionWriter):
    """Writes each batch as ``shard_<rank>_<k>.npy`` + ``.ids.npy`` + ``.sum.json``, atomically.

    The ids file goes first, then the record (size and blake2b digest of both files' bytes, hashed
    in memory as they are written: nothing is read back), the features file last: a shard counts
    as finished when its features file exists. Env ``CMM_TEACHER_CRASH_AFTER=n`` (tests)
    hard-exits the process while writing shard n+1, leaving a half-written temp file behind, as a
    SIGKILL would.
    """

    def __init__(self, shard_dir: Path):
        super().__init__(write_interval="batch")
        self.shard_dir = Path(shard_dir)
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self.n_written = 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        feats_path, ids_path, rec_path = _shard_files(
            self.shard_dir / f"shard_{trainer.global_rank}_{prediction['k']}.npy")
        crash_after = os.environ.get(CRASH_ENV)
        ids_b, feats_b = _npy_bytes(prediction["ids"]), _npy_bytes(prediction["features"])
        atomic_write_bytes(ids_path, ids_b)
        write_json(rec_path, {"ids": {"size": len(ids_b), "blake2b": digest_bytes(ids_b)},
                              "features": {"size": len(feats_b), "blake2b": digest_bytes(feats_b)}})
        with atomic_path(feats_path) as tmp:
            with open(tmp, "wb") as f:
                f.write(feats_b)
            if crash_after is not None and self.n_written >= int(crash_after):
                os._exit(17)  # no cleanup, no rename: like a kill mid-write
        self.n_written += 1


def check_shards(shard_dir: Path) -> int:
    """Before a resume: drop every finished shard (left by an earlier process) that does not match
    its ``.sum.json`` record — reported in one line — or has none (written by an older version);
    the predict loop extracts those batches again. Returns how many were dropped."""
    dropped = 0
    for path in finished_shards(shard_dir).values():
        feats_path, ids_path, rec_path = _shard_files(path)
        bad, why = None, None
        try:
            rec = load_json_checked(rec_path)
        except DamagedFile as e:
            bad, why = e.path, e.why
        else:
            if rec is None:
                why = "no checksum record"  # an older version's shard: silently extracted again
            for f, key in ((feats_path, "features"), (ids_path, "ids")):
                if why is None:
                    bad, why = f, check_file(f, rec.get(key))
        if why:
            if bad is not None:
                report_damaged(bad, why, "extracting that batch again")
            for f in (feats_path, ids_path, rec_path):  # the features file (the 'finished' mark) first
                f.unlink(missing_ok=True)
            dropped += 1
    return dropped


def read_shards(shard_dir: Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """k → (ids [B], features [B, L+1, d] memmap) for every finished shard."""
    out = {}
    for k, path in sorted(finished_shards(shard_dir).items()):
        ids = np.load(_shard_files(path)[1])
        out[k] = (ids, np.load(path, mmap_mode="r"))
    return out


# ----------------------------------------------------------------------------- LLM as agent
_NUMBER = r"[-+]?\d+(?:\.\d+)?"


def parse_answer(text: str) -> np.ndarray:
    """The first three numbers of a generated answer → (mid move, spread, volume in lots); NaN
    where fewer than three numbers appear or the values are impossible (spread ≤ 0, volume < 0)."""
    import re

    nums = [float(x) for x in re.findall(_NUMBER, text.replace(",", " "))[:3]]
    if len(nums) < 3 or not np.all(np.isfinite(nums)) or nums[1] <= 0 or nums[2] < 0:
        return np.full(3, np.nan, dtype=np.float32)
    return np.asarray(nums, dtype=np.float32)


@torch.inference_mode()
def agent_predictions(model, tokenizer, windows, idx: np.ndarray, cfg, max_new_tokens: int = 20):
    """LLM-as-agent baseline: greedy-generate an answer per window and parse it.

    → (preds float32 [B, 3] in target units — mid move ticks, mean spread ticks,
    log(1 + volume shares) — with NaN rows for unparsable answers, n_bad).
    """
    from .prompts import LOT, PREFIX, chat_parts, render_prompts

    tc = cfg.teacher if hasattr(cfg, "teacher") else cfg
    head, tail = chat_parts(tokenizer, PREFIX(tc.template, windows.window, windows.horizon))
    prefix_ids, tokens = tokenize_prompts(tokenizer, head, render_prompts(windows, idx, tc.template), tail)
    dev = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    preds = np.full((len(tokens), 3), np.nan, dtype=np.float32)
    for i, body in enumerate(tokens):
        x = torch.from_numpy(np.concatenate([prefix_ids, body]))[None].to(dev)
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=pad)
        preds[i] = parse_answer(tokenizer.decode(out[0, x.shape[1]:], skip_special_tokens=True))
    preds[:, 2] = np.log1p(np.maximum(preds[:, 2], 0) * LOT)  # lots → the volume target's units
    return preds, int(np.isnan(preds).any(axis=1).sum())
