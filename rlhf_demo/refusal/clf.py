"""The refusal judge's fine-tuned classifier (``refusal-clf-v1``): LoRA adapters on a band of the embedded base
model's blocks and a small pooled head.

The embedded SmolLM2-135M-Instruct reads the exchange as a policy sees it —
``<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n{answer}`` (prompt and answer each cut to 64
tokens, :func:`rlhf_demo.probes.encode`) — and runs in two parts:

* the **frozen bottom**, blocks ``0 .. start-1`` untouched (their output can be cached while training);
* the **adapted band**, blocks ``start .. start+blocks-1`` with low-rank adapters (``W x + (alpha/r) B A x``) on
  their attention and MLP projections; the blocks above the band never run.

The head normalises the band's output (a parameter-free layer norm), pools it — mean over the answer's tokens,
mean over the request's tokens, the answer's last token — and applies dropout and one linear layer: the
probability of "refusal" is ``sigmoid(w · [answer | request | last] + b)``. Weights (adapters + head, a few MB)
and the card (recipe, data, development numbers, the command that rebuilt them) live in
``rlhf_demo/refusal/weights/refusal-clf-v1/``; ``scripts/train_refusal_clf.py`` trains them.

This module is core: it imports nothing from ``training``, ``eval`` or the app; torch and transformers are
imported when a model is built, never at import time.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

CLF_NAME = "refusal-clf-v1"
CLF_DIR = Path(__file__).resolve().parent / "weights" / CLF_NAME
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BATCH = 8


@dataclass(frozen=True)
class ClfShape:
    """What the weights fit: which blocks carry adapters, their rank and scale, and the head's pooling."""

    start: int = 12  # first adapted block (0-based); blocks below it are frozen
    blocks: int = 8  # adapted blocks; the model runs start + blocks blocks in all
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = TARGETS
    pools: tuple[str, ...] = ("answer", "request", "last")

    def check(self, where: str = "") -> "ClfShape":
        bad = [t for t in self.targets if t not in TARGETS]
        unknown = [p for p in self.pools if p not in ("answer", "request", "last")]
        if self.start < 0 or self.blocks < 1 or self.rank < 1 or bad or unknown or not self.pools:
            raise ValueError(f"{where}: bad classifier shape {self!r} (targets must be among {TARGETS}, "
                             "pools among answer/request/last)")
        return self


# ---------------------------------------------------------------------------------------------
# the model (torch is imported inside the builders)
# ---------------------------------------------------------------------------------------------
def _lora_linear_class():
    import torch
    from torch import nn

    class LoRALinear(nn.Module):
        """``base(x) + scale * up(down(dropout(x)))``; ``up`` starts at zero so the wrapped layer starts unchanged."""

        def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
            super().__init__()
            self.base = base
            for p in self.base.parameters():
                p.requires_grad_(False)
            self.down = nn.Parameter(torch.empty(rank, base.in_features))
            self.up = nn.Parameter(torch.zeros(base.out_features, rank))
            nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))
            self.scale = alpha / rank
            self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

        def forward(self, x):
            return self.base(x) + self.scale * ((self.drop(x) @ self.down.t()) @ self.up.t())

    return LoRALinear


def _head_class():
    import torch
    from torch import nn

    class PooledHead(nn.Module):
        def __init__(self, hidden: int, pools: tuple[str, ...], dropout: float = 0.0):
            super().__init__()
            self.pools = tuple(pools)
            self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
            self.linear = nn.Linear(hidden * len(self.pools), 1)
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)

        def forward(self, h, answer_w, request_w, last_idx):
            """h [B, T, H]; answer_w / request_w [B, T] rows summing to 1; last_idx [B] -> logits [B]."""
            h = torch.nn.functional.layer_norm(h.float(), h.shape[-1:])
            parts = []
            for name in self.pools:
                if name == "answer":
                    parts.append(torch.einsum("bt,bth->bh", answer_w, h))
                elif name == "request":
                    parts.append(torch.einsum("bt,bth->bh", request_w, h))
                else:
                    parts.append(h[torch.arange(len(h)), last_idx])
            return self.linear(self.drop(torch.cat(parts, dim=-1))).squeeze(-1)

    return PooledHead


_LOCK = threading.Lock()
_BASE: dict[int, tuple] = {}


def base_body(blocks: int):
    """(the embedded base model's body cut to its first ``blocks`` blocks, final norm removed, tokenizer) — a
    fresh copy per call is not needed: one per process and depth, never trained in place (adapters wrap the
    band's projections in a copy, see :func:`build`)."""
    with _LOCK:
        if blocks not in _BASE:
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
            body.norm = torch.nn.Identity()
            body.eval()
            for p in body.parameters():
                p.requires_grad_(False)
            _BASE[blocks] = (body, tok)
    return _BASE[blocks]


def split_body(body, start: int):
    """Two views of one body that share its weights: ``bottom`` runs blocks ``< start`` from token ids,
    ``top`` runs blocks ``>= start`` from the bottom's output (``inputs_embeds``; rotary positions and the
    causal/padding mask are built by the model as usual)."""
    import copy

    from torch import nn

    if not 0 <= start < len(body.layers):
        raise ValueError(f"start={start}: the body has {len(body.layers)} blocks")
    bottom, top = copy.copy(body), copy.copy(body)
    bottom._modules, top._modules = dict(body._modules), dict(body._modules)
    bottom.layers = nn.ModuleList(list(body.layers)[:start])
    top.layers = nn.ModuleList(list(body.layers)[start:])
    bottom.norm = top.norm = nn.Identity()
    return bottom, top


class RefusalClassifier:
    """The frozen bottom, the adapted band and the head, with the tokenizer; ``probability`` batches answers."""

    def __init__(self, shape: ClfShape, lora_dropout: float = 0.0, head_dropout: float = 0.0):
        import copy

        from torch import nn

        self.shape = shape.check("RefusalClassifier")
        body, self.tok = base_body(shape.start + shape.blocks)
        self.bottom, top = split_body(body, shape.start)
        LoRALinear = _lora_linear_class()
        band = nn.ModuleList()
        for layer in top.layers:
            layer = copy.copy(layer)  # a shallow copy: the base weights are shared, the wrappers are ours
            layer._modules = dict(layer._modules)
            for part in ("self_attn", "mlp"):
                sub = copy.copy(getattr(layer, part))
                sub._modules = dict(sub._modules)
                for name in shape.targets:
                    if name in sub._modules:
                        setattr(sub, name, LoRALinear(sub._modules[name], shape.rank, shape.alpha, lora_dropout))
                setattr(layer, part, sub)
            band.append(layer)
        top.layers = band
        self.top = top
        self.head = _head_class()(body.config.hidden_size, shape.pools, head_dropout)
        self.threshold = 0.5
        self.card: dict = {}

    # -- parameters ------------------------------------------------------------------------------
    def trainable(self) -> dict:
        """Name -> parameter of everything trained (adapters and head)."""
        out = {f"top.{n}": p for n, p in self.top.named_parameters() if n.endswith((".down", ".up"))}
        out.update({f"head.{n}": p for n, p in self.head.named_parameters()})
        return out

    def train(self, mode: bool = True) -> None:
        self.top.train(mode)
        self.head.train(mode)
        self.bottom.eval()

    def state(self) -> dict:
        return {n: p.detach().cpu().numpy().astype(np.float32) for n, p in self.trainable().items()}

    def load_state(self, arrays: dict, where: str = "") -> None:
        import torch

        params = self.trainable()
        missing, extra = sorted(set(params) - set(arrays)), sorted(set(arrays) - set(params))
        if missing or extra:
            raise ValueError(f"{where}: weights do not fit the shape (missing {missing[:3]}, unexpected {extra[:3]})")
        with torch.no_grad():
            for n, p in params.items():
                a = torch.as_tensor(np.asarray(arrays[n], dtype=np.float32))
                if tuple(a.shape) != tuple(p.shape):
                    raise ValueError(f"{where}: {n} has shape {tuple(a.shape)}, the model wants {tuple(p.shape)}")
                p.copy_(a)

    def save(self, path: Path, card: dict) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays = {n: a.astype(np.float16) if n.startswith("top.") else a for n, a in self.state().items()}
        np.savez_compressed(path / "weights.npz", **arrays)
        card = dict(card, shape=asdict(self.shape), threshold=float(self.threshold))
        (path / "card.json").write_text(json.dumps(card, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path = CLF_DIR) -> "RefusalClassifier":
        path = Path(path)
        card_path = path / "card.json"
        try:
            card = json.loads(card_path.read_text())
            raw = dict(card["shape"])
            shape = ClfShape(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
            threshold = float(card["threshold"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{card_path}: cannot read the classifier's card: {exc}") from exc
        if not 0 < threshold < 1:
            raise ValueError(f"{card_path}: threshold {threshold} must be in (0, 1)")
        clf = cls(shape.check(str(card_path)))
        with np.load(path / "weights.npz") as data:
            clf.load_state({k: data[k] for k in data.files}, str(path / "weights.npz"))
        clf.threshold, clf.card = threshold, card
        clf.train(False)
        return clf

    # -- inputs ----------------------------------------------------------------------------------
    def encode(self, prompts: list[str | None], responses: list[str]) -> list[tuple]:
        from ..probes import encode

        return [encode(self.tok, p, r) for p, r in zip(prompts, responses)]

    def batch(self, enc: list[tuple]):
        """Right-padded ids, mask, pooling weights and last-answer-token index of encoded exchanges."""
        import torch

        from ..padding import pad_rows

        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        ids, attn = pad_rows([e[0] for e in enc], pad, "right")
        T = ids.shape[1]
        answer_w = torch.zeros((len(enc), T))
        request_w = torch.zeros((len(enc), T))
        last = torch.zeros(len(enc), dtype=torch.long)
        for row, (_, (p0, p1), (r0, r1)) in enumerate(enc):
            answer_w[row, r0:r1] = 1.0 / (r1 - r0)
            p1 = max(p1, p0 + 1)
            request_w[row, p0:p1] = 1.0 / (p1 - p0)
            last[row] = r1 - 1
        return ids, attn, answer_w, request_w, last

    def bottom_states(self, ids, attn):
        """The frozen bottom's output (cacheable: it never changes)."""
        import torch

        if self.shape.start == 0:
            return self.bottom.embed_tokens(ids)
        with torch.no_grad():
            return self.bottom(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state

    def logits_from_states(self, states, attn, answer_w, request_w, last):
        h = self.top(inputs_embeds=states, attention_mask=attn, use_cache=False).last_hidden_state
        return self.head(h, answer_w, request_w, last)

    def probability(self, prompts: list[str | None], responses: list[str], batch: int = BATCH) -> np.ndarray:
        """Probability that each answer is a refusal (answers sorted by length and batched)."""
        import torch

        if not responses:
            return np.zeros(0)
        self.train(False)
        enc = self.encode(list(prompts), list(responses))
        order = sorted(range(len(enc)), key=lambda i: len(enc[i][0]))
        out = np.zeros(len(enc), dtype=np.float64)
        with torch.inference_mode():
            for s in range(0, len(order), batch):
                idx = order[s:s + batch]
                ids, attn, aw, rw, last = self.batch([enc[i] for i in idx])
                z = self.logits_from_states(self.bottom_states(ids, attn), attn, aw, rw, last)
                out[idx] = torch.sigmoid(z.float()).numpy()
        return out


_CLF = None


def refusal_clf() -> RefusalClassifier:
    """The shipped classifier, loaded once per process."""
    global _CLF
    with _LOCK:
        loaded = _CLF
    if loaded is None:
        loaded = RefusalClassifier.load()
        with _LOCK:
            _CLF = loaded
    return _CLF
