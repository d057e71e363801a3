"""rlhf_demo.model_patches: the version guard, and decoder_slice against the library's own full forward.

(The other two patches have their equivalence tests in tests/test_roles.py: AdapterSwitch against peft's
set_adapter/disable_adapter, float32_attention against SDPA.)
"""

from __future__ import annotations

import logging

import torch

from rlhf_demo import model_patches as MP
from rlhf_demo.adapters import forward_hidden, frozen_hidden
from rlhf_demo.base_model import load_base_model


def test_version_guard_passes_on_the_tested_versions_and_warns_otherwise(monkeypatch, caplog):
    import peft
    import transformers

    found = {"transformers": transformers.__version__, "peft": peft.__version__}
    exact = {k: tuple(int(x) for x in v.split(".")[:2]) for k, v in found.items()}
    monkeypatch.setattr(MP, "TESTED", exact)
    assert MP.check_versions() is True
    monkeypatch.setattr(MP, "TESTED", {"transformers": (0, 1), "peft": exact["peft"]})
    monkeypatch.setattr(MP, "_checked", False)
    with caplog.at_level(logging.WARNING, logger="rlhf_demo.model_patches"):
        assert MP.check_versions() is False
    assert "test_roles.py" in caplog.text and "transformers 0.1" in caplog.text


def test_decoder_slice_bottom_then_top_equals_the_full_decoder(tiny_settings):
    model, _ = load_base_model(tiny_settings)
    model.eval()
    ids = torch.randint(0, 1000, (2, 7))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full = forward_hidden(model, ids, mask, pos)
        bottom = frozen_hidden(model, ids, mask, pos, 1)  # layers [0, 1), no final norm
        top = forward_hidden(model, None, mask, pos, inputs_embeds=bottom, start_layer=1)
    layers = MP.decoder(model).layers
    assert len(layers) == 2  # the slices put every layer back
    valid = mask.bool()
    torch.testing.assert_close(top[valid], full[valid], rtol=1e-5, atol=1e-5)
