"""rlhf_demo.precision.computing_in: widen a model for a while, then restore it bit for bit."""

import pytest
import torch

from rlhf_demo.precision import computing_in, narrower_tensors, widens_exactly


class Mixed(torch.nn.Module):
    """A bfloat16 'base' layer, a float32 'adapter', a bfloat16 buffer and an integer buffer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.base = torch.nn.Linear(8, 8).to(torch.bfloat16)
        self.adapter = torch.nn.Linear(8, 8)
        self.register_buffer("scale", torch.rand(8).to(torch.bfloat16))
        self.register_buffer("steps", torch.arange(3))


def snapshot(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_inside_every_float_tensor_is_float32_and_afterwards_each_is_back_bit_for_bit():
    m = Mixed()
    before, ids = snapshot(m), {k: id(p) for k, p in m.named_parameters()}
    with computing_in(m, torch.float32):
        assert {p.dtype for p in m.parameters()} == {torch.float32}
        assert m.scale.dtype == torch.float32 and m.steps.dtype == torch.int64  # integers are never cast
        # the widened values are the old ones exactly (bfloat16 -> float32 is exact)
        assert torch.equal(m.base.weight, before["base.weight"].float())
    after = m.state_dict()
    for k, v in before.items():
        assert after[k].dtype == v.dtype, k
        assert torch.equal(after[k], v), k
    assert {k: id(p) for k, p in m.named_parameters()} == ids  # the same Parameter objects: optimisers keep them


def test_an_optimiser_made_before_still_trains_the_restored_parameters():
    m = Mixed()
    opt = torch.optim.AdamW(m.adapter.parameters(), lr=0.1)
    with torch.no_grad(), computing_in(m, torch.float32):
        m.base(torch.ones(1, 8))
    m.adapter(torch.ones(1, 8)).sum().backward()
    old = m.adapter.weight.detach().clone()
    opt.step()
    assert m.adapter.weight.dtype == torch.float32 and not torch.equal(m.adapter.weight, old)


def test_restored_after_an_error_inside_the_block():
    m = Mixed()
    before = snapshot(m)
    with pytest.raises(RuntimeError, match="boom"):
        with computing_in(m, torch.float32):
            raise RuntimeError("boom")
    assert all(torch.equal(m.state_dict()[k], v) and m.state_dict()[k].dtype == v.dtype for k, v in before.items())


def test_narrowing_is_refused_and_changes_nothing():
    m = Mixed()
    before = snapshot(m)
    with pytest.raises(ValueError, match="restored exactly"):
        with computing_in(m, torch.bfloat16):
            pass
    assert all(torch.equal(m.state_dict()[k], v) and m.state_dict()[k].dtype == v.dtype for k, v in before.items())


def test_only_exact_widening_counts():
    assert widens_exactly(torch.bfloat16, torch.float32) and widens_exactly(torch.float16, torch.float32)
    assert widens_exactly(torch.float32, torch.float64)
    # float16 has precision bfloat16 lacks, bfloat16 has range float16 lacks: neither round trip is exact
    assert not widens_exactly(torch.float16, torch.bfloat16) and not widens_exactly(torch.bfloat16, torch.float16)
    m = torch.nn.Linear(2, 2).to(torch.float16)
    with pytest.raises(ValueError, match="restored exactly"):
        with computing_in(m, torch.bfloat16):
            pass
    assert m.weight.dtype == torch.float16


def test_an_error_half_way_through_widening_puts_back_what_was_widened(monkeypatch):
    # e.g. out of memory on the third tensor: the first two are restored, nothing is left half-widened
    m = Mixed()
    before = snapshot(m)
    calls = {"n": 0}
    real_to = torch.Tensor.to

    def failing_to(self, *args, **kw):
        if args and args[0] == torch.float32:
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("out of memory")
        return real_to(self, *args, **kw)

    monkeypatch.setattr(torch.Tensor, "to", failing_to)
    with pytest.raises(RuntimeError, match="out of memory"):
        with computing_in(m, torch.float32):
            pass
    monkeypatch.undo()
    assert calls["n"] == 3
    assert all(torch.equal(m.state_dict()[k], v) and m.state_dict()[k].dtype == v.dtype for k, v in before.items())


def test_none_and_a_module_already_in_the_dtype_are_left_alone():
    m = torch.nn.Linear(4, 4)
    assert narrower_tensors(m, torch.float32) == []
    storage = m.weight.data_ptr()
    with computing_in(m, None), computing_in(m, torch.float32):
        assert m.weight.data_ptr() == storage  # not even copied
