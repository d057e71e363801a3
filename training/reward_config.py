"""The reward model's configuration (``python -m training.reward_model --help``): a light module, so the pipeline
(:mod:`arena_app.pipeline`) nests it in its own config without loading the trainer. Field names and types are the
ones :class:`training.ppo_config.PPOConfig` uses for the same thing (``threads``, ``lora_target_modules`` a list).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlhf_demo.adapters import DEFAULT_TARGETS


@dataclass
class RewardConfig:
    # data
    data: list[str] = field(default_factory=lambda: ["seed"], metadata={
        "help": "preference source, repeatable: seed, arena, a JSONL/JSONL.gz file (TRL standard or "
                "conversational, or HH-RLHF text), hub:ID[:SPLIT] (needs --online); ':N' keeps the first N "
                "pairs, 'NAME=' names the source in the metrics", "action": "append", "metavar": "SOURCE"})
    validation_fraction: float = field(default=0.2, metadata={
        "help": "share of PROMPTS held out for evaluation (split by a seeded hash of the prompt, so no prompt "
                "is on both sides)"})
    skip_invalid: bool = field(default=False, metadata={
        "help": "skip malformed rows with a warning instead of stopping at the first one"})
    max_length: int = field(default=512, metadata={
        "help": "longest conversation (prompt + answer) in tokens; older prompt tokens are cut first"})
    # model
    reward_model: str = field(default="", metadata={
        "help": "a registry reward model: evaluated with --eval-only, else training continues from it"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha / r)"})
    lora_dropout: float = field(default=0.0, metadata={
        "help": "dropout on the LoRA input (0 is faster: no dropout mask per projection)"})
    lora_target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS), metadata={
        "help": "module names that get LoRA (attention and MLP projections by default)", "nargs": "+"})
    lora_layers: int = field(default=0, metadata={
        "help": "put LoRA on the last N decoder layers only (0 = all layers); the backward pass then stops there"})
    cache_frozen_layers: bool = field(default=True, metadata={
        "help": "with --lora-layers: compute the frozen bottom layers ONCE per pair and keep their output in "
                "memory (float32, about 4 x hidden size bytes a token); every step then runs the top layers only"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute activations in the backward pass (less memory, slower)"})
    bf16: bool = field(default=False, metadata={
        "help": "bfloat16 compute: the base is loaded in bfloat16 (unless --dtype says otherwise) and the "
                "forward/backward runs under bfloat16 autocast (several times faster on CPUs with AVX512-BF16/AMX "
                "and on GPUs); the LoRA weights, the head and the optimizer stay float32"})
    # optimisation
    learning_rate: float = field(default=2e-4, metadata={"help": "peak learning rate of the LoRA weights"})
    head_learning_rate: float | None = field(default=None, metadata={
        "help": "learning rate of the scalar head (default: --learning-rate)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    lr_scheduler: str = field(default="cosine", metadata={
        "help": "decay after the warm-up", "choices": ["cosine", "linear", "constant"]})
    warmup_ratio: float = field(default=0.1, metadata={"help": "share of the steps spent warming up linearly"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the training pairs (fractions allowed)"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many optimizer steps (0: use --epochs)"})
    batch_size: int = field(default=8, metadata={"help": "pairs per micro-batch (per process under accelerate launch)"})
    grad_accumulation: int = field(default=1, metadata={
        "help": "micro-batches per optimizer step (effective batch = batch size x this)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "global gradient-norm clip (0: off)"})
    group_by_length: bool = field(default=True, metadata={
        "help": "batch pairs of similar length together (little padding; the order stays random)"})
    # loss
    use_margin: bool = field(default=False, metadata={
        "help": "use each pair's 'margin' field in the Bradley-Terry loss (Llama 2 / MOSS-RLHF Part II)"})
    label_smoothing: float = field(default=0.0, metadata={
        "help": "conservative Bradley-Terry: probability that a label is wrong (0: off)"})
    lm_loss_coef: float = field(default=0.0, metadata={
        "help": "weight of an LM loss (next-token NLL) on the chosen answer, a regulariser (0: off)"})
    center_rewards_coef: float = field(default=0.0, metadata={
        "help": "reward centering: weight of mean((r_chosen + r_rejected)^2) (TRL suggests 0.01; 0: off)"})
    # run
    seed: int = field(default=0, metadata={"help": "seed of the split, the data order, LoRA/head init and dropout"})
    run_dir: str = field(default="", metadata={
        "help": "where checkpoints, metrics and the final model go (default: <data dir>/runs/reward-<time>)"})
    resume: bool = field(default=False, metadata={
        "help": "continue from the newest valid checkpoint in --run-dir (default: the newest reward run)"})
    save_steps: int = field(default=50, metadata={"help": "checkpoint every N optimizer steps (0: never)"})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints to keep (0: all)"})
    logging_steps: int = field(default=10, metadata={"help": "write metrics every N optimizer steps"})
    eval_steps: int = field(default=0, metadata={"help": "evaluate on the held-out pairs every N steps (0: at the end)"})
    eval_batch_size: int = field(default=16, metadata={"help": "pairs per evaluation batch"})
    report_to: list[str] = field(default_factory=lambda: ["jsonl"], metadata={
        "help": "metric sinks: jsonl (always written), tensorboard", "nargs": "+"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    threads: int = field(default=0, metadata={
        "help": "torch CPU threads (0: torch's default, one per core); on a machine shared with other busy "
                "processes 1 is often faster", "aliases": ["--num-threads"]})
    # outputs
    eval_only: bool = field(default=False, metadata={
        "help": "evaluate --reward-model on --data (all pairs, no split) and print accuracy, mean margin and a "
                "calibration summary; the last line is 'accuracy=<float> n=<int>'"})
    publish: bool = field(default=True, metadata={"help": "publish the trained model to the registry"})
    name: str = field(default="", metadata={"help": "version name to publish as (default: the next reward-vN)"})
    publish_dir: str = field(default="", metadata={
        "help": "publish into this versions directory instead of <data dir>/versions (e.g. rlhf_demo/versions "
                "for the shipped default)"})
    replace: bool = field(default=False, metadata={
        "help": "with --publish-dir: replace an existing version of the same name (only after training succeeded)"})
    description: str = field(default="", metadata={"help": "a line for the version card"})
    role: str = field(default="reward", metadata={
        "help": "what the published model is for, written to its card: 'reward' (a training reward model PPO "
                "may optimise) or 'judge' (an evaluation-only helpfulness judge; train it on judge-role data only)",
        "choices": ["reward", "judge"]})
