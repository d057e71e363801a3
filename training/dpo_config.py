"""DPO's configuration (``python -m training.dpo --help``): data, loss, LoRA, optimisation, run and outputs, one
field a flag. Its own module so that the pipeline (``arena_app.pipeline --algorithm dpo``) can nest it without
loading the trainer."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlhf_demo.adapters import DEFAULT_TARGETS
from training.dpo_losses import LOSS_TYPES


@dataclass
class DPOConfig:
    # data
    data: list[str] = field(default_factory=lambda: ["seed"], metadata={
        "help": "preference source, repeatable: seed, arena, a JSONL/JSONL.gz file (TRL standard or conversational, "
                "or HH-RLHF text), hub:ID[:SPLIT] (needs --online); ':N' keeps the first N pairs, 'NAME=' names it",
        "action": "append", "metavar": "SOURCE"})
    validation_fraction: float = field(default=0.1, metadata={
        "help": "share of PROMPTS held out for the held-out metrics (split by a seeded hash of the prompt)"})
    eval_data: list[str] = field(default_factory=list, metadata={
        "help": "more held-out pairs, repeatable (same SOURCE forms as --data; never trained on), e.g. "
                "heldout=rlhf_demo/data/pairs/heldout_val.jsonl", "action": "append", "metavar": "SOURCE"})
    skip_invalid: bool = field(default=False, metadata={"help": "skip malformed rows with a warning instead of stopping"})
    max_length: int = field(default=256, metadata={
        "help": "longest conversation (prompt + answer) in tokens; older prompt tokens are cut first"})
    # loss
    loss_type: str = field(default="sigmoid", metadata={
        "help": "sigmoid = DPO (Rafailov et al.); ipo = IPO (Azar et al.; length-averaged log-probs)",
        "choices": list(LOSS_TYPES)})
    beta: float = field(default=0.1, metadata={
        "help": "strength of the KL regularisation to the reference (DPO's beta; IPO's target gap is 1/(2 beta))"})
    label_smoothing: float = field(default=0.0, metadata={
        "help": "conservative DPO: probability that a preference label is wrong, in [0, 0.5) (sigmoid only)"})
    rpo_alpha: float = field(default=0.0, metadata={
        "help": "RPO: add this weight times the chosen answers' per-token negative log-likelihood to the loss "
                "(Pang et al. 2024; TRL's rpo_alpha; 0 = plain DPO/IPO)"})
    # model
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha / r)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input"})
    lora_target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS), metadata={
        "help": "module names that get LoRA (attention and MLP projections by default)", "nargs": "+"})
    lora_layers: int = field(default=0, metadata={
        "help": "put LoRA on the last N decoder layers only (0 = all layers); the backward pass then stops there"})
    cache_frozen_layers: bool = field(default=True, metadata={
        "help": "with --lora-layers: compute the frozen bottom layers ONCE per pair and keep their output in memory"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute activations in the backward pass (less memory, slower)"})
    bf16: bool = field(default=False, metadata={
        "help": "bfloat16 base and autocast (LoRA weights and the optimizer stay float32)"})
    # optimisation
    learning_rate: float = field(default=5e-5, metadata={"help": "peak learning rate of the LoRA weights"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    lr_scheduler: str = field(default="cosine", metadata={
        "help": "decay after the warm-up", "choices": ["cosine", "linear", "constant"]})
    warmup_ratio: float = field(default=0.1, metadata={"help": "share of the steps spent warming up linearly"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the training pairs (fractions allowed)"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many optimizer steps (0: use --epochs)"})
    batch_size: int = field(default=8, metadata={"help": "pairs per micro-batch (per process under accelerate launch)"})
    grad_accumulation: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "global gradient-norm clip (0: off)"})
    group_by_length: bool = field(default=True, metadata={"help": "batch pairs of similar length together"})
    # run
    seed: int = field(default=0, metadata={"help": "seed of the split, the data order, LoRA init and dropout"})
    run_dir: str = field(default="", metadata={
        "help": "checkpoints, metrics and the final adapter (default: <data dir>/runs/dpo-<time>)"})
    resume: bool = field(default=False, metadata={
        "help": "continue from the newest valid checkpoint in --run-dir (default: the newest dpo run)"})
    save_steps: int = field(default=50, metadata={"help": "checkpoint every N optimizer steps (0: never)"})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints to keep (0: all)"})
    logging_steps: int = field(default=10, metadata={"help": "write training metrics every N optimizer steps"})
    eval_steps: int = field(default=0, metadata={"help": "held-out metrics every N steps (0: at the end only)"})
    eval_at_start: bool = field(default=True, metadata={
        "help": "held-out metrics at step 0 too (the policy is the reference there: loss log 2, accuracy 0.5, KL 0)"})
    eval_batch_size: int = field(default=16, metadata={"help": "pairs per evaluation batch"})
    report_to: list[str] = field(default_factory=lambda: ["jsonl"], metadata={
        "help": "metric sinks: jsonl (always written), tensorboard", "nargs": "+"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    threads: int = field(default=0, metadata={
        "help": "torch CPU threads (0: torch's default, one per core); on a machine shared with other busy "
                "processes 1 is often faster", "aliases": ["--num-threads"]})
    # outputs
    publish: bool = field(default=True, metadata={"help": "publish the trained adapter as a policy version"})
    name: str = field(default="", metadata={"help": "version name (default: the next dpo-vN)"})
    publish_dir: str = field(default="", metadata={
        "help": "publish into this versions directory instead of <data dir>/versions (rlhf_demo/versions: shipped)"})
    replace: bool = field(default=False, metadata={
        "help": "with --publish-dir: replace a version of the same name (only after training succeeded)"})
    description: str = field(default="", metadata={"help": "a line for the version card"})
