"""PPO-max's configuration: every trick of Zheng et al. 2023 ("Secrets of RLHF in Large Language Models Part I:
PPO") a named, switchable field (defaults = PPO-max), each with the help ``python -m training.ppo --help``
shows. The first step of :mod:`training.ppo`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlhf_demo.adapters import DEFAULT_TARGETS


@dataclass
class PPOConfig:
    # ---------------------------------------------------------------- data
    prompts: list[str] = field(default_factory=lambda: ["seed"], metadata={
        "help": "prompt sources, repeatable: 'seed' (rlhf_demo/data/ppo_prompts.jsonl), 'arena' (users' prompts "
                "from the feedback database), 'mix[:harmful=N,risky=N,ordinary=N]' (the vendored public sets' "
                "role-'train' prompts balanced by kind, default as many of each as the smallest kind has, KIND=0 leaves a kind out; with "
                "it the validation prompts are the sets' role-'val' ones), or a .txt/.jsonl file. Evaluation "
                "prompts are always removed."})
    max_prompts: int = field(default=0, metadata={"help": "use at most this many training prompts (0 = all)"})
    val_prompts: int = field(default=16, metadata={
        "help": "prompts held out of the pool (stratified by category) for the validation that picks the best "
                "checkpoint"})
    train_readout_prompts: int = field(default=32, metadata={
        "help": "the learning curve's readout: this many TRAINING prompts (a fixed, seeded sample) answered greedily "
                "and scored by the training reward at every validation (train/readout_score). The rollouts' "
                "reward/score_mean mixes learning with which prompts an iteration drew; this one does not. 0 = off"})
    train_readout_samples: int = field(default=0, metadata={
        "help": "also sample this many answers per readout prompt at the rollout temperature (the same seeds at "
                "every validation) and log their mean training reward, train/readout_sampled_score: the reward PPO "
                "optimises (train/readout_score is what greedy evaluation sees). 0 = off"})
    val_dtype: str = field(default="auto", metadata={
        "help": "dtype the validation and the readouts decode and score in: float32 (a policy trained in bfloat16 "
                "is widened for them and put back bit for bit, because greedy bfloat16 answers move with their "
                "batch neighbours: docs/decode-noise/README.md), same (the training dtype, as the recipes of "
                "rlhf-v0/v1/v2 ran) or auto (float32 on a CPU; on a GPU the training dtype, since widening a large "
                "model doubles its memory). A 4-bit base is never cast", "choices": ["auto", "float32", "same"]})
    # ---------------------------------------------------------------- models
    reward_model: str = field(default="", metadata={
        "help": "reward-vN to optimise (default: the newest), or toy:WORD — a known-answer reward for diagnosis "
                "(1 if the answer contains WORD, else 0; no reward model, the critic starts fresh)"})
    init_policy: str = field(default="sft", metadata={
        "help": "policy to start from: 'sft' or an rlhf-vN to continue training its adapter"})
    name: str = field(default="", metadata={"help": "name of the published version (default: the next rlhf-vN)"})
    publish: bool = field(default=True, metadata={"help": "publish the best checkpoint to the registry at the end"})
    publish_dir: str = field(default="", metadata={
        "help": "publish into this versions directory instead of <data dir>/versions (e.g. rlhf_demo/versions "
                "for the shipped default)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank of the policy and critic adapters"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha / r)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout (0 keeps rollout and update identical)"})
    lora_target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS), metadata={
        "help": "module names that get LoRA (a list, as the reward model's; 'q_proj,v_proj', the old comma form, "
                "still works)"})
    lora_layers: int = field(default=0, metadata={
        "help": "put the policy/critic LoRA on the top N decoder layers only (0 = all layers)"})
    shared_trunk: bool = field(default=True, metadata={
        "help": "with --lora-layers: run the frozen layers below the adapters once per batch and share "
                "their output between policy, reference and critic (same numbers, less compute)"})
    # ---------------------------------------------------------------- rollouts
    iterations: int = field(default=60, metadata={"help": "PPO iterations (rollout + update)"})
    rollout_batch_size: int = field(default=16, metadata={
        "help": "answers sampled per iteration (the buffer) = prompts × --samples-per-prompt; per process under "
                "accelerate launch"})
    samples_per_prompt: int = field(default=1, metadata={
        "help": "grouped rollouts: answer each sampled prompt K times per iteration (K consecutive rows; "
                "--rollout-batch-size must be a multiple of K), so a per-prompt baseline can compare answers to "
                "the same prompt (1 = one answer per prompt, no baseline)"})
    prompt_baseline: str = field(default="loo", metadata={
        "help": "with --samples-per-prompt K > 1: subtract from each answer's score, before reward normalisation, "
                "clipping and the KL penalty, a baseline from the other answers to its prompt: loo = the mean of "
                "the other K-1 (RLOO; unbiased), mean = the group mean (GRPO without the std), none = no baseline "
                "(training/prompt_baseline.py)",
        "choices": ["loo", "mean", "none"]})
    group_std_scale: bool = field(default=False, metadata={
        "help": "with --samples-per-prompt K > 1: also divide each answer's baselined score by the std of its "
                "prompt's K scores (GRPO), so prompts whose answers differ little weigh as much as those whose "
                "answers differ a lot (training/prompt_baseline.py group_std)"})
    response_length: int = field(default=48, metadata={"help": "longest sampled answer, in tokens"})
    temperature: float = field(default=1.0, metadata={
        "help": "rollout sampling temperature; PPO scores the answers under the same tempered distribution "
                "(logits / T), so its ratios and KL penalty stay on-policy (validation samples at 1)"})
    top_p: float = field(default=1.0, metadata={"help": "rollout nucleus sampling (1 = sample the full policy)"})
    # ---------------------------------------------------------------- PPO-max: reward shaping
    kl_coef: float = field(default=0.05, metadata={
        "help": "token-level KL penalty coefficient β (PPO-max: 0.01–0.05): r_t = -β·KL_t (+ score at the last token)"})
    kl_reference: str = field(default="sft", metadata={
        "help": "the policy the KL penalty pulls towards: sft (the base model with every adapter off, as in "
                "InstructGPT and PPO-max) or init (a frozen copy of --init-policy, e.g. dpo-v1: the penalty keeps what "
                "that policy learned instead of pulling back to SFT's compliance). Validation's exact KL, the KL "
                "bound and the collapse guard measure the distance to SFT either way",
        "choices": ["sft", "init"]})
    kl_estimator: str = field(default="k1", metadata={"help": "per-token KL estimator for the penalty: k1, k2 or k3"})
    reward_normalize: bool = field(default=True, metadata={
        "help": "PPO-max reward normalisation: divide scores by their running std (running moments)"})
    reward_shift_mean: bool = field(default=True, metadata={"help": "also subtract the running mean of the scores"})
    reward_clip: float = field(default=5.0, metadata={"help": "PPO-max reward clipping to [-c, c] (0 = off)"})
    label_safety: float = field(default=0.0, metadata={
        "help": "add SCALE·y·(2e−1) to a plain reward model's score of each rollout: y = +1 for a training prompt "
                "whose data set calls it harmful, −1 for the other labelled kinds (sensitive, ordinary), e = 1 "
                "when rules-v2 finds an explicit decline in the answer (an empty answer gets −SCALE). The prompts' "
                "known labels stand in for a composed reward's prompt-harm probe, and the high-precision explicit "
                "decline for its refusal classifier (training/label_safety.py). 0 = off"})
    eos_penalty: float = field(default=-1.0, metadata={
        "help": "added to the (normalised) score of an answer that never reaches EOS (0 = off)"})
    # ---------------------------------------------------------------- PPO-max: advantages and losses
    advantage: str = field(default="gae", metadata={
        "help": "how the advantage is estimated: 'gae' (PPO-max: GAE(γ, λ) on the critic's values) or 'rloo' (with "
                "--samples-per-prompt K > 1: every token of an answer gets its rest-of-answer return, i.e. the "
                "leave-one-out-centred score plus the KL penalties still to come — RLOO, Ahmadian et al. 2024 — "
                "with no critic value subtracted; the critic is still trained, as a monitor, on the Monte-Carlo "
                "return of the score without the baseline, which it can predict from what it reads, and its "
                "explained variance logged). With a critic that explains little, GAE's λ^t fades the final score "
                "before it reaches the first tokens, the ones that decide whether an answer refuses"})
    gamma: float = field(default=1.0, metadata={"help": "discount γ of GAE (PPO-max: 1)"})
    lam: float = field(default=0.95, metadata={"help": "GAE λ (PPO-max: 0.95)"})
    whiten_advantages: bool = field(default=True, metadata={"help": "PPO-max advantage whitening per batch"})
    clip_range: float = field(default=0.2, metadata={"help": "policy ratio clip ε of the surrogate objective"})
    value_clip: float = field(default=0.2, metadata={"help": "PPO-max value-loss clipping around old values (0 = off)"})
    vf_coef: float = field(default=1.0, metadata={"help": "critic loss weight"})
    entropy_coef: float = field(default=0.0, metadata={"help": "entropy bonus weight (0 = only logged)"})
    ptx_coef: float = field(default=0.0, metadata={
        "help": "PPO-ptx: weight of an SFT loss on the seed pairs' chosen answers (0 = off)"})
    ptx_pairs: list[str] = field(default_factory=lambda: ["seed"], metadata={
        "help": "pair sources whose chosen answers the ptx loss imitates (training.data specs: 'seed', or a JSONL "
                "of pairs such as rlhf_demo/data/pairs/train.jsonl: refusals of train-role harmful requests, answers "
                "to risky-but-safe and ordinary ones)"})
    ptx_categories: str = field(default="helpful,sensitive", metadata={
        "help": "seed-pair categories whose chosen answers the ptx loss imitates (comma-separated; 'all' = every "
                "pair; 'sensitive:2' samples a category twice as often). The default anchors helpfulness only: "
                "imitating the harmless pairs' refusals teaches the policy to refuse in general, which raises "
                "over-refusal; adding them with the sensitive answers weighted up trades refusals against it"})
    critic_from_reward: bool = field(default=False, metadata={
        "help": "PPO-max: initialise the critic adapter and head from the reward model. Off by default: the reward "
                "head scores whole conversations on another scale than the normalised returns and is meaningless "
                "on answer prefixes — explained variance stayed at -1 to -4 through 8 warm-up iterations "
                "(docs/ppo-diagnosis.md); a fresh adapter with a zero head starts at 0 and becomes positive"})
    critic_reward_head: bool = field(default=True, metadata={
        "help": "with --critic-from-reward: copy the reward head too (else the reward adapter with a fresh value "
                "head, see --value-head-init-std)"})
    value_head_init_std: float = field(default=0.0, metadata={
        "help": "std of the initial weights of a fresh value head (--no-critic-from-reward or a toy reward); "
                "0 = zeros: the critic predicts 0 until it learns, so the first advantages are the plain "
                "returns instead of noise from a random head; < 0 = 1/sqrt(hidden+1)"})
    critic_warmup: int = field(default=4, metadata={
        "help": "PPO-max: iterations that update only the critic before the policy moves (a fresh critic needs "
                "a few to predict better than a constant)"})
    ppo_epochs: int = field(default=4, metadata={
        "help": "K epochs over the buffer per iteration (1 moved the policy too little to learn in tens of "
                "iterations; docs/ppo-diagnosis.md)"})
    mini_batch_size: int = field(default=8, metadata={"help": "rollouts per gradient step"})
    policy_lr: float = field(default=2e-4, metadata={
        "help": "policy learning rate (paper 5e-7 for full fine-tuning; a LoRA adapter, which starts at zero, needs "
                "far larger: at 5e-5 the policy moved ~1e-6 nats per update and the reward stayed flat)"})
    critic_lr: float = field(default=2e-4, metadata={
        "help": "critic learning rate (paper 1.65e-6 full FT; LoRA adapter + value head)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "PPO-max global gradient clipping (0 = off)"})
    # ---------------------------------------------------------------- collapse guard
    kl_bound: float = field(default=10.0, metadata={
        "help": "KL bound in nats per answer on val/kl_exact (the exact KL to the reference of answers sampled "
                "at each validation): the best checkpoint must be within it; the guard stops the run when it "
                "stays above it for --kl-guard-validations validations"})
    kl_guard_validations: int = field(default=2, metadata={
        "help": "validations in a row with val/kl_exact above --kl-bound that stop the run (collapse guard)"})
    best_metric: str = field(default="val/score", metadata={
        "help": "what picks the best checkpoint among those within the bounds: val/score (PPO-max: the reward "
                "model's mean score on the validation prompts) or val/refusal_margin (share of harmful validation "
                "prompts refused minus share of the other validation prompts refused; ties broken by val/score)",
        "choices": ["val/score", "val/refusal_margin"]})
    max_safe_refusal_rise: float = field(default=0.10, metadata={
        "help": "over-refusal bound for the best checkpoint: the share of held-out non-harmful validation prompts "
                "the policy refuses (rlhf_demo.refusal), and of the sensitive ones alone, may exceed the starting "
                "policy's by at most this (1 = off)"})
    guard_patience: int = field(default=3, metadata={"help": "iterations a collapse signal must persist to stop"})
    min_perplexity: float = field(default=1.01, metadata={"help": "collapse if per-token perplexity falls below"})
    max_repeated_ngrams: float = field(default=0.5, metadata={"help": "collapse if the repeated 4-gram share exceeds"})
    max_length_pinned: float = field(default=0.95, metadata={
        "help": "collapse if this share of answers hits --response-length without EOS, when the starting policy "
                "ended at least 20%% of its validation answers with EOS (else the signal is off: the limit is short)"})
    # ---------------------------------------------------------------- bookkeeping
    eval_every: int = field(default=5, metadata={"help": "validation score every N iterations (and at the end)"})
    checkpoint_every: int = field(default=5, metadata={"help": "checkpoint every N iterations"})
    keep_checkpoints: int = field(default=2, metadata={"help": "checkpoints kept on disk"})
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in --run-dir"})
    run_dir: str = field(default="", metadata={"help": "where checkpoints/metrics/plots go (default: <data dir>/runs/ppo-<time>)"})
    seed: int = field(default=0, metadata={"help": "seed for prompts, sampling and initialisation"})
    report_to: list[str] = field(default_factory=lambda: ["jsonl"], metadata={
        "help": "metric sinks: jsonl (always written), tensorboard"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch's default)"})

    def validation_dtype(self, settings):
        """The torch dtype validation widens the model to (rlhf_demo.precision.computing_in), or None: as trained."""
        import torch

        widen = self.val_dtype == "float32" or (self.val_dtype == "auto" and settings.resolved_device() == "cpu")
        return torch.float32 if widen and not settings.load_in_4bit else None

    def validation_dtype_name(self, settings) -> str:
        """The dtype validation decodes in, as text ("float32", "bfloat16"): what cards and checkpoints record."""
        return str(self.validation_dtype(settings) or settings.resolved_dtype()).replace("torch.", "")

    def check_resumed_val_dtype(self, saved: str | None, settings) -> None:
        """A resumed run compares its new validations with the saved ones (the baseline, the best): one dtype for all."""
        now = self.validation_dtype_name(settings)
        saved = saved or str(settings.resolved_dtype()).replace("torch.", "")  # older checkpoints: as trained
        if saved != now:
            raise ValueError(f"--resume: this run's earlier validations were decoded in {saved}, these would be decoded "
                             f"in {now}; pass --val-dtype {'same' if now == 'float32' else 'float32'} to resume it alike")

    def check_combinations(self) -> None:
        """Flags that only work together: a ValueError naming them (train() calls this before loading anything)."""
        if self.advantage not in ("gae", "rloo"):
            raise ValueError(f"--advantage {self.advantage!r}: 'gae' or 'rloo'")
        if self.group_std_scale and self.samples_per_prompt < 2:
            raise ValueError("--group-std-scale needs grouped rollouts: --samples-per-prompt K > 1")
        if self.kl_reference not in ("sft", "init"):
            raise ValueError(f"--kl-reference {self.kl_reference!r}: 'sft' or 'init'")
        if self.kl_reference == "init" and self.init_policy == "sft":
            raise ValueError("--kl-reference init needs --init-policy NAME (a published policy); from SFT the "
                             "reference is SFT already: use --kl-reference sft")
        if self.label_safety < 0:
            raise ValueError(f"--label-safety {self.label_safety}: a scale > 0, or 0 for off")
        if self.advantage == "rloo" and (self.samples_per_prompt < 2 or self.prompt_baseline == "none"):
            raise ValueError("--advantage rloo needs a prompt baseline: --samples-per-prompt K > 1 and "
                             "--prompt-baseline loo (or mean); without one the advantage is the raw score")

    def __post_init__(self) -> None:
        # one type everywhere (a list, as RewardConfig's); a comma string (older configs and cards) still reads
        mods = [self.lora_target_modules] if isinstance(self.lora_target_modules, str) else self.lora_target_modules
        self.lora_target_modules = [m.strip() for item in mods for m in str(item).split(",") if m.strip()]
        if isinstance(self.report_to, str):  # the older single-string form
            self.report_to = [self.report_to]
