"""training/losses.py against hand-computed values.

Every expected number below is worked out by hand in the comment next to it (from the formula,
not by calling the code under test). Handy constants:
    ln 2 = 0.6931472,  ln 3 = 1.0986123,  ln 4 = 1.3862944,  ln(4/3) = 0.2876821,  ln 1.5 = 0.4054651
    σ(ln 3) = 3/4, so -logσ(ln 3) = ln(4/3) and -logσ(-ln 3) = ln 4.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from training.losses import (
    RunningMoments,
    bradley_terry_loss,
    clipped_surrogate_loss,
    clipped_value_loss,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_estimate,
    kl_penalized_rewards,
    last_token_index,
    logprobs_from_hidden,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    normalize_and_clip_rewards,
    pairwise_accuracy,
    ptx_loss,
    repeated_ngram_fraction,
    reward_centering_loss,
    scatter_masked,
)

LN2, LN3, LN4, LN43, LN15 = 0.6931472, 1.0986123, 1.3862944, 0.2876821, 0.4054651


def t(*rows, dtype=torch.float32):
    return torch.tensor(rows if len(rows) > 1 else rows[0], dtype=dtype)


def scalar(x):
    return torch.tensor(x, dtype=torch.float32)


# ------------------------------------------------------------------------------------ reward model


def test_bradley_terry_loss_plain():
    # pair 1: c - r = ln3 -> -logσ(ln3) = ln(4/3) = 0.2876821
    # pair 2: c - r = -ln3 -> -logσ(-ln3) = ln4 = 1.3862944;  mean = 0.8369882
    loss = bradley_terry_loss(t(LN3, 0.0), t(0.0, LN3))
    assert_close(loss, scalar(0.8369882))
    # equal rewards: -logσ(0) = ln 2
    assert_close(bradley_terry_loss(t(1.0), t(1.0)), scalar(LN2))


def test_bradley_terry_loss_margin_and_shapes():
    # c - r - m = (ln3 + 1) - 0 - 1 = ln3 -> ln(4/3); [B,1] rewards flatten, margin [B]
    loss = bradley_terry_loss(t([[LN3 + 1.0]]), t([[0.0]]), margin=t([1.0]))
    assert loss.shape == ()
    assert_close(loss, scalar(LN43))
    with pytest.raises(ValueError):
        bradley_terry_loss(t(1.0, 2.0), t(1.0, 2.0), margin=t(1.0, 2.0, 3.0))


def test_bradley_terry_loss_label_smoothing():
    # d = ln3: 0.9·(-logσ(ln3)) + 0.1·(-logσ(-ln3)) = 0.9·0.2876821 + 0.1·1.3862944 = 0.3975433
    loss = bradley_terry_loss(t(LN3), t(0.0), label_smoothing=0.1)
    assert_close(loss, scalar(0.3975433))
    with pytest.raises(ValueError):
        bradley_terry_loss(t(1.0), t(0.0), label_smoothing=1.0)


def test_bradley_terry_loss_bf16_and_grad():
    c = t(LN3, 0.0).to(torch.bfloat16).requires_grad_()
    loss = bradley_terry_loss(c, t(0.0, LN3).to(torch.bfloat16))
    assert loss.dtype == torch.float32
    assert_close(loss, scalar(0.8369882), atol=1e-2, rtol=1e-2)
    loss.backward()
    # d/dc of mean(-logσ(c - r)) = -(1 - σ(d))/2: d=ln3 -> -(1/4)/2 = -0.125; d=-ln3 -> -(3/4)/2 = -0.375
    assert_close(c.grad.float(), t(-0.125, -0.375), atol=1e-2, rtol=1e-2)


def test_reward_centering_loss():
    # (c + r)² = (1 - 1)² = 0 and (2 + 1)² = 9; mean 4.5; × 0.01 = 0.045
    assert_close(reward_centering_loss(t(1.0, 2.0), t(-1.0, 1.0), coef=0.01), scalar(0.045))
    assert_close(reward_centering_loss(t(1.0), t(1.0), coef=0.0), scalar(0.0))


def test_pairwise_accuracy():
    # 1 > 0: 1;  2 == 2: 0.5;  3 < 4: 0;  0 > -1: 1  -> 2.5 / 4 = 0.625
    acc = pairwise_accuracy(t(1.0, 2.0, 3.0, 0.0), t(0.0, 2.0, 4.0, -1.0))
    assert acc == pytest.approx(0.625)
    assert isinstance(acc, float)
    assert math.isnan(pairwise_accuracy(t([]), t([])))


# ------------------------------------------------------------------------------ logprobs, entropy


def test_logprobs_from_logits():
    # row of logits [0, ln3]: softmax = [1/4, 3/4]; [0, 0, 0] (V=3 below) gives 1/3 each
    logits = torch.tensor([[[0.0, LN3], [0.0, LN3], [5.0, 5.0]]])  # [B=1, T=3, V=2]
    labels = torch.tensor([[1, 0, 1]])
    # log 3/4 = -0.2876821, log 1/4 = -1.3862944, log 1/2 = -0.6931472
    assert_close(logprobs_from_logits(logits, labels), torch.tensor([[-LN43, -LN4, -LN2]]))
    assert_close(logprobs_from_logits(torch.zeros(1, 1, 3), torch.tensor([[2]])), torch.tensor([[-LN3]]))
    with pytest.raises(ValueError):
        logprobs_from_logits(logits, labels[:, :2])


def test_logprobs_from_logits_bf16_is_float32():
    logits = torch.tensor([[[0.0, LN3]], [[0.0, 0.0]]], dtype=torch.bfloat16, requires_grad=True)
    out = logprobs_from_logits(logits, torch.tensor([[1], [0]]))
    assert out.dtype == torch.float32 and out.shape == (2, 1)
    # bf16 rounds ln3 to 1.1015625 (8-bit mantissa): logσ(1.1015625) = -0.2869, within 3e-3 of -ln(4/3)
    assert_close(out, torch.tensor([[-LN43], [-LN2]]), atol=3e-3, rtol=0)
    out.sum().backward()  # gradient flows through the row-by-row float32 path
    # d logp / d z = onehot - softmax: row 1 label 1 -> [-1/4, 1/4]; row 2 label 0 -> [1/2, -1/2]
    assert_close(logits.grad.float(), torch.tensor([[[-0.25, 0.25]], [[0.5, -0.5]]]), atol=3e-3, rtol=0)


def test_entropy_from_logits():
    # uniform over 4: ln4.  [0, ln3] -> p = [1/4, 3/4]: H = ¼ln4 + ¾ln(4/3) = 0.3465736 + 0.2157616 = 0.5623351
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, LN3, -1e4, -1e4]]])
    assert_close(entropy_from_logits(logits), torch.tensor([[LN4, 0.5623351]]))
    out = entropy_from_logits(logits.to(torch.bfloat16))
    assert out.dtype == torch.float32
    assert_close(out, torch.tensor([[LN4, 0.5623351]]), atol=3e-3, rtol=0)


def test_logprobs_from_hidden_chunked_equals_the_full_logits():
    g = torch.Generator().manual_seed(3)
    for dtype in (torch.float32, torch.bfloat16):
        head = torch.nn.Linear(16, 50, bias=False).to(dtype)
        hidden = torch.randn(23, 16, generator=g).to(dtype)
        labels = torch.randint(0, 50, (23,), generator=g)
        logits = head(hidden)
        want_logp = logprobs_from_logits(logits.unsqueeze(0), labels.unsqueeze(0))[0]
        want_ent = entropy_from_logits(logits.unsqueeze(0))[0]
        for chunk in (0, 1, 5, 23, 100):  # all at once, one row at a time, uneven chunks, more than N
            logp, ent = logprobs_from_hidden(head, hidden, labels, chunk_size=chunk, with_entropy=True)
            assert logp.dtype == ent.dtype == torch.float32 and logp.shape == (23,)
            # the head's GEMM on fewer rows may round differently in its last bit (a 1-row GEMM is a GEMV)
            tol = {} if chunk in (0, 23, 100) else {"rtol": 1e-5, "atol": 1e-5}
            assert_close(logp, want_logp, **(tol or {"rtol": 0, "atol": 0}))
            assert_close(ent, want_ent, **(tol or {"rtol": 0, "atol": 0}))
            logp_only, none = logprobs_from_hidden(head, hidden, labels, chunk_size=chunk)
            assert none is None and torch.equal(logp_only, logp)
    # hand-computed: logits [0, ln3] -> log-probs [-ln4, -ln(4/3)]; entropy 0.5623351 (see above)
    head = torch.nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[0.0], [LN3]]))
    logp, ent = logprobs_from_hidden(head, torch.ones(2, 1), torch.tensor([0, 1]), with_entropy=True)
    assert_close(logp, torch.tensor([-LN4, -LN43]))
    assert_close(ent, torch.tensor([0.5623351, 0.5623351]))
    empty, _ = logprobs_from_hidden(head, torch.ones(0, 1), torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0,)
    with pytest.raises(ValueError):
        logprobs_from_hidden(head, torch.ones(2, 1), torch.tensor([0]))


def test_logprobs_from_hidden_gradient_equals_autograd_of_the_plain_formula():
    # the lean backward of the log-prob path gives bitwise autograd's gradient (float32 and bfloat16)
    g = torch.Generator().manual_seed(4)
    for dtype in (torch.float32, torch.bfloat16):
        head = torch.nn.Linear(8, 40, bias=False).to(dtype)
        hidden = torch.randn(11, 8, generator=g).to(dtype)
        labels = torch.randint(0, 40, (11,), generator=g)
        weights = torch.randn(11, generator=g)
        grads = []
        for fused in (True, False):
            h = hidden.clone().requires_grad_(True)
            if fused:
                logp, _ = logprobs_from_hidden(head, h, labels)
            else:
                z = head(h).float()
                logp = z.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, -1)
            (logp * weights).sum().backward()
            grads.append((h.grad.clone(), head.weight.grad.clone()))
            head.weight.grad = None
        assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1]), dtype


def test_scatter_masked_is_the_inverse_of_boolean_indexing():
    x = torch.arange(12.0).reshape(3, 4)
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 1]])
    out = scatter_masked(x[mask.bool()], mask)
    assert torch.equal(out, torch.where(mask.bool(), x, 0.0))
    v = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    (scatter_masked(v, mask) * torch.arange(12.0).reshape(3, 4)).sum().backward()
    assert v.grad.tolist() == [1.0, 2.0, 8.0, 11.0]  # each value's gradient is the weight where it landed
    with pytest.raises(ValueError):
        scatter_masked(torch.ones(3), mask)


# ----------------------------------------------------------------------------------- masked stats


X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
M = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_masked_mean_and_sum():
    # valid: 1, 2, 4 -> sum 7, mean 7/3
    assert_close(masked_sum(X, M), scalar(7.0))
    assert_close(masked_mean(X, M), scalar(7.0 / 3.0))
    # per row: (1+2)/2 = 1.5, 4/1 = 4
    assert_close(masked_mean(X, M, dim=1), t(1.5, 4.0))
    # an all-masked row has mean 0, not NaN, even over NaN garbage
    garbage = torch.tensor([[float("nan"), 1.0], [3.0, float("inf")]])
    assert_close(masked_mean(garbage, torch.tensor([[0, 0], [1, 0]]), dim=1), t(0.0, 3.0))
    assert_close(masked_mean(garbage, torch.zeros(2, 2)), scalar(0.0))


def test_masked_var():
    # values 1, 2, 4; mean 7/3; squared deviations 16/9 + 1/9 + 25/9 = 42/9
    # biased 42/27 = 1.5555556; unbiased 42/18 = 2.3333333
    assert_close(masked_var(X, M, unbiased=False), scalar(14.0 / 9.0))
    assert_close(masked_var(X, M), scalar(7.0 / 3.0))
    # a single valid token: 0, not NaN/inf
    assert_close(masked_var(X, torch.tensor([[0, 0, 0], [0, 1, 0]])), scalar(0.0))
    assert_close(masked_var(X, torch.zeros(2, 3)), scalar(0.0))
    # bf16 input, bool mask
    assert_close(masked_var(X.to(torch.bfloat16), M.bool()), scalar(7.0 / 3.0))


def test_masked_whiten():
    # valid 2, 4, 6: mean 4, unbiased var (4+0+4)/2 = 4, std 2 -> [-1, 0, 1]; masked slot -> 0
    x = torch.tensor([[2.0, 4.0, 6.0, 100.0]])
    m = torch.tensor([[1, 1, 1, 0]])
    assert_close(masked_whiten(x, m), torch.tensor([[-1.0, 0.0, 1.0, 0.0]]))
    # shift_mean=False adds the mean back: [3, 4, 5]
    assert_close(masked_whiten(x, m, shift_mean=False), torch.tensor([[3.0, 4.0, 5.0, 0.0]]))
    # single token: (x - x)/sqrt(0 + eps) = 0, finite
    assert_close(masked_whiten(x, torch.tensor([[0, 1, 0, 0]])), torch.zeros(1, 4))


# ------------------------------------------------------------------------------------------- KL


def test_kl_estimate():
    # token 1: logp = ln½, ref = ln¼ -> k1 = ln2 = 0.6931472; k2 = ½ln²2 = 0.2402265;
    #          r = ¼/½ = ½ -> k3 = (½ - 1) - ln½ = -0.5 + 0.6931472 = 0.1931472
    # token 2: logp = ln¼, ref = ln½ -> k1 = -ln2; k2 = 0.2402265; r = 2 -> k3 = 1 - ln2 = 0.3068528
    logp = torch.tensor([math.log(0.5), math.log(0.25)])
    ref = torch.tensor([math.log(0.25), math.log(0.5)])
    assert_close(kl_estimate(logp, ref), t(LN2, -LN2))
    assert_close(kl_estimate(logp, ref, "k2"), t(0.2402265, 0.2402265))
    assert_close(kl_estimate(logp, ref, "k3"), t(0.1931472, 0.3068528))
    # identical policies: 0 for every estimator
    for kind in ("k1", "k2", "k3"):
        assert_close(kl_estimate(logp, logp, kind), torch.zeros(2))
    out = kl_estimate(logp.to(torch.bfloat16), ref.to(torch.bfloat16), "k3")
    assert out.dtype == torch.float32
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(logp, ref, "k4")


def test_last_token_index():
    assert last_token_index(torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0], [1, 0, 0]])).tolist() == [2, 1, -1, 0]


def test_used_columns_drops_the_columns_that_are_padding_in_every_row():
    from rlhf_demo.padding import used_columns

    # left-padded prompt, answer, right padding: columns 0 and 4 are padding everywhere
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 0, 0]])
    assert used_columns(mask) == slice(1, 4)
    assert used_columns(torch.ones(2, 3, dtype=torch.long)) == slice(0, 3)


def test_kl_penalized_rewards():
    # k1 = logp - ref. row 0: kl [0.5, -0.2, 0.1], all valid, score 1 at t=2:
    #   rewards = -0.1·kl + [0, 0, 1] = [-0.05, 0.02, 0.99]
    # row 1: kl [0.3, 0.4, (9 masked -> 0)], score 2 at t=1: [-0.03, -0.04 + 2 = 1.96, 0]
    # row 2: all masked -> zero rewards, score dropped
    logp = torch.tensor([[0.5, -0.2, 0.1], [0.3, 0.4, 9.0], [1.0, 1.0, 1.0]])
    ref = torch.zeros(3, 3)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    rewards, kl = kl_penalized_rewards(t(1.0, 2.0, 3.0), logp, ref, mask, kl_coef=0.1)
    assert_close(kl, torch.tensor([[0.5, -0.2, 0.1], [0.3, 0.4, 0.0], [0.0, 0.0, 0.0]]))
    assert_close(rewards, torch.tensor([[-0.05, 0.02, 0.99], [-0.03, 1.96, 0.0], [0.0, 0.0, 0.0]]))
    # single token, k2: kl = ½·0.5² = 0.125 -> reward = -0.2·0.125 + 1 = 0.975
    rewards, kl = kl_penalized_rewards(t([1.0]), torch.tensor([[0.5]]), torch.tensor([[0.0]]),
                                       torch.tensor([[1]]), kl_coef=0.2, kl_kind="k2")
    assert_close(rewards, torch.tensor([[0.975]]))
    assert_close(kl, torch.tensor([[0.125]]))


# ------------------------------------------------------------------------------ running moments


def test_running_moments_hand_values():
    rm = RunningMoments()
    assert (rm.count, rm.mean, rm.std) == (0, 0.0, 1.0)
    # [0, 2, 4]: mean 2, unbiased var (4+0+4)/2 = 4 -> std 2
    batch_mean, batch_std = rm.update(torch.tensor([0.0, 2.0, 4.0]))
    assert (batch_mean, batch_std) == pytest.approx((2.0, 2.0))
    assert (rm.count, rm.mean, rm.std) == (3, pytest.approx(2.0), pytest.approx(2.0))
    # then [6, 8]: batch mean 7, batch std sqrt(2·1/1) = 1.4142136;
    # all five [0..8 step 2]: mean 4, unbiased var (16+4+0+4+16)/4 = 10 -> std 3.1622777
    batch_mean, batch_std = rm.update(torch.tensor([[6.0], [8.0]]))
    assert (batch_mean, batch_std) == pytest.approx((7.0, 1.4142136))
    assert (rm.count, rm.mean, rm.std) == (5, pytest.approx(4.0), pytest.approx(3.1622777))
    assert rm.var == pytest.approx(10.0)
    # an empty batch changes nothing; a single value has batch std 0
    assert rm.update(torch.tensor([])) == (0.0, 0.0)
    assert rm.count == 5
    assert rm.update(torch.tensor([4.0]))[1] == 0.0


def test_running_moments_chunks_equal_concatenation():
    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(n, generator=g) * 3 + 1 for n in (1, 7, 2, 16, 5)]
    chunks.append(torch.randn(4, 3, generator=g).to(torch.bfloat16))
    rm = RunningMoments()
    for c in chunks:
        rm.update(c)
    allx = torch.cat([c.double().reshape(-1) for c in chunks])
    var, mean = torch.var_mean(allx, unbiased=True)
    assert rm.count == allx.numel()
    assert rm.mean == pytest.approx(mean.item(), rel=1e-9, abs=1e-12)
    assert rm.std == pytest.approx(var.sqrt().item(), rel=1e-9)


def test_running_moments_state_dict_round_trip(tmp_path):
    rm = RunningMoments()
    rm.update(torch.tensor([1.0, 5.0, 6.0]))
    path = tmp_path / "moments.pt"
    torch.save({"moments": rm.state_dict()}, path)
    restored = RunningMoments()
    restored.load_state_dict(torch.load(path, weights_only=True)["moments"])
    assert restored.state_dict() == rm.state_dict()
    # both continue identically
    for m in (rm, restored):
        m.update(torch.tensor([2.0, -3.0]))
    assert restored.state_dict() == rm.state_dict()
    assert (restored.count, restored.mean, restored.std) == (rm.count, rm.mean, rm.std)


def test_normalize_and_clip_rewards():
    rm = RunningMoments()
    rm.update(torch.tensor([0.0, 2.0, 4.0]))  # mean 2, std 2
    scores = torch.tensor([4.0, -6.0, 1.0])
    # /2 -> [2, -3, 0.5]; clip 2.5 -> [2, -2.5, 0.5]
    assert_close(normalize_and_clip_rewards(scores, rm, clip=2.5), t(2.0, -2.5, 0.5))
    # (s - 2)/2 -> [1, -4, -0.5]; clip 2.5 -> [1, -2.5, -0.5]; no clip keeps -4
    assert_close(normalize_and_clip_rewards(scores, rm, clip=2.5, shift_mean=True), t(1.0, -2.5, -0.5))
    assert_close(normalize_and_clip_rewards(scores, rm, clip=None, shift_mean=True), t(1.0, -4.0, -0.5))
    # fresh moments (std 1, mean 0): identity; bf16 in -> float32 out; moments untouched
    out = normalize_and_clip_rewards(scores.to(torch.bfloat16), RunningMoments(), clip=None)
    assert out.dtype == torch.float32
    assert_close(out, scores)
    assert rm.count == 3


# ------------------------------------------------------------------------------------------- GAE


def test_gae_hand_computed():
    # γ = 0.9, λ = 0.8, γλ = 0.72
    # row 0 (all valid): r = [0, 0, 1], V = [0.5, 0.4, 0.6]
    #   t=2: δ = 1 + 0 - 0.6 = 0.4;              A2 = 0.4
    #   t=1: δ = 0 + 0.9·0.6 - 0.4 = 0.14;       A1 = 0.14 + 0.72·0.4 = 0.428
    #   t=0: δ = 0 + 0.9·0.4 - 0.5 = -0.14;      A0 = -0.14 + 0.72·0.428 = 0.16816
    #   returns = A + V = [0.66816, 0.828, 1.0]
    # row 1 (mask [1, 1, 0], garbage r=5, V=99 at t=2): r = [0, 2], V = [1, 1]
    #   t=1: δ = 2 + 0 - 1 = 1;                  A1 = 1
    #   t=0: δ = 0 + 0.9·1 - 1 = -0.1;           A0 = -0.1 + 0.72·1 = 0.62
    #   returns = [1.62, 2.0, 0]
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 5.0]])
    values = torch.tensor([[0.5, 0.4, 0.6], [1.0, 1.0, 99.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert_close(adv, torch.tensor([[0.16816, 0.428, 0.4], [0.62, 1.0, 0.0]]))
    assert_close(ret, torch.tensor([[0.66816, 0.828, 1.0], [1.62, 2.0, 0.0]]))


def test_gae_edge_cases():
    # γ = λ = 1: A_t = Σ_{k≥t} r_k - V_t (Monte Carlo): r = [1, 2], V = [0.5, 0.5] -> A = [2.5, 1.5]
    adv, ret = gae(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 0.5]]), torch.ones(1, 2), gamma=1.0, lam=1.0)
    assert_close(adv, torch.tensor([[2.5, 1.5]]))
    assert_close(ret, torch.tensor([[3.0, 2.0]]))
    # single token: A = r - V = 1 - 0.25 = 0.75; all-masked row: zeros
    adv, ret = gae(torch.tensor([[1.0], [7.0]]), torch.tensor([[0.25], [3.0]]).to(torch.bfloat16),
                   torch.tensor([[1], [0]]))
    assert adv.dtype == torch.float32
    assert_close(adv, torch.tensor([[0.75], [0.0]]))
    assert_close(ret, torch.tensor([[1.0], [0.0]]))
    with pytest.raises(ValueError):
        gae(torch.zeros(1, 2), torch.zeros(1, 3), torch.ones(1, 2))


# ------------------------------------------------------------------------------------ PPO losses


def test_clipped_surrogate_loss():
    # ε = 0.2; ratios [1.5, 0.5, 1.5, 0.5], A = [1, 1, -1, -1]; 5th token masked (garbage)
    #   tok0: -A·ρ = -1.5, -A·clip = -1.2 -> max -1.2 (clipped branch)
    #   tok1: -0.5 vs -0.8 -> -0.5 (unclipped)
    #   tok2:  1.5 vs  1.2 ->  1.5 (unclipped)
    #   tok3:  0.5 vs  0.8 ->  0.8 (clipped branch)
    #   loss = (-1.2 - 0.5 + 1.5 + 0.8)/4 = 0.15;  clipfrac = 2/4 = 0.5
    #   approx_kl = ½·mean(ln²1.5, ln²0.5, ln²1.5, ln²0.5) = ½·(0.1644020 + 0.4804530)/2 = 0.1612138
    old = torch.zeros(1, 5)
    logp = torch.tensor([[LN15, -LN2, LN15, -LN2, 50.0]], requires_grad=True)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 1e6]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, clipfrac, approx_kl = clipped_surrogate_loss(logp, old, adv, mask, clip=0.2)
    assert_close(loss, scalar(0.15))
    assert_close(clipfrac, scalar(0.5))
    assert_close(approx_kl, scalar(0.1612138))
    assert not clipfrac.requires_grad and not approx_kl.requires_grad
    loss.backward()
    # ∂/∂logp of -A·ρ/N = -A·ρ/4 on unclipped tokens, 0 on clipped and masked ones:
    #   tok1: -1·0.5/4 = -0.125; tok2: +1·1.5/4 = 0.375
    assert_close(logp.grad, torch.tensor([[0.0, -0.125, 0.375, 0.0, 0.0]]))


def test_clipped_surrogate_loss_on_policy_bf16():
    # ρ = 1 everywhere (first PPO epoch): loss = -mean(A) = -(2 - 1)/2 = -0.5, nothing clipped, kl 0
    logp = torch.tensor([[-1.0, -2.0]], dtype=torch.bfloat16)
    loss, clipfrac, approx_kl = clipped_surrogate_loss(logp, logp.clone(), torch.tensor([[2.0, -1.0]]),
                                                       torch.ones(1, 2))
    assert loss.dtype == torch.float32
    assert_close(loss, scalar(-0.5))
    assert_close(clipfrac, scalar(0.0))
    assert_close(approx_kl, scalar(0.0))


def test_clipped_value_loss():
    # ε = 0.2, V_old = 0; V = [0.5, 0.1, -0.5], R = [1, 1, 0]; 4th token masked
    #   tok0: (0.5-1)² = 0.25; V_clip = 0.2: (0.2-1)² = 0.64 -> 0.64 (clipped branch)
    #   tok1: (0.1-1)² = 0.81; V_clip = 0.1: 0.81 -> 0.81 (tie: not counted as clipped)
    #   tok2: (-0.5)² = 0.25; V_clip = -0.2: 0.04 -> 0.25
    #   loss = ½·(0.64 + 0.81 + 0.25)/3 = 0.2833333; clipfrac = 1/3
    values = torch.tensor([[0.5, 0.1, -0.5, 7.0]], requires_grad=True)
    old = torch.zeros(1, 4)
    returns = torch.tensor([[1.0, 1.0, 0.0, -7.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, clipfrac = clipped_value_loss(values, old, returns, mask, clip=0.2)
    assert_close(loss, scalar(1.7 / 6))
    assert_close(clipfrac, scalar(1.0 / 3.0))
    loss.backward()
    # ∂/∂V of ½(V-R)²/3 = (V-R)/3 where the unclipped branch wins; 0 where V was clipped:
    #   tok1: (0.1-1)/3 = -0.3; tok2: (-0.5)/3 = -0.1666667; tok0, tok3: 0
    assert_close(values.grad, torch.tensor([[0.0, -0.3, -0.5 / 3, 0.0]]))
    # clip=None: plain ½·MSE = ½·(0.25 + 0.81 + 0.25)/3 = 0.2183333
    loss, clipfrac = clipped_value_loss(values.detach(), old, returns, mask, clip=None)
    assert_close(loss, scalar(1.31 / 6))
    assert_close(clipfrac, scalar(0.0))


def test_explained_variance():
    # R = [1, 2, 3], V = [1, 2, 2] -> R - V = [0, 0, 1]: var = 2/9; Var[R] = 2/3 -> 1 - 1/3 = 2/3
    # 4th token masked (garbage)
    mask = torch.tensor([[1, 1, 1, 0]])
    ev = explained_variance(torch.tensor([[1.0, 2.0, 2.0, 50.0]]), torch.tensor([[1.0, 2.0, 3.0, -50.0]]), mask)
    assert isinstance(ev, float)
    assert ev == pytest.approx(2.0 / 3.0, rel=1e-6)
    # perfect critic -> 1; constant returns -> NaN
    assert explained_variance(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 2.0]]), torch.ones(1, 2)) == pytest.approx(1.0)
    assert math.isnan(explained_variance(torch.tensor([[0.0, 1.0]]), torch.tensor([[3.0, 3.0]]), torch.ones(1, 2)))


def test_ptx_loss():
    # tok0: logits [0, ln3], label 1 -> -log ¾ = 0.2876821; tok1: [0, 0], label 0 -> ln2 = 0.6931472
    # tok2: masked (label -100). mean = (0.2876821 + 0.6931472)/2 = 0.4904147
    logits = torch.tensor([[[0.0, LN3], [0.0, 0.0], [9.0, -9.0]]])
    labels = torch.tensor([[1, 0, -100]])
    assert_close(ptx_loss(logits, labels, torch.tensor([[1, 1, 0]])), scalar(0.4904147))
    assert_close(ptx_loss(logits, labels), scalar(0.4904147))  # mask=None: labels != -100
    out = ptx_loss(logits.to(torch.bfloat16), labels)
    assert out.dtype == torch.float32
    assert_close(out, scalar(0.4904147), atol=3e-3, rtol=0)


# --------------------------------------------------------------------------------- collapse guard


def test_repeated_ngram_fraction():
    # 2-grams of 1 2 1 2 1 2: (1,2) (2,1) (1,2) (2,1) (1,2) -> 5 total, 2 distinct -> 3/5
    assert repeated_ngram_fraction([1, 2, 1, 2, 1, 2], n=2) == pytest.approx(0.6)
    # no repeats
    assert repeated_ngram_fraction([1, 2, 3, 4, 5, 6]) == 0.0
    # 4-grams of 7×8: five identical (7,7,7,7) -> 4/5; also from a tensor
    assert repeated_ngram_fraction(torch.full((8,), 7)) == pytest.approx(0.8)
    # shorter than n, or a single token
    assert repeated_ngram_fraction([1, 2, 3]) == 0.0
    assert repeated_ngram_fraction([5], n=1) == 0.0
    with pytest.raises(ValueError):
        repeated_ngram_fraction([1, 2], n=0)


# --------------------------------------------------------------------------------------- purity


def test_inputs_are_not_modified():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 5, generator=g).to(torch.bfloat16)
    labels = torch.randint(0, 5, (2, 3), generator=g)
    a, b, c, d = (torch.randn(2, 3, generator=g) for _ in range(4))
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    inputs = [logits, labels, a, b, c, d, mask]
    before = [x.clone() for x in inputs]
    logprobs_from_logits(logits, labels)
    entropy_from_logits(logits)
    masked_whiten(a, mask)
    kl_penalized_rewards(a[:, 0], a, b, mask, kl_coef=0.1, kl_kind="k3")
    gae(a, b, mask)
    clipped_surrogate_loss(a, b, c, mask)
    clipped_value_loss(a, b, c, mask)
    normalize_and_clip_rewards(d, RunningMoments(), clip=1.0, shift_mean=True)
    ptx_loss(logits, labels, mask)
    head = torch.nn.Linear(3, 5).to(torch.bfloat16)
    hidden = a.to(torch.bfloat16)
    inputs.append(hidden)
    before.append(hidden.clone())
    logprobs_from_hidden(head, hidden, labels[:, 0], chunk_size=1, with_entropy=True)
    scatter_masked(a[mask.bool()], mask)
    for x, y in zip(inputs, before):
        assert torch.equal(x, y)
