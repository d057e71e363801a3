"""DPO / IPO (``python -m training.dpo``): the loss math by hand, the packed answer positions against separate
forward passes, learning on a trivially learnable pair set, file:line errors, kill + --resume + publish."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rlhf_demo.atomic import sha256_file
from rlhf_demo.registry import Registry
from training import checkpoint as ckpt
from training.dpo import DPOConfig, answer_logps, answer_targets, build_parser, main, train
from training.dpo_losses import chosen_nll, dpo_logits, dpo_loss, implicit_rewards, reward_accuracy, token_kl

FAST = dict(lora_r=4, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"], max_length=96, progress=False,
            publish=False, logging_steps=1, eval_batch_size=8)


class Stop(Exception):
    pass


def cfg(tmp_path: Path, **kw) -> DPOConfig:
    values = dict(FAST, run_dir=str(tmp_path / "run"))
    values.update(kw)
    return DPOConfig(**values)


def t(*x):
    return torch.tensor(x, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# the math, by hand
# ---------------------------------------------------------------------------------------------
def test_dpo_sigmoid_loss_by_hand():
    # pair 1: h = (-1 - -2) - (-3 - -2) = 1 - (-1) = 2 ; pair 2: h = (0 - 0) - (-1 - -1) = 0
    pc, pr, qc, qr = t(-1.0, 0.0), t(-3.0, -1.0), t(-2.0, 0.0), t(-2.0, -1.0)
    assert dpo_logits(pc, pr, qc, qr).tolist() == [2.0, 0.0]
    # beta 0.5: -log sigmoid(1) = log(1 + e^-1) = 0.313262 ; -log sigmoid(0) = log 2 = 0.693147
    expected = (math.log(1 + math.exp(-1)) + math.log(2)) / 2
    assert dpo_loss(pc, pr, qc, qr, beta=0.5).item() == pytest.approx(expected, abs=1e-6)
    # label smoothing 0.1: pair 1: 0.9 * 0.313262 + 0.1 * log(1 + e^1) = 0.281936 + 0.131326 ; pair 2: log 2
    smoothed = (0.9 * math.log(1 + math.exp(-1)) + 0.1 * math.log(1 + math.e) + math.log(2)) / 2
    assert dpo_loss(pc, pr, qc, qr, beta=0.5, label_smoothing=0.1).item() == pytest.approx(smoothed, abs=1e-6)
    # inputs untouched, float32 out of bfloat16 in
    assert pc.tolist() == [-1.0, 0.0]
    assert dpo_loss(pc.bfloat16(), pr, qc, qr, beta=0.5).dtype == torch.float32


def test_ipo_loss_by_hand():
    pc, pr, qc, qr = t(-1.0, 0.0), t(-3.0, -1.0), t(-2.0, 0.0), t(-2.0, -1.0)  # h = 2, 0
    # beta 0.25: target 1/(2*0.25) = 2 -> (2-2)^2 = 0 and (0-2)^2 = 4 -> mean 2
    assert dpo_loss(pc, pr, qc, qr, beta=0.25, loss_type="ipo").item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="sigmoid"):
        dpo_loss(pc, pr, qc, qr, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(pc, pr, qc, qr, loss_type="hinge")
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(pc, pr, qc, qr, beta=0.0)


def test_implicit_rewards_accuracy_and_token_kl_by_hand():
    rc, rr = implicit_rewards(t(-1.0, 0.0, -1.0), t(-3.0, -1.0, 0.0), t(-2.0, 0.0, -1.0), t(-2.0, -1.0, -1.0), 0.5)
    assert rc.tolist() == [0.5, 0.0, 0.0] and rr.tolist() == [-0.5, 0.0, 0.5]
    assert reward_accuracy(rc, rr) == pytest.approx((1 + 0.5 + 0) / 3)  # a tie counts one half
    assert math.isnan(reward_accuracy(t(), t()))
    # p = (0.5, 0.5), q = (0.25, 0.75): KL = 0.5 log(2) + 0.5 log(2/3)
    p = torch.log(t(0.5, 0.5))
    q = torch.log(t(0.25, 0.75))
    assert token_kl(p, q).item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), abs=1e-6)
    assert token_kl(p, p).item() == pytest.approx(0.0, abs=1e-7)


def test_rpo_chosen_nll_by_hand():
    # two chosen answers, sums -3 and -1 over 2 tokens each: 4 / 4 = 1 per token
    assert chosen_nll(t(-3.0, -1.0), t(2.0, 2.0)).item() == pytest.approx(1.0)
    # per token over the whole batch, as TRL: sums -6 over 3 tokens and -1 over 1 -> 7 / 4 (mean of means: 1.5)
    assert chosen_nll(t(-6.0, -1.0), t(3.0, 1.0)).item() == pytest.approx(7.0 / 4.0)
    assert chosen_nll(t(), t()).item() == 0.0
    with pytest.raises(ValueError, match="shapes"):
        chosen_nll(t(-1.0), t(1.0, 2.0))


# ---------------------------------------------------------------------------------------------
# packed rows give the log-probs of separate sequences
# ---------------------------------------------------------------------------------------------
def test_packed_answer_logps_match_separate_forward_passes(tiny_settings):
    from rlhf_demo.base_model import load_base_model
    from training.batching import EncodedPair

    model, _ = load_base_model(tiny_settings)
    model.eval()
    items = [EncodedPair([5, 6, 7], [8, 9], [10, 11, 12], index=0), EncodedPair([13], [14, 15, 16], [17], index=1)]
    index, labels, segment = answer_targets(items)
    assert index[0].tolist() == [2, 3, 2, 5, 6] and labels[0].tolist() == [8, 9, 10, 11, 12]
    assert segment[1].tolist() == [1, 1, 1, 2, 0]
    with torch.no_grad():
        lp = answer_logps(model, items, pad_id=0, device="cpu")
        for b, it in enumerate(items):
            for col, answer in ((0, it.chosen), (1, it.rejected)):
                ids = torch.tensor([it.prefix + answer])
                logits = model(input_ids=ids).logits.log_softmax(-1)[0]
                P = len(it.prefix)
                want = sum(logits[P - 1 + j, tok].item() for j, tok in enumerate(answer))
                assert lp[b, col].item() == pytest.approx(want, abs=1e-4)
                assert lp[b, col + 2].item() == len(answer)


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def learnable_pairs(path: Path, n: int = 16) -> Path:
    """The chosen answer always says 'yes', the rejected one 'no': trivially learnable, also on held-out prompts."""
    rows = [{"prompt": f"Question number {i}: is {i} a number?", "chosen": "yes yes yes", "rejected": "no no no"}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_few_steps_raise_held_out_accuracy_and_lower_the_loss(tiny_settings, tmp_path):
    data = learnable_pairs(tmp_path / "pairs.jsonl", 24)
    losses = []
    result = train(cfg(tmp_path, data=[str(data)], validation_fraction=0.3, batch_size=8, max_steps=8,
                       learning_rate=1e-2, beta=0.5, warmup_ratio=0.0, lr_scheduler="constant"),
                   tiny_settings, on_step=lambda step, info: losses.append(info["loss"]))
    assert result.step == 8 and len(losses) == 8
    start, end = result.metrics["validation_at_start"], result.metrics["validation"]
    assert start["eval/accuracy"] == pytest.approx(0.5)  # policy = reference at step 0: every margin is 0
    assert end["eval/accuracy"] > 0.9, end
    assert end["eval/loss"] < start["eval/loss"] - 0.05 and end["eval/margin"] > 0
    assert end["eval/kl_token"] > 0 and start["eval/kl_token"] == pytest.approx(0.0, abs=1e-6)
    assert sum(losses[-3:]) < sum(losses[:3])
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"train/loss", "train/accuracy", "train/margin", "perf/pairs_per_s"} <= set(rows[1])
    assert (tmp_path / "run" / "curves.png").is_file()


def test_frozen_layer_cache_trains_like_the_full_forward(tiny_settings, tmp_path):
    data = learnable_pairs(tmp_path / "pairs.jsonl", 12)
    common = dict(data=[str(data)], validation_fraction=0.25, batch_size=4, max_steps=3, learning_rate=5e-3,
                  lora_layers=1)
    cached = train(cfg(tmp_path / "a", cache_frozen_layers=True, **common), tiny_settings)
    full = train(cfg(tmp_path / "b", cache_frozen_layers=False, **common), tiny_settings)
    a = {n: p for n, p in cached.model.named_parameters() if p.requires_grad}
    b = {n: p for n, p in full.model.named_parameters() if p.requires_grad}
    assert a and all(".layers.1." in n for n in a)  # LoRA on the top layer only
    for n in a:
        assert torch.allclose(a[n], b[n], atol=1e-5), n
    assert cached.metrics["validation"]["eval/loss"] == pytest.approx(full.metrics["validation"]["eval/loss"], abs=1e-5)


def test_malformed_data_names_file_and_line(tiny_settings, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "hi", "chosen": "a", "rejected": "b"}) + "\n"
                   + json.dumps({"prompt": "hi", "chosen": "a"}) + "\n")
    code = main(["--data", str(bad), "--no-progress", "--run-dir", str(tmp_path / "r"),
                 "--base-model", str(tiny_settings.base_model), "--data-dir", str(tmp_path), "--device", "cpu"])
    assert code == 2
    assert f"{bad}:2" in capsys.readouterr().err


def test_kill_resume_and_publish_a_policy_version(tiny_settings, tmp_path):
    data = learnable_pairs(tmp_path / "pairs.jsonl", 20)
    common = dict(data=[str(data)], batch_size=2, grad_accumulation=2, max_steps=5, save_steps=2,
                  validation_fraction=0.2, learning_rate=5e-3, lora_dropout=0.1)
    full = train(cfg(tmp_path / "a", **common), tiny_settings)

    def kill_after_step_3(step, info):
        if step == 3:  # after the step-2 checkpoint and one more (lost) step
            raise Stop

    with pytest.raises(Stop):
        train(cfg(tmp_path / "b", **common), tiny_settings, on_step=kill_after_step_3)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "b" / "run")] == [2]
    steps = []
    resumed = train(cfg(tmp_path / "b", resume=True, publish=True, description="test", **common), tiny_settings,
                    on_step=lambda s, i: steps.append(s))
    assert steps == [3, 4, 5]
    a = {n: p for n, p in full.model.named_parameters() if p.requires_grad}
    b = {n: p for n, p in resumed.model.named_parameters() if p.requires_grad}
    assert a.keys() == b.keys() and a
    for n in a:
        assert torch.allclose(a[n], b[n], atol=1e-6), n
    assert resumed.metrics["validation"]["eval/accuracy"] == full.metrics["validation"]["eval/accuracy"]
    # published as a policy version, next to sft, with a card that records the data hash and the command
    assert resumed.version.name == "dpo-v0"
    reg = Registry(tiny_settings.versions_dir, package_dir=None)
    assert reg.names("policy") == ["sft", "dpo-v0"]
    card = reg.get("dpo-v0").card
    assert card["kind"] == "policy" and card["trainer"].startswith("training.dpo")
    assert card["data"][0]["sha256"] == {"pairs.jsonl": sha256_file(data)}
    assert card["command"].startswith("python -m training.dpo")
    assert reg.next_name("policy", prefix="dpo") == "dpo-v1" and reg.next_name("policy") == "rlhf-v0"
    # served like any policy version: the arena's server lists and loads it, and it is the newest policy
    from rlhf_demo.base_model import load_base_model
    from rlhf_demo.generation import GenerationParams, PolicyServer, Request

    assert reg.current("policy").name == "dpo-v0"
    model, tok = load_base_model(tiny_settings)
    server = PolicyServer(model, tok, reg)
    try:
        assert "dpo-v0" in server.policies()
        [stream] = server.submit([Request([{"role": "user", "content": "hi"}], "dpo-v0",
                                          GenerationParams(max_new_tokens=3, greedy=True))])
        stream.result(timeout=120)
        assert "dpo-v0" in server.loaded
    finally:
        server.close()


def test_every_flag_has_help():
    parser = build_parser()
    text = parser.format_help()
    for flag in ("--data", "--loss-type", "--beta", "--label-smoothing", "--lora-layers", "--resume", "--save-steps",
                 "--load-in-4bit", "--publish-dir", "--validation-fraction"):
        assert flag in text, flag
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, action.option_strings


def test_ipo_and_conservative_dpo_train(tiny_settings, tmp_path):
    data = learnable_pairs(tmp_path / "pairs.jsonl", 12)
    for name, kw in (("ipo", dict(loss_type="ipo", beta=0.5)), ("cdpo", dict(label_smoothing=0.2, beta=0.5))):
        losses = []
        result = train(cfg(tmp_path / name, data=[str(data)], validation_fraction=0.25, batch_size=8, max_steps=6,
                           learning_rate=1e-2, warmup_ratio=0.0, lr_scheduler="constant", **kw), tiny_settings,
                       on_step=lambda s, i: losses.append(i["loss"]))
        assert losses[-1] < losses[0], (name, losses)
        assert result.metrics["validation"]["eval/accuracy"] > 0.5, name


def test_rpo_raises_the_chosen_answers_likelihood_more_than_dpo(tiny_settings, tmp_path):
    data = learnable_pairs(tmp_path / "pairs.jsonl", 12)
    common = dict(data=[str(data)], validation_fraction=0.25, batch_size=8, max_steps=6, learning_rate=1e-2,
                  beta=0.5, warmup_ratio=0.0, lr_scheduler="constant", eval_at_start=False)
    dpo = train(cfg(tmp_path / "dpo", **common), tiny_settings)
    rpo = train(cfg(tmp_path / "rpo", rpo_alpha=1.0, **common), tiny_settings)
    # same seed, same batches: the NLL term lifts log p(chosen) - log p_ref(chosen) on held-out prompts
    assert rpo.metrics["validation"]["eval/chosen_reward"] > dpo.metrics["validation"]["eval/chosen_reward"] + 0.1
    rows = [json.loads(x) for x in (tmp_path / "rpo" / "run" / "metrics.jsonl").read_text().splitlines()]
    nll = [r["train/chosen_nll"] for r in rows if "train/chosen_nll" in r]
    assert len(nll) == 6 and nll[-1] < nll[0]
    assert not any("train/chosen_nll" in r for r in
                   (json.loads(x) for x in (tmp_path / "dpo" / "run" / "metrics.jsonl").read_text().splitlines()))
    with pytest.raises(ValueError, match="rpo-alpha"):
        train(cfg(tmp_path / "bad", rpo_alpha=-1.0, **common), tiny_settings)


@pytest.mark.slow
def test_qlora_path_trains_on_cpu(tiny_settings, tmp_path):
    import dataclasses

    settings = dataclasses.replace(tiny_settings, load_in_4bit=True)
    losses = []
    result = train(cfg(tmp_path, data=[str(learnable_pairs(tmp_path / "p.jsonl", 8))], batch_size=4, max_steps=3,
                   validation_fraction=0.0, learning_rate=5e-3), settings, on_step=lambda s, i: losses.append(i["loss"]))
    assert getattr(result.model.get_base_model(), "is_loaded_in_4bit", False)
    assert len(losses) == 3 and all(x == x for x in losses)
    assert (result.model_dir / "adapter_model.safetensors").is_file()


def test_flags_share_the_other_trainers_names_and_types():
    from rlhf_demo.flags import config_from_args

    for flag in ("--threads", "--num-threads"):  # the reward model's and PPO's spelling; the old one still parses
        config = config_from_args(DPOConfig, build_parser().parse_args([flag, "1"]))
        assert config.threads == 1
    config = config_from_args(DPOConfig, build_parser().parse_args(["--run-dir", "r", "--lora-layers", "8"]))
    assert (config.run_dir, config.lora_layers, config.name, config.publish_dir) == ("r", 8, "", "")
    assert DPOConfig().lora_layers == 0  # 0 = all layers, as RewardConfig and PPOConfig
