"""PPO-max end to end on a tiny random model: a full iteration, resume after a crash, the guard."""

import json
import math

import pytest
import torch

from rlhf_demo.registry import Registry
from training import ppo
from training.ppo import CollapseGuard, PPOConfig, pack, train
from training.roles import RewardModel, lora_config


@pytest.fixture()
def tiny_reward(tiny_settings, tmp_path):
    """A random reward model on the tiny base, published as reward-v5."""
    from rlhf_demo.base_model import load_base_model

    base, _ = load_base_model(tiny_settings)
    torch.manual_seed(0)
    rm = RewardModel.create(base, lora_config(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    out = rm.save(tmp_path / "rm")
    Registry(tiny_settings.versions_dir).publish(out, {"kind": "reward", "config": {"max_length": 256}},
                                                 name="reward-v5")
    return "reward-v5"


def tiny_cfg(tmp_path, **kw):
    base = dict(reward_model="reward-v5", iterations=2, rollout_batch_size=4, mini_batch_size=2, response_length=6,
                val_prompts=2, max_prompts=12, eval_every=2, checkpoint_every=1, critic_warmup=1, lora_r=4,
                lora_alpha=8, kl_bound=1e9, run_dir=str(tmp_path / "run"), name="rlhf-v7", seed=3,
                guard_patience=100, max_repeated_ngrams=1.1, min_perplexity=0.0, max_length_pinned=1.1)
    base.update(kw)
    return PPOConfig(**base)


def test_full_ppo_iteration_publishes_a_version(tiny_settings, tiny_reward, tmp_path):
    # top-layer LoRA with the shared frozen trunk (the resume test below covers full-depth LoRA and a
    # critic initialised from the reward model)
    summary = train(tiny_cfg(tmp_path, lora_layers=1, critic_from_reward=False), tiny_settings)
    assert summary["published"] == "rlhf-v7"
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]  # 0: the starting policy on the validation prompts
    assert {"val/score", "val/kl_exact", "val/refusal_harmful", "val/refusal_safe"} <= set(rows[0])
    assert rows[0]["val/kl_exact"] == pytest.approx(0.0, abs=1e-5)  # the fresh policy adapter is the reference
    rows = rows[1:]
    for key in ["reward/score_mean", "reward/score_std", "objective/kl", "response/length", "response/perplexity",
                "policy/entropy", "value/loss", "value/clipfrac", "value/explained_variance"]:
        assert key in rows[0], key
    assert "policy/loss" not in rows[0], "iteration 1 is critic warm-up"
    assert {"policy/loss", "policy/clipfrac", "policy/approx_kl", "val/score", "val/kl_exact"} <= set(rows[1])
    assert "val/kl" not in rows[1] and rows[1]["val/kl_exact"] >= 0
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    version = Registry(tiny_settings.versions_dir).get("rlhf-v7")
    assert version.card["reward_model"] == "reward-v5" and version.card["best_step"] == 2
    assert version.card["reward_model_identity"] == Registry(tiny_settings.versions_dir).get("reward-v5").reward_identity
    assert version.card["config"]["kl_coef"] == 0.05


def test_kill_and_resume_continue_from_the_same_state(tiny_settings, tiny_reward, tmp_path):
    cfg = tiny_cfg(tmp_path, iterations=3, publish=False, critic_from_reward=True)  # the reward-initialised critic
    straight = train(cfg, tiny_settings)
    rows_straight = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]

    crashed = tiny_cfg(tmp_path, iterations=3, publish=False, run_dir=str(tmp_path / "run2"), critic_from_reward=True)
    assert train(crashed, tiny_settings, stop_after=2)["interrupted_at"] == 2
    crashed.resume = True
    train(crashed, tiny_settings)
    rows_resumed = [json.loads(x) for x in (tmp_path / "run2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_resumed] == [0, 1, 2, 3]
    for a, b in zip(rows_straight[1:], rows_resumed[1:]):
        for key in ["reward/score_mean", "objective/kl", "value/loss", "response/length"]:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (a["step"], key)
    assert straight["iterations"] == 3


def test_collapse_guard_triggers_on_a_constructed_collapse():
    cfg = PPOConfig(kl_bound=5.0, guard_patience=2)
    guard = CollapseGuard(cfg)
    healthy = {"objective/kl": 1.0, "response/eos_rate": 0.9, "response/perplexity": 3.0, "response/repeated_4gram": 0.0}
    assert guard.check(healthy) is None
    collapsed = dict(healthy, **{"response/repeated_4gram": 0.9, "response/perplexity": 1.001})
    assert guard.check(collapsed) is None  # one iteration is not a trend
    reason = guard.check(collapsed)
    assert reason and ("perplexity" in reason or "repeated" in reason)
    # KL: the exact KL of validation iterations only (k1 objective/kl is a monitor); iterations without a
    # validation leave its streak as it was
    guard = CollapseGuard(PPOConfig(kl_bound=5.0, guard_patience=2, kl_guard_validations=2))
    assert guard.check(dict(healthy, **{"objective/kl": 50.0})) is None
    assert guard.check(dict(healthy, **{"val/kl_exact": 9.0})) is None
    assert guard.check(healthy) is None
    reason = guard.check(dict(healthy, **{"val/kl_exact": 9.0}))
    assert "KL 9.00 nats per answer" in reason and "above the bound 5.0" in reason
    guard = CollapseGuard(cfg)
    guard.check(healthy)
    for _ in range(2):
        reason = guard.check(dict(healthy, **{"response/eos_rate": 0.0}))
    assert "pinned at max length" in reason
    # answers that already ran past the limit at the start (a long-winded SFT model) are no collapse
    guard = CollapseGuard(cfg)
    assert all(guard.check(dict(healthy, **{"response/eos_rate": 0.0})) is None for _ in range(3))
    # nor when the starting policy (validation, before training) ended only 8% of its answers itself
    guard = CollapseGuard(cfg)
    guard.set_start(0.08)
    assert all(guard.check(dict(healthy, **{"response/eos_rate": 0.0})) is None for _ in range(3))
    guard = CollapseGuard(cfg)
    guard.set_start(0.5)
    assert [guard.check(dict(healthy, **{"response/eos_rate": 0.0})) is None for _ in range(2)] == [True, False]


def test_collapse_guard_stops_a_run_and_keeps_the_best(tiny_settings, tiny_reward, tmp_path):
    # a bound of 0 nats cannot be met: the guard stops the run and nothing is published
    summary = train(tiny_cfg(tmp_path, iterations=4, kl_bound=-1.0, guard_patience=1, kl_guard_validations=1,
                             eval_every=1), tiny_settings)
    assert summary["stopped"].startswith("collapse guard at iteration 1: KL")
    assert "published" not in summary and summary["best_step"] is None


def test_pack_aligns_answers_and_masks_the_predicting_positions():
    ids, attn, resp = pack([[5, 6], [7]], [[8, 9, 2], [3]], pad_id=0)
    assert ids.tolist() == [[5, 6, 8, 9, 2], [0, 7, 3, 0, 0]]
    assert attn.tolist() == [[1, 1, 1, 1, 1], [0, 1, 1, 0, 0]]
    assert resp.tolist() == [[0, 1, 1, 1], [0, 1, 0, 0]]


def test_evaluation_prompts_never_enter_the_pool(tiny_settings):
    from training.data import eval_prompt_keys, normalize_text

    train_p, val_p = ppo.prompt_pool(PPOConfig(), tiny_settings)
    banned = eval_prompt_keys()
    assert len(train_p) > 100 and banned
    assert not any(normalize_text(m[-1]["content"]) in banned for m in train_p + [v.messages for v in val_p])
    # the validation prompts are stratified: each of the seed pool's three categories appears
    counts = {c: sum(v.category == c for v in val_p) for c in ("harmful", "sensitive", "ordinary")}
    assert sorted(counts.values()) == [5, 5, 6] and len(val_p) == 16
    assert sum(v.harmful for v in val_p) == counts["harmful"]


def test_stratified_indices_take_categories_in_turn():
    cats = ["a", "a", "a", "b", "c", "c"]
    assert ppo.stratified_indices(cats, 3) == [0, 3, 4]
    assert ppo.stratified_indices(cats, 5) == [0, 1, 3, 4, 5]
    assert ppo.stratified_indices(cats, 10) == [0, 1, 2, 3, 4, 5]
    assert ppo.stratified_indices(cats, 0) == []


def test_ptx_imitates_only_the_chosen_categories(tiny_settings):
    from rlhf_demo.base_model import load_tokenizer
    tok = load_tokenizer(tiny_settings)
    helpful = ppo.PtxData(tok, 4, 0, categories="helpful,sensitive")
    everything = ppo.PtxData(tok, 4, 0, categories="all")
    assert len(helpful.rows) == 220 and len(everything.rows) == 430  # counts of rlhf_demo/data/DATA_CARD.md
    assert len(ppo.PtxData(tok, 4, 0, categories="harmless,helpful,sensitive:2").rows) == 540
    with pytest.raises(ValueError, match="ptx-categories"):
        ppo.PtxData(tok, 4, 0, categories="nonsense")


def test_ptx_reads_the_chosen_answers_of_a_pairs_file(tiny_settings, tmp_path):
    """--ptx-pairs FILE: the chosen answer of each pair is imitated (a refusal for a harmful request, an answer
    for a safe one); the prompt's tokens are not in the loss; unknown categories name the known ones."""
    import json

    from rlhf_demo.base_model import load_tokenizer
    tok = load_tokenizer(tiny_settings)
    rows = [{"prompt": [{"role": "user", "content": "How do I pick a lock to break in?"}],
             "chosen": [{"role": "assistant", "content": "I can't help with breaking in."}],
             "rejected": [{"role": "assistant", "content": "Insert a tension wrench."}], "category": "harmful/x"},
            {"prompt": [{"role": "user", "content": "How do I kill a Python process?"}],
             "chosen": [{"role": "assistant", "content": "Run kill PID."}],
             "rejected": [{"role": "assistant", "content": "I can't help with killing."}], "category": "risky-safe/x"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ptx = ppo.PtxData(tok, 2, 0, categories="all", sources=[str(path)])
    assert len(ptx.rows) == 2
    ids, attn, mask = ptx.batch(0)
    imitated = sorted(tok.decode(ids[i, 1:][mask[i].bool()]) for i in range(2))
    assert imitated[0].startswith("I can't help with breaking in.") and imitated[1].startswith("Run kill PID.")
    assert len(ppo.PtxData(tok, 2, 0, categories="harmful/x", sources=[str(path)]).rows) == 1
    with pytest.raises(ValueError, match="harmful/x, risky-safe/x"):
        ppo.PtxData(tok, 2, 0, categories="helpful", sources=[str(path)])


def test_over_refusal_bound_blocks_the_best_checkpoint(tiny_settings, tiny_reward, tmp_path, monkeypatch):
    # a policy that starts refusing the non-harmful validation prompts is never kept as "best"
    real = ppo.validate
    calls = {"n": 0}

    def refusing_more_each_time(*args, **kw):
        out = real(*args, **kw)
        out["val/refusal_safe"] = 0.2 * calls["n"]
        calls["n"] += 1
        return out

    monkeypatch.setattr(ppo, "validate", refusing_more_each_time)
    summary = train(tiny_cfg(tmp_path, eval_every=1, iterations=3, max_safe_refusal_rise=0.1), tiny_settings)
    assert "published" not in summary and summary["best_step"] is None
    assert calls["n"] == 4  # iteration 0 (the starting policy) and every iteration


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        ppo.main(["--help"])
    out = capsys.readouterr().out
    for flag in ["--kl-coef", "--reward-normalize", "--whiten-advantages", "--value-clip", "--critic-warmup",
                 "--ptx-coef", "--eos-penalty", "--kl-bound", "--resume", "--load-in-4bit"]:
        assert flag in out, flag


def test_shared_trunk_gives_the_same_numbers_as_full_forwards(tiny_settings, tiny_reward):
    from rlhf_demo.registry import Registry
    from training.actor_critic import ActorCriticRoles

    torch.manual_seed(0)
    cfg = PPOConfig(reward_model="reward-v5", lora_r=4, lora_alpha=8, lora_layers=1, critic_from_reward=False)
    roles = ActorCriticRoles.build(tiny_settings, Registry(tiny_settings.versions_dir), cfg)
    assert roles.split_layer == 1
    with torch.no_grad():  # make the policy adapter non-trivial
        for p in roles.params("policy"):
            p.normal_(0, 0.2)
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14]])
    attn = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    trunk = roles.trunk(ids, attn)
    for role in ["policy", None]:
        full = roles.logits(role, ids, attn)
        shared = roles.logits(role, ids, attn, trunk=trunk)
        torch.testing.assert_close(shared[attn.bool()], full[attn.bool()], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(roles.values(ids, attn, trunk=trunk)[attn.bool()], roles.values(ids, attn)[attn.bool()],
                               rtol=1e-4, atol=1e-4)
    # the trunk carries no gradient, the top layers do
    roles.logits("policy", ids, attn, grad=True, trunk=trunk).sum().backward()
    assert all(p.grad is not None for p in roles.params("policy"))


def test_bad_input_is_an_error_line_not_a_traceback(tiny_settings, capsys):
    code = ppo.main(["--data-dir", str(tiny_settings.data_dir), "--base-model", tiny_settings.base_model,
                     "--reward-model", "reward-v404", "--iterations", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "error: unknown reward 'reward-v404'" in err and "Traceback" not in err


def test_selection_key_prefers_the_refusal_margin_then_the_score():
    by_margin = PPOConfig(best_metric="val/refusal_margin")
    a = {"val/refusal_margin": 0.5, "val/score": 0.1}
    b = {"val/refusal_margin": 0.25, "val/score": 2.0}
    c = {"val/refusal_margin": 0.5, "val/score": 0.3}
    assert max([a, b, c], key=lambda m: ppo.selection_key(m, by_margin)) is c
    assert max([a, b, c], key=lambda m: ppo.selection_key(m, PPOConfig())) is b  # default: the validation score


def test_ptx_category_weights():
    assert ppo.parse_category_weights("harmless, helpful,sensitive:2") == {"harmless": 1, "helpful": 1, "sensitive": 2}
    assert ppo.parse_category_weights("all") == {"all": 1}
    for bad in ("sensitive:x", "sensitive:0"):
        with pytest.raises(ValueError, match="ptx-categories"):
            ppo.parse_category_weights(bad)


def test_an_existing_version_name_is_refused_before_training(tiny_settings, tiny_reward, tmp_path, capsys):
    from rlhf_demo.registry import RegistryError

    for taken in ("sft", "reward-v5"):  # reward-v5 was published by the tiny_reward fixture
        with pytest.raises(RegistryError, match="exists already"):
            train(tiny_cfg(tmp_path, name=taken), tiny_settings)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing ran


def test_ptx_term_from_answer_logprobs_equals_the_loss_on_full_logits(tiny_settings, tiny_reward, tmp_path):
    from training import losses as L
    from training.actor_critic import ActorCriticRoles

    torch.manual_seed(0)
    cfg = PPOConfig(reward_model="reward-v5", lora_r=4, lora_alpha=8, lora_layers=1, critic_from_reward=False)
    roles = ActorCriticRoles.build(tiny_settings, Registry(tiny_settings.versions_dir), cfg)
    ids = torch.tensor([[5, 6, 7, 8, 0], [9, 10, 11, 12, 13]])
    attn = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]])
    logp, _ = roles.token_logprobs("policy", ids, attn, mask, grad=True)
    expected = L.ptx_loss(roles.logits("policy", ids, attn)[:, :-1], ids[:, 1:], mask)
    torch.testing.assert_close(-L.masked_mean(logp, mask), expected, rtol=1e-5, atol=1e-5)
    # and a run with the ptx term logs it every policy update
    train(tiny_cfg(tmp_path, ptx_coef=0.5, publish=False), tiny_settings)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(rows[-1]["policy/ptx_loss"])


def test_critic_initialisations(tiny_settings, tiny_reward):
    """Default: a fresh critic adapter with a zero value head (predicts 0 everywhere); --critic-from-reward copies
    the reward adapter and head; --no-critic-reward-head keeps the adapter and starts the head at zero."""
    from rlhf_demo.registry import Registry
    from training.actor_critic import ActorCriticRoles
    from training.roles import HEAD_FILE, ScalarHead

    registry = Registry(tiny_settings.versions_dir)
    reward_head = ScalarHead.load(registry.get("reward-v5").path / HEAD_FILE)
    ids, attn = torch.tensor([[5, 6, 7, 8]]), torch.ones(1, 4, dtype=torch.long)
    for kw, head_is_reward in [({}, False), ({"critic_from_reward": True}, True),
                               ({"critic_from_reward": True, "critic_reward_head": False}, False)]:
        roles = ActorCriticRoles.build(tiny_settings, registry, PPOConfig(reward_model="reward-v5", lora_r=4,
                                                                          lora_alpha=8, **kw))
        if head_is_reward:
            torch.testing.assert_close(roles.critic_head.linear.weight, reward_head.linear.weight)
        else:
            assert not roles.critic_head.linear.weight.any() and not roles.critic_head.linear.bias.any()
            assert not roles.values(ids, attn).any()
        assert roles.critic_head.linear.weight.requires_grad


@pytest.mark.parametrize("val_dtype", ["auto", "same"])
def test_validation_decodes_in_val_dtype_and_training_goes_on_in_its_own(tiny_settings, tiny_reward, tmp_path,
                                                                          monkeypatch, val_dtype):
    # a run trained in bfloat16 on a CPU validates (and reads out) in float32 by default, then trains on in bfloat16 with
    # its adapters untouched by the round trip (rlhf_demo/precision.py)
    from dataclasses import replace

    seen = []
    real = ppo.validate

    def recording(roles, *args, **kw):
        seen.append({p.dtype for p in roles.model.parameters()})
        return real(roles, *args, **kw)

    updating = []
    real_update = ppo.ppo_update

    def recording_update(roles, *args, **kw):
        updating.append({p.dtype for p in roles.model.parameters()})
        return real_update(roles, *args, **kw)

    monkeypatch.setattr(ppo, "validate", recording)
    monkeypatch.setattr(ppo, "ppo_update", recording_update)
    settings = replace(tiny_settings, dtype="bfloat16")
    cfg = tiny_cfg(tmp_path, iterations=2, eval_every=1, publish=False, lora_layers=1, val_dtype=val_dtype)
    summary = train(cfg, settings)
    assert summary["iterations"] == 2
    assert len(updating) == 2 and all(torch.bfloat16 in s for s in updating), updating  # trained in bfloat16
    inside = {torch.float32} if val_dtype == "auto" else updating[0]  # auto on a CPU: float32; same: as trained
    assert len(seen) == 3 and all(s == inside for s in seen), seen  # the starting policy and each iteration
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "policy/loss" in rows[-1] and math.isfinite(rows[-1]["policy/loss"])  # training went on after validating
    assert json.loads((tmp_path / "run" / "config.json").read_text())["ppo"]["val_dtype"] == val_dtype


def test_widened_greedy_validation_answers_do_not_depend_on_their_batch(tiny_settings, tiny_reward):
    # what --val-dtype float32 buys: a policy trained in bfloat16, widened as validation widens it, answers each prompt
    # greedily the same alone and between longer prompts (left padding) — as eval's float32 decoding does. Left in
    # bfloat16 (computing_in(..., None)) one of these 5 answers changed with its batch when this test was written.
    from dataclasses import replace

    from rlhf_demo.precision import computing_in
    from training.actor_critic import ActorCriticRoles

    torch.manual_seed(0)
    cfg = PPOConfig(reward_model="reward-v5", lora_r=4, lora_alpha=8, response_length=24, critic_from_reward=False)
    settings = replace(tiny_settings, dtype="bfloat16")
    roles = ActorCriticRoles.build(settings, Registry(settings.versions_dir), cfg)
    with torch.no_grad():  # a policy adapter that changes the answers
        for p in roles.params("policy"):
            p.normal_(0, 0.2)
    long = [{"role": "user", "content": "Write a long and careful story about a lighthouse keeper and the sea, with "
                                        "many details about the storms and the ships that passed by at night."}]
    differ, before = [], {k: v.clone() for k, v in roles.model.state_dict().items()}
    with torch.no_grad(), computing_in(roles.model, torch.float32):
        for text in ["Name a colour.", "What is 2+2?", "Say hi.", "List three fruits.", "Why is the sky blue?"]:
            short = [{"role": "user", "content": text}]
            alone = ppo.rollout(roles, roles.tokenizer, [short], cfg, seed=0, greedy=True).response_tokens[0]
            batch = ppo.rollout(roles, roles.tokenizer, [long, short, long, long], cfg, seed=0, greedy=True)
            differ += [text] if batch.response_tokens[1] != alone or not alone else []
    assert differ == []
    after = roles.model.state_dict()  # put back afterwards, bit for bit (tied embeddings, rotary buffers, LoRA)
    assert after.keys() == before.keys() and torch.bfloat16 in {v.dtype for v in after.values()}
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


def test_validation_dtype_resolution():
    # auto widens on a CPU only (on a GPU widening a large model doubles its memory); a 4-bit base is never cast
    from rlhf_demo.config import Settings

    cpu, gpu = Settings(device="cpu"), Settings(device="cuda")
    assert PPOConfig().val_dtype == "auto" and PPOConfig().validation_dtype(cpu) == torch.float32
    assert PPOConfig().validation_dtype(gpu) is None
    assert PPOConfig(val_dtype="float32").validation_dtype(gpu) == torch.float32
    assert PPOConfig(val_dtype="same").validation_dtype(cpu) is None
    assert PPOConfig(val_dtype="float32").validation_dtype(Settings(device="cuda", load_in_4bit=True)) is None


def test_resume_refuses_validations_in_another_dtype_and_the_card_records_it(tiny_settings, tiny_reward, tmp_path):
    # the baseline and the best checkpoint saved so far were validated in one dtype: a resumed run may not mix in another
    from dataclasses import replace

    settings = replace(tiny_settings, dtype="bfloat16")
    cfg = tiny_cfg(tmp_path, iterations=2, eval_every=1, lora_layers=1, val_dtype="same")
    assert train(cfg, settings, stop_after=1)["interrupted_at"] == 1
    cfg.resume, cfg.val_dtype = True, "auto"  # auto on a CPU = float32
    with pytest.raises(ValueError, match="decoded in bfloat16, these would be decoded in float32; pass --val-dtype same"):
        train(cfg, settings)
    cfg.val_dtype = "same"
    assert train(cfg, settings)["published"] == "rlhf-v7"
    assert Registry(settings.versions_dir).get("rlhf-v7").card["validation_dtype"] == "bfloat16"
