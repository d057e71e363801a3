"""Linear probes on the embedded base model's hidden states: one feature extractor, one head, one fit.

A probe reads an exchange the way a policy sees it —
``<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n{response}`` — runs only the first
:data:`LAYERS` transformer blocks of the embedded SmolLM2-135M-Instruct (the base every policy starts
from; the rest of the network is never run), mean-pools the hidden states of the answer's tokens and of
the request's tokens (:func:`pooled_states`), and applies a logistic-regression head
(:class:`Probe`: ``p = sigmoid(w · standardise(x) + b)``) fitted by :func:`fit_logistic`. Prompt and
answer are cut to :data:`MAX_PROMPT_TOKENS` / :data:`MAX_RESPONSE_TOKENS` tokens.

Used by the refusal judge (``rlhf_demo/refusal/probe.py``) and the safety term of the composed reward
(``training/safety_reward.py``). The base model is loaded on first use (one copy per process); everything
runs offline. This module is core: it imports nothing from ``training``, ``eval`` or the app.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

LAYERS = 16
MAX_PROMPT_TOKENS = 64
MAX_RESPONSE_TOKENS = 64
BATCH = 8

_LOCK = threading.Lock()
_BACKBONE = None


def _backbone():
    """(truncated model, tokenizer), loaded once per process."""
    global _BACKBONE
    with _LOCK:
        if _BACKBONE is None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from rlhf_demo.base_model import resolve_base_model
            from rlhf_demo.config import DEFAULT_BASE_MODEL, Settings

            # the probe was trained on the embedded model's states: always that model, whatever --base-model says
            settings = Settings(base_model=DEFAULT_BASE_MODEL)
            source = resolve_base_model(settings)
            tok = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, use_safetensors=True)
            body = model.model
            body.layers = body.layers[:LAYERS]
            body.config.num_hidden_layers = LAYERS
            body.eval()
            _BACKBONE = (body, tok)
    return _BACKBONE


def encode(tok, prompt: str | None, response: str) -> tuple[list[int], tuple[int, int], tuple[int, int]]:
    """Token ids of the (cut) exchange, the span pooled for the request and the span pooled for the answer.

    The request span covers the prompt's tokens and the turn separator up to (not including) the
    newline after ``assistant``; the answer span covers the answer's tokens (for an empty answer: that
    last newline)."""
    p_ids = tok.encode(prompt or "", add_special_tokens=False)[:MAX_PROMPT_TOKENS]
    r_ids = tok.encode(response or "", add_special_tokens=False)[:MAX_RESPONSE_TOKENS]
    head = tok.encode("<|im_start|>user\n", add_special_tokens=False)
    mid = tok.encode("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    ids = head + p_ids + mid
    start = len(ids)
    prompt_span = (len(head), start - 1)
    if not r_ids:
        return ids, prompt_span, (start - 1, start)
    return ids + r_ids, prompt_span, (start, start + len(r_ids))


def pooled_states(prompts: list[str | None], responses: list[str], layer: int = LAYERS,
                  batch: int = BATCH) -> np.ndarray:
    """Mean hidden state after block ``layer`` over each answer's tokens and over its request's tokens:
    ``[n, 2, H]`` (index 0: answer, 1: request)."""
    import torch

    from .padding import pad_rows  # torch-only, like the import above: loading the probe file needs neither

    body, tok = _backbone()
    enc = [encode(tok, p, r) for p, r in zip(prompts, responses)]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i][0]))
    out = np.zeros((len(enc), 2, body.config.hidden_size), dtype=np.float32)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    with torch.inference_mode():
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            ids, attn = pad_rows([enc[i][0] for i in idx], pad, "right")
            pools = torch.zeros((2, len(idx), ids.shape[1]), dtype=torch.float32)
            for row, i in enumerate(idx):
                _, (p0, p1), (r0, r1) = enc[i]
                pools[0, row, r0:r1] = 1.0
                pools[1, row, p0:max(p1, p0 + 1)] = 1.0
            hs = body(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states[layer].float()
            weights = pools / pools.sum(2, keepdim=True)
            out[idx] = torch.einsum("kbt,bth->bkh", weights, hs).numpy()
    return out


def features(pooled: np.ndarray) -> np.ndarray:
    """The probe's input: the answer's and the request's pooled states side by side ``[n, 2H]``."""
    return pooled.reshape(len(pooled), -1)


class Probe:
    """The saved head: standardise, then logistic regression."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray, weight: np.ndarray, bias: float, threshold: float,
                 card: dict):
        self.mean, self.scale, self.weight = mean, scale, weight
        self.bias, self.threshold, self.card = float(bias), float(threshold), card

    @classmethod
    def load(cls, path: Path) -> "Probe":
        data = np.load(path / "head.npz")
        card = json.loads((path / "card.json").read_text())
        if int(card["layer"]) != LAYERS:
            raise ValueError(f"{path}: the probe reads layer {card['layer']}, this code runs {LAYERS} layers")
        return cls(data["mean"], data["scale"], data["weight"], float(data["bias"]), float(card["threshold"]), card)

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        np.savez(path / "head.npz", mean=self.mean.astype(np.float32), scale=self.scale.astype(np.float32),
                 weight=self.weight.astype(np.float32), bias=np.float32(self.bias))
        (path / "card.json").write_text(json.dumps(self.card, indent=2) + "\n")

    def proba(self, features: np.ndarray) -> np.ndarray:
        z = ((features - self.mean) / self.scale) @ self.weight + self.bias
        return 1.0 / (1.0 + np.exp(-z))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, sample_weight: np.ndarray | None = None,
                 iters: int = 500, lr: float = 0.5) -> tuple[np.ndarray, float]:
    """L2-penalised logistic regression by gradient descent on standardised features (returns w, b)."""
    n, d = x.shape
    sw = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=float)
    sw = sw / sw.mean()
    w, b = np.zeros(d), 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
        g = (p - y) * sw
        w -= lr * (x.T @ g / n + l2 * w)
        b -= lr * g.mean()
    return w, b


# ---------------------------------------------------------------------------------------------
# several layers at once (the refusal judge's probe-v2)
# ---------------------------------------------------------------------------------------------
_DEEP: dict[int, tuple] = {}


def _deep_backbone(blocks: int):
    """(model cut to its first ``blocks`` blocks, tokenizer), loaded once per process and depth.

    Unlike :func:`_backbone`, hidden states are read *between* blocks (``hidden_states[l]`` for
    ``l < blocks``), so they never carry the final norm that transformers applies after the last block."""
    with _LOCK:
        if blocks not in _DEEP:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from rlhf_demo.base_model import resolve_base_model
            from rlhf_demo.config import DEFAULT_BASE_MODEL, Settings

            source = resolve_base_model(Settings(base_model=DEFAULT_BASE_MODEL))
            tok = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, use_safetensors=True)
            body = model.model
            if not 0 < blocks <= len(body.layers):
                raise ValueError(f"blocks={blocks}: the base model has {len(body.layers)} blocks")
            body.layers = body.layers[:blocks]
            body.config.num_hidden_layers = blocks
            body.eval()
            _DEEP[blocks] = (body, tok)
    return _DEEP[blocks]


def layer_states(prompts: list[str | None], responses: list[str], layers: tuple[int, ...],
                 batch: int = BATCH) -> np.ndarray:
    """Mean hidden state after each block in ``layers`` (1-based, < the model's depth; no final norm) over
    each answer's tokens and over its request's tokens (spans as in :func:`encode`): ``[n, len(layers), 2, H]``
    (index 0 of the third axis: answer, 1: request). Runs only the first ``max(layers) + 1`` blocks."""
    import torch

    from .padding import pad_rows

    layers = tuple(int(x) for x in layers)
    if not layers or min(layers) < 1:
        raise ValueError(f"layers={layers}: need block numbers >= 1")
    body, tok = _deep_backbone(max(layers) + 1)
    enc = [encode(tok, p, r) for p, r in zip(prompts, responses)]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i][0]))
    out = np.zeros((len(enc), len(layers), 2, body.config.hidden_size), dtype=np.float32)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    with torch.inference_mode():
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            ids, attn = pad_rows([enc[i][0] for i in idx], pad, "right")
            pools = torch.zeros((2, len(idx), ids.shape[1]), dtype=torch.float32)
            for row, i in enumerate(idx):
                _, (p0, p1), (r0, r1) = enc[i]
                pools[0, row, r0:r1] = 1.0
                pools[1, row, p0:max(p1, p0 + 1)] = 1.0
            hs = body(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states
            weights = pools / pools.sum(2, keepdim=True)
            stacked = torch.stack([hs[layer].float() for layer in layers], 0)  # [L, b, t, H]
            out[idx] = torch.einsum("kbt,lbth->blkh", weights, stacked).numpy()
    return out
