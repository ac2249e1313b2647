"""Teacher feature cache: fingerprint → ``features.npy`` (float16 memmap) + ``ids.npy`` + ``meta.json``.

The key is a fingerprint of everything that decides the features: model weights, tokenizer,
template (text + version, with the window spec it renders), pooling, resolved dtype, the data
(``windows.fingerprint()``: book contents + window spec) and the window ids. A changed key
never reuses old features; the same key is a hit that opens the memmap without loading the model.

Layout of ``<cache_root>/teacher/<fp>/``::

    shards-<plan>/shard_<rank>_<k>.npy, .ids.npy, .sum.json   during extraction (resumable), removed after the merge
    features.npy   float16 [N, n_layers+1, d]    rows in ascending window id
    ids.npy        int64 [N] window ids (positions in WindowSet.end)
    meta.json      written last: its presence (with the same fingerprint) marks a complete cache

Integrity: ``meta.json["files"]`` records the size of both arrays, the blake2b digest of
``ids.npy`` and, for ``features.npy``, one digest per block of ``block_rows`` rows and the number of
non-finite values, all computed from the rows as the merge copies them (nothing is read back).
A hit checks both sizes and the ids' digest, and counts the non-finite values (a bit test, several
times faster than hashing); the block digests are checked only when that count differs from the
one written, or with ``--verify`` (env ``CMM_VERIFY=1``). A damaged entry — a ``meta.json`` that
does not parse, a size, digest or header that differs — is reported in one line, deleted and
extracted again; one that cannot be deleted is a ``CMMInputError`` naming it.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import CMMInputError
from ..io import (DamagedFile, atomic_write_bytes, atomic_path, check_file, digest_bytes, load_json_checked,
                  read_json, report_damaged, verify_requested, write_json)
from ..training import make_trainer
from .models import load_teacher, materialize, resolve_dtype, resolve_model, tokenizer_key, weights_hash
from .prompts import PREFIX, chat_parts, get_template, render_prompts

EXTRACT_VERSION = "2"  # bump when extraction semantics change (2: batches never mix splits)
BLOCK_BYTES = 16 << 20  # features.npy is digested in blocks of rows of about this many bytes


@dataclass
class TeacherFeatures:
    features: np.ndarray  # memmap float16 [N, n_layers+1, hidden]
    ids: np.ndarray  # int64 [N] window ids
    meta: dict
    path: Path
    hit: bool

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    def damaged_rows(self) -> Optional[str]:
        """None when every block of ``features`` matches the digest written with it, else which
        rows do not (e.g. for a consumer that meets NaN/inf); "unknown" without recorded digests."""
        record = (self.meta.get("files") or {}).get("features.npy")
        return "unknown (no checksums recorded)" if record is None else _bad_rows(self.features, record)


def _teacher_cfg(cfg):
    return cfg.teacher if hasattr(cfg, "teacher") else cfg


def target_device(cfg) -> torch.device:
    """The device the Trainer will run on (decides the dtype policy and so the fingerprint)."""
    acc = str(getattr(getattr(cfg, "trainer", None), "accelerator", "auto"))
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def default_ids(windows, max_windows: int | None = None) -> np.ndarray:
    """Every window in a split, or ``max_windows`` of them evenly spaced in time (all splits alike)."""
    ids = np.flatnonzero(windows.split >= 0).astype(np.int64)
    if max_windows is not None and len(ids) > max_windows:
        ids = ids[np.unique(np.linspace(0, len(ids) - 1, int(max_windows)).round().astype(np.int64))]
    return ids


def fingerprint(weights_hash: str, tokenizer_hash: str, template: str, pooling: str, dtype: str,
                windows, ids: np.ndarray) -> str:
    """16 hex digits of sha256 over every input that decides the features."""
    t = get_template(template)
    payload = {
        "extract": EXTRACT_VERSION,
        "weights": weights_hash,
        "tokenizer": tokenizer_hash,
        "template": t.text(),
        "prefix": PREFIX(t, windows.window, windows.horizon),
        "pooling": pooling,
        "dtype": str(dtype).replace("torch.", ""),
        "windows": windows.fingerprint(),
        "ids": hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def teacher_fingerprint(cfg, windows, cache_root: Path, ids: np.ndarray) -> str:
    """Fingerprint from the config without loading the model (file hashes are memoised)."""
    tc = _teacher_cfg(cfg)
    spec = materialize(resolve_model(tc.model, allow_download=bool(tc.allow_download)), cache_root)
    whash = weights_hash(spec, cache_root)
    tok = tokenizer_key(spec, whash, trust_remote_code=bool(tc.trust_remote_code))
    if whash is None:  # hub id: hash of the loaded weights
        _, _, info = load_teacher(tc, cache_root, "cpu")
        whash = info["weights_hash"]
    dtype = resolve_dtype(tc.dtype, target_device(cfg))
    return fingerprint(whash, tok, tc.template, tc.pooling, str(dtype), windows, ids)


def load_features(folder: Path, hit: bool = True) -> TeacherFeatures:
    folder = Path(folder)
    return TeacherFeatures(features=np.load(folder / "features.npy", mmap_mode="r"),
                           ids=np.load(folder / "ids.npy"), meta=read_json(folder / "meta.json"),
                           path=folder, hit=hit)


def _count_nonfinite(a: np.ndarray) -> int:
    """NaN/inf count of a float16 array: exponent bits all ones (a bit test, no float maths)."""
    u = np.ascontiguousarray(a).view(np.uint16)
    return int(np.count_nonzero((u & 0x7C00) == 0x7C00))


def _blocks(n: int, block_rows: int):
    return ((a, min(n, a + block_rows)) for a in range(0, n, max(1, block_rows)))


def _bad_rows(features: np.ndarray, record: dict) -> Optional[str]:
    """None when every block matches its recorded digest, else the rows that do not (one line)."""
    digests, R = list(record.get("blocks") or []), int(record.get("block_rows") or 0)
    spans = list(_blocks(len(features), R)) if R > 0 else []
    if len(spans) != len(digests):
        return f"{len(digests)} block checksums recorded for {len(spans)} blocks"
    bad = [(a, b) for (a, b), d in zip(spans, digests) if digest_bytes(np.ascontiguousarray(features[a:b])) != d]
    if not bad:
        return None
    more = f" (+{len(bad) - 1} more blocks)" if len(bad) > 1 else ""
    return f"checksum mismatch in rows {bad[0][0]}-{bad[0][1] - 1}{more}"


def _open_checked(folder: Path, fp: str, verify: bool) -> Optional[TeacherFeatures]:
    """The cache entry in ``folder`` when complete and intact; None when there is none (no
    ``meta.json`` yet); ``DamagedFile`` naming the first file that is not what was written."""
    meta_path, feats_path, ids_path = folder / "meta.json", folder / "features.npy", folder / "ids.npy"
    meta = load_json_checked(meta_path)
    if meta is None:
        return None
    if meta.get("fingerprint") != fp:
        raise DamagedFile(meta_path, f"fingerprint {meta.get('fingerprint')!r}, not its folder's {fp}")
    files = meta.get("files")
    if isinstance(files, dict):
        for path, digest in ((feats_path, False), (ids_path, True)):  # the ids are small: always digested
            why = check_file(path, files.get(path.name), digest=digest)
            if why:
                raise DamagedFile(path, why)
    elif not feats_path.is_file():  # an entry written before the records: a missing array is a miss
        return None
    try:
        features = np.load(feats_path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as e:
        raise DamagedFile(feats_path, f"unreadable: {str(e)[:120]}") from None
    try:
        ids = np.load(ids_path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DamagedFile(ids_path, f"unreadable: {str(e)[:120]}") from None
    shape = meta.get("shape")
    if features.dtype != np.float16 or features.ndim != 3 or (
            shape is not None and list(features.shape) != list(shape)):
        raise DamagedFile(feats_path, f"{features.dtype} {tuple(features.shape)}, meta.json says float16 {shape}")
    if ids.dtype != np.int64 or ids.shape != (len(features),):
        raise DamagedFile(ids_path, f"{ids.dtype} {ids.shape}, expected int64 ({len(features)},)")
    record = files.get("features.npy") if isinstance(files, dict) else None
    if record is None:
        if verify:
            print(f"--verify: {feats_path} has no recorded checksums (written by an older version); "
                  f"delete {folder} to extract it again", file=sys.stderr)
    elif verify:
        why = _bad_rows(features, record)
        if why:
            raise DamagedFile(feats_path, why)
    else:
        R = max(1, int(record.get("block_rows") or 1))
        n_bad = sum(_count_nonfinite(features[a:b]) for a, b in _blocks(len(features), R))
        n_written = int(record.get("nonfinite", 0))
        if n_bad != n_written:  # values that were not written: find where
            why = _bad_rows(features, record)
            if why:
                raise DamagedFile(feats_path, f"{n_bad:,} non-finite values, {n_written:,} written; {why}")
    return TeacherFeatures(features=features, ids=ids, meta=meta, path=folder, hit=True)


def _discard(folder: Path, damage: DamagedFile) -> None:
    """Delete a damaged cache entry (every rank may try: what is already gone is fine)."""
    def onerror(func, path, exc_info):
        if not isinstance(exc_info[1], FileNotFoundError):
            raise exc_info[1]

    try:
        shutil.rmtree(folder, onerror=onerror)
    except OSError as e:
        raise CMMInputError(f"teacher cache entry {folder} is damaged ({damage.path.name}: {damage.why}) and "
                            f"cannot be deleted ({e.strerror or e}); delete {folder} and run again") from None


def lookup(cache_root: Path, fp: str, verify: Optional[bool] = None) -> Optional[TeacherFeatures]:
    """The cached features of fingerprint ``fp``, checked (see the module doc); None on a miss,
    and after deleting a damaged entry (reported in one line)."""
    folder = Path(cache_root) / "teacher" / fp
    try:
        return _open_checked(folder, fp, verify_requested() if verify is None else verify)
    except DamagedFile as damage:
        _discard(folder, damage)
        report_damaged(damage.path, damage.why, f"deleted the cache entry {fp}, extracting it again")
        return None


def _merge(shard_dir: Path, folder: Path, ids: np.ndarray, n_batches: int, width: tuple[int, int]) -> dict:
    """Shards → ``features.npy`` rows in ascending window id, and ``ids.npy`` (both atomic).

    The rows are gathered block by block in file order, so each block is digested (and its
    non-finite values counted) from memory as it is written. Returns ``meta.json["files"]``."""
    from .extract import read_shards

    shards = read_shards(shard_dir)
    missing = sorted(set(range(n_batches)) - set(shards))
    if missing:
        raise RuntimeError(f"teacher extraction incomplete: {len(missing)} of {n_batches} shards missing")
    n = len(ids)
    src_k, src_j = np.full(n, -1, np.int64), np.zeros(n, np.int64)  # row -> (shard, row in shard)
    for k in range(n_batches):
        rows = np.searchsorted(ids, shards[k][0])
        src_k[rows], src_j[rows] = k, np.arange(len(rows))
    if (src_k < 0).any():
        raise RuntimeError(f"teacher extraction incomplete: {int((src_k < 0).sum())} windows in no shard")
    block_rows = max(1, BLOCK_BYTES // (int(np.prod(width)) * 2))
    digests, nonfinite = [], 0
    with atomic_path(folder / "features.npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n,) + width)
        for a, b in _blocks(n, block_rows):
            block = np.empty((b - a,) + width, dtype=np.float16)
            ks, js = src_k[a:b], src_j[a:b]
            order = np.argsort(ks, kind="stable")
            for part in np.split(order, np.flatnonzero(np.diff(ks[order])) + 1):
                block[part] = shards[int(ks[part[0]])][1][js[part]]
            out[a:b] = block
            digests.append(digest_bytes(block))
            nonfinite += _count_nonfinite(block)
        out.flush()
        del out
        feats_size = tmp.stat().st_size
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(ids, dtype=np.int64), allow_pickle=False)
    atomic_write_bytes(folder / "ids.npy", buf.getvalue())
    return {"features.npy": {"size": feats_size, "block_rows": block_rows, "blocks": digests, "nonfinite": nonfinite},
            "ids.npy": {"size": len(buf.getvalue()), "blake2b": digest_bytes(buf.getvalue())}}


def _trainer(cfg, writer):
    return make_trainer(cfg, precision="32-true", logger=False, enable_checkpointing=False,
                        enable_model_summary=False, use_distributed_sampler=False, callbacks=[writer])


def extract_features(cfg, windows, ids: np.ndarray, folder: Path, fp: str, model=None, tokenizer=None,
                     info: dict | None = None, measure_latency: bool = True) -> dict:
    """Run the predict loop into resumable shards, merge on rank 0, write ``meta.json``; → meta."""
    from .extract import (PlanData, ShardWriter, TeacherExtractor, check_shards, finished_shards, length_buckets,
                          tokenize_prompts)

    tc = _teacher_cfg(cfg)
    t0 = time.perf_counter()
    if model is None:
        model, tokenizer, info = load_teacher(tc, folder.parent.parent, target_device(cfg))
    t_load = time.perf_counter() - t0
    prefix_text = PREFIX(tc.template, windows.window, windows.horizon)
    head, tail = chat_parts(tokenizer, prefix_text)
    bodies = render_prompts(windows, ids, tc.template)
    prefix_ids, tokens = tokenize_prompts(tokenizer, head, bodies, tail)
    lengths = np.array([len(t) for t in tokens])
    plan = length_buckets(lengths, int(tc.batch_size), groups=windows.split[ids])
    plan_key = hashlib.sha256(
        b"".join(np.ascontiguousarray(b, dtype=np.int64).tobytes() + b"|" for b in plan)
        + f"{tc.prefix_cache}".encode()).hexdigest()[:8]
    shard_dir = folder / f"shards-{plan_key}"
    writer = ShardWriter(shard_dir)
    check_shards(shard_dir)  # a resume skips only the shards that are what was written
    done_before = set(finished_shards(shard_dir))
    trainer = _trainer(cfg, writer)
    module = TeacherExtractor(model, prefix_ids, pooling=tc.pooling, prefix_cache=bool(tc.prefix_cache))
    t1 = time.perf_counter()
    trainer.predict(module, datamodule=PlanData(tokens, ids, plan, shard_dir), return_predictions=False)
    t_model = time.perf_counter() - t1
    trainer.strategy.barrier()
    ran = [k for k in range(len(plan)) if k not in done_before]
    n_run = int(sum(len(plan[k]) for k in ran))
    tok_run = int(sum(lengths[plan[k]].sum() + len(prefix_ids) * len(plan[k]) for k in ran))
    meta = {
        "fingerprint": fp,
        **info,
        "template": get_template(tc.template).version,
        "pooling": tc.pooling,
        "prefix_cache": bool(tc.prefix_cache),
        "N": int(len(ids)),
        "shape": [int(len(ids)), info["n_layers"] + 1, info["hidden_size"]],
        "prefix_tokens": int(len(prefix_ids)),
        "window_tokens_mean": float(lengths.mean()),
        "batches": len(plan),
        "resumed_batches": len(done_before),
        "world_size": int(trainer.world_size),
    }
    if trainer.is_global_zero:
        meta["files"] = _merge(shard_dir, folder, ids, len(plan), (info["n_layers"] + 1, info["hidden_size"]))
        wall = time.perf_counter() - t0 - t_load
        meta.update({
            "seconds": {"load": round(t_load, 3), "model": round(t_model, 3), "total": round(wall, 3)},
            "windows_per_s": round(n_run / max(wall, 1e-9), 2),
            "tokens_per_s": round(tok_run / max(wall, 1e-9), 1),
            "model_tokens_per_s": round(tok_run / max(t_model, 1e-9), 1),
        })
        if measure_latency:
            meta["latency_us"] = measure_latency_us(model, tokenizer, windows, ids[: min(8, len(ids))], tc)
        write_json(folder / "meta.json", meta)
        for old in folder.glob("shards-*"):  # this plan's shards, and any left by another batch size
            shutil.rmtree(old, ignore_errors=True)
    trainer.strategy.barrier()
    return meta


def cache_teacher(cfg, windows, cache_root: Path, ids: np.ndarray | None = None) -> TeacherFeatures:
    """Features for windows ``ids`` (default: ``teacher.max_windows`` windows spread over the splits):
    a hit loads the memmap, a miss runs the extraction (resuming from finished shards), then loads it."""
    if ids is None:
        ids = default_ids(windows, getattr(_teacher_cfg(cfg), "max_windows", None))
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    fp = teacher_fingerprint(cfg, windows, cache_root, ids)
    found = lookup(cache_root, fp)
    if found is not None:
        return found
    folder = Path(cache_root) / "teacher" / fp
    folder.mkdir(parents=True, exist_ok=True)
    from contextlib import nullcontext

    from ..dist import is_global_zero
    from ..locks import hold

    # one writer per cache entry (runs in other folders share the cache): wait for a process
    # writing it, then use what it wrote; the ranks of a DDP job share rank 0's lock
    with hold(folder, "teacher cache entry", wait=True) if is_global_zero() else nullcontext():
        found = lookup(cache_root, fp)
        if found is not None:
            return found
        extract_features(cfg, windows, ids, folder, fp)
    return load_features(folder, hit=False)


@torch.inference_mode()
def measure_latency_us(model, tokenizer, windows, idx: np.ndarray, cfg, repeats: int = 1) -> float:
    """Median µs per decision at batch 1: render one window's prompt → tokens → features.

    The prefix KV cache (when enabled) is precomputed, as a live system would hold it. On a CPU
    it runs on one thread, like the CMM's decision benchmark: a fair comparison, and immune to
    oversubscribed cores (2 contended OpenMP threads were 10-40× slower here).
    """
    from .extract import TeacherExtractor, tokenize_prompts

    tc = _teacher_cfg(cfg)
    head, tail = chat_parts(tokenizer, PREFIX(tc.template, windows.window, windows.horizon))
    prefix_ids, _ = tokenize_prompts(tokenizer, head, [], tail)
    ext = TeacherExtractor(model, prefix_ids, pooling=tc.pooling, prefix_cache=bool(tc.prefix_cache))
    ext.prefix_ids = ext.prefix_ids.to(next(model.parameters()).device)
    dev = ext.prefix_ids.device
    idx = np.asarray(idx, dtype=np.int64)
    times = []
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(1)
    try:
        for j in range(-2, len(idx) * repeats):  # two warm-ups
            i = idx[max(j, 0) % len(idx)]
            t = time.perf_counter()
            body = render_prompts(windows, np.array([i]), tc.template)
            _, toks = tokenize_prompts(tokenizer, head, body, tail)
            ext.pool(ext.hidden_states(torch.from_numpy(toks[0][None]).to(dev))).cpu()
            if j >= 0:
                times.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    return round(float(np.median(times)) * 1e6, 1)


def run_cache_teacher(cfg, windows, run_dir: Path) -> TeacherFeatures:
    """Stage ``cache-teacher``: hit or miss, print throughput and path, write ``teacher/meta.json``."""
    from ..config import cache_dir

    tf = cache_teacher(cfg, windows, cache_dir(cfg))
    m = tf.meta
    print(f"cache {'hit' if tf.hit else 'miss'} {tf.fingerprint}")
    print(f"teacher {m['model']} ({m['dtype']}): {m['n_layers']} layers x {m['hidden_size']}, "
          f"template {m['template']}, pooling {m['pooling']}")
    what = "extracted at" if tf.hit else "throughput"
    print(f"{what} {m['windows_per_s']:.1f} windows/s, {m['tokens_per_s']:,.0f} tokens/s "
          f"({m['N']:,} windows, {m['seconds']['total']:.1f} s)")
    print(f"features {tuple(tf.features.shape)} float16 at {tf.path}")
    from ..dist import is_global_zero

    if not is_global_zero():  # DDP: the features are shared; the run folder is rank 0's
        return tf
    summary = {**{k: v for k, v in m.items() if k != "files"}, "hit": tf.hit, "path": str(tf.path)}
    tc = _teacher_cfg(cfg)
    if getattr(tc, "agent", False):
        summary["agent"] = _run_agent(cfg, windows, Path(run_dir), tf)
    write_json(Path(run_dir) / "teacher" / "meta.json", summary)
    return tf


def _run_agent(cfg, windows, run_dir: Path, tf: TeacherFeatures) -> dict:
    from ..config import cache_dir
    from .extract import agent_predictions

    tc = _teacher_cfg(cfg)
    model, tok, _ = load_teacher(tc, cache_dir(cfg), target_device(cfg))
    # the test windows the teacher read (teacher_probe has a fresh reading exactly there), evenly
    # thinned to teacher.agent_max_windows: both teacher policies trade on the same decisions
    idx = default_ids(windows, None)
    idx = idx[np.isin(idx, windows.indices("test")) & np.isin(idx, tf.ids)]
    if tc.agent_max_windows is not None and len(idx) > int(tc.agent_max_windows):
        idx = idx[np.unique(np.linspace(0, len(idx) - 1, int(tc.agent_max_windows)).round().astype(np.int64))]
    preds, n_bad = agent_predictions(model, tok, windows, idx, tc)
    with atomic_path(run_dir / "teacher" / "agent.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, ids=idx, preds=preds)
    print(f"LLM-as-agent: {len(idx)} windows, {n_bad} unparsable answers")
    return {"n": int(len(idx)), "n_bad": int(n_bad), "path": str(run_dir / "teacher" / "agent.npz")}


__all__ = ["TeacherFeatures", "fingerprint", "cache_teacher", "load_features", "measure_latency_us",
           "run_cache_teacher", "teacher_fingerprint"]
