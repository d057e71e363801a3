"""Every evaluate module loads by absolute path and computes with the network unavailable."""

from __future__ import annotations

import socket

import pytest

from eval import METRICS, load_metric, metric_path


@pytest.fixture()
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_module_files_have_one_import_per_line():
    for name in METRICS:
        src = (metric_path(name) / f"{name}.py").read_text()
        for line in src.splitlines():
            if line.startswith("import "):
                assert "," not in line, f"{name}: {line!r} (evaluate's scanner wants one import per line)"


def test_refusal_module(no_network):
    m = load_metric("refusal")
    out = m.compute(predictions=["I can't help with that.", "Sure! 1. Preheat the oven.\n2. Mix."],
                    labels=[True, False])
    assert out["refusal"]["rate"] == 0.5 and out["refusal"]["method"] == "wilson"
    assert out["quality_ours"]["precision"] == 1.0
    assert out["flags"] == [True, False]
    sm = m.compute(predictions=["No, it is fine to do that."], detector="string_match")
    assert sm["refusal"]["rate"] == 1.0 and sm["detector"] == "xstest-string-match"


def test_harmlessness_module(no_network):
    m = load_metric("harmlessness")
    policy = ["I won't help with that.", "I can't assist with that.", "Step 1: buy the parts.", "I must decline."]
    baseline = ["Step 1: do it.", "Here is how: 1. a\n2. b", "Sure, first get the parts.", "Sure thing, do it."]
    out = m.compute(predictions=policy, baseline_predictions=baseline, scores=[1.0, 0.5, -1.0, 0.8],
                    baseline_scores=[-1.0, -0.5, -1.0, -0.8], n_resamples=200)
    assert out["harmful_compliance"]["k"] == 1 and out["harmful_compliance"]["n"] == 4
    assert out["baseline_harmful_compliance"]["k"] == 4
    assert out["mcnemar"]["baseline_only"] == 3 and out["mcnemar"]["policy_only"] == 0
    assert out["mcnemar"]["p_value"] == pytest.approx(0.25)
    assert out["reward"]["mean"] == pytest.approx(0.325)
    assert out["reward_difference"]["mean"] > 0


def test_over_refusal_module(no_network):
    m = load_metric("over_refusal")
    out = m.compute(predictions=["Run `kill -9 1234`.", "I can't help with killing anything."],
                    baseline_predictions=["Run `kill 1234`.", "Use `pkill python`."])
    assert out["over_refusal"]["k"] == 1
    assert out["mcnemar"]["policy_only"] == 1 and out["refusal_difference"] == 0.5


def test_helpfulness_module(no_network):
    m = load_metric("helpfulness")
    out = m.compute(predictions=[1, 1, -1, 0, 1], references=[1, -1, -1, 1, 1],
                    policy_lengths=[10, 20, 30, 40, 50], baseline_lengths=[12, 15, 33, 30, 44], n_resamples=200)
    assert (out["win"]["k"], out["tie"]["k"], out["lose"]["k"]) == (2, 2, 1)
    assert out["win_rate"]["rate"] == pytest.approx(0.6)
    assert out["order_agreement"] == pytest.approx(0.6)
    assert 0 <= out["length_controlled"]["rate"] <= 1
    with pytest.raises(ValueError):
        m.compute(predictions=[2], references=[1])


def test_kl_module(no_network):
    m = load_metric("kl")
    out = m.compute(predictions=[[-1.0, -2.0], [-0.5]], references=[[-1.0, -2.0], [-0.5]])
    assert out["kl_k1_per_token"]["mean"] == 0.0 and out["kl_k3_per_token"]["mean"] == 0.0
    out = m.compute(predictions=[[-0.1, -0.2]], references=[[-0.3, -0.9]], exact_kl=[[0.05, 0.3]])
    assert out["kl_per_token"]["estimator"] == "exact"
    assert out["kl_per_token"]["mean"] == pytest.approx(0.175)
    assert out["kl_k1_per_token"]["mean"] == pytest.approx((0.2 + 0.7) / 2)
    assert out["mean_length_tokens"] == 2.0
