"""Shared fixtures.

* ``embedded_settings``: Settings whose data dir is a fresh temp dir, with the converted embedded
  model linked in from a cache shared by all test runs of this checkout (converted once).
* ``tiny_model``: a random 2-layer Llama built from a config, with the embedded tokenizer — for
  training tests that must run in seconds.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from rlhf_demo.config import Settings, apply_offline

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
MODEL_CACHE = Path(os.environ.get("RLHF_ARENA_TEST_CACHE", ROOT / ".cache" / "test-data"))

apply_offline(False)  # tests never reach a hub
torch.set_num_threads(int(os.environ.get("RLHF_ARENA_TEST_THREADS", max(1, min(2, os.cpu_count() or 1)))))


def shared_data(relative: str) -> Path:
    """A file from ../shared/data, or skip the test with a message when it is absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} is absent (a user's clone has no ../shared/data)")
    return path


CHROMIUM = Path("/usr/bin/chromium")


def in_ci() -> bool:
    """Under CI (``CI=true``, set by .ci/run) a missing test dependency is a failure, not a skip."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason`` on a developer's machine; fail under CI, where the dependency must be there."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: the browser tests must run in CI)", pytrace=False)
    pytest.skip(reason)


def browser_api():
    """Playwright's sync API for the Chromium browser tests: skipped without Chromium or Playwright locally,
    a failure under CI."""
    if not CHROMIUM.exists():
        skip_or_fail(f"{CHROMIUM} is absent: `apt-get install chromium` to run the browser tests")
    try:
        from playwright import sync_api
    except ImportError as exc:
        skip_or_fail(f"playwright is not installed ({exc})")
    return sync_api


# Tests see only the versions they publish, not the ones shipped in rlhf_demo/versions (which belong
# to the embedded model) — in this process and in the apps and CLIs they start as subprocesses.
os.environ["RLHF_ARENA_PACKAGE_VERSIONS"] = tempfile.mkdtemp(prefix="no-shipped-versions-")


@pytest.fixture(autouse=True)
def shipped_versions_on_request(request, monkeypatch):
    """Mark a test `shipped_versions` to see rlhf_demo/versions."""
    if request.node.get_closest_marker("shipped_versions"):
        monkeypatch.delenv("RLHF_ARENA_PACKAGE_VERSIONS")


@pytest.fixture(scope="session")
def converted_models_dir() -> Path:
    """The embedded model converted once into a cache shared by test runs."""
    from rlhf_demo.base_model import resolve_base_model

    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    resolve_base_model(Settings(data_dir=MODEL_CACHE))
    return MODEL_CACHE / "models"


@pytest.fixture()
def embedded_settings(tmp_path, converted_models_dir) -> Settings:
    (tmp_path / "models").symlink_to(converted_models_dir, target_is_directory=True)
    return Settings(data_dir=tmp_path, device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def embedded_model(converted_models_dir):
    """(model, tokenizer) of the embedded SFT model in fp32, loaded once per session. Do not train it."""
    from rlhf_demo.base_model import load_base_model

    model, tok = load_base_model(Settings(data_dir=converted_models_dir.parent, device="cpu", dtype="float32"))
    model.eval()
    return model, tok


@pytest.fixture(scope="session")
def tokenizer(converted_models_dir):
    from rlhf_demo.base_model import load_tokenizer

    return load_tokenizer(Settings(data_dir=converted_models_dir.parent))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A random 2-layer Llama with the embedded tokenizer, saved like any local model directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("tiny-model")
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture()
def tiny_settings(tmp_path, tiny_model_dir) -> Settings:
    return Settings(data_dir=tmp_path, base_model=str(tiny_model_dir), device="cpu", dtype="float32")


def write_random_adapter(settings: Settings, out_dir: Path, seed: int, r: int = 8, scale: float = 1.0) -> Path:
    """Save a LoRA adapter with random, non-zero weights (so it changes the output) in PEFT format."""
    from peft import LoraConfig, get_peft_model

    from rlhf_demo.base_model import load_base_model

    model, _ = load_base_model(settings)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj", "o_proj"],
                                                  init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.mul_(scale)
    peft_model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture()
def random_adapter(tmp_path):
    def make(settings: Settings, seed: int = 1, **kw) -> Path:
        return write_random_adapter(settings, tmp_path / f"adapter-{seed}", seed, **kw)
    return make


# -- PostgreSQL: a real server (initdb + pg_ctl in a temp dir), started once per session -------------------
@pytest.fixture(scope="session")
def pg_server():
    """A running PostgreSQL server (tests/pg_server.py). Skipped without the binaries or psycopg locally,
    a failure under CI (CI=true), where the PostgreSQL tests must run."""
    from pg_server import PgServer, find_bin_dir, wait_ready

    def missing(reason: str):
        if in_ci():
            pytest.fail(f"{reason} (CI=true: the PostgreSQL tests must run in CI)", pytrace=False)
        pytest.skip(reason)

    bin_dir = find_bin_dir()
    if bin_dir is None:
        missing("PostgreSQL's initdb/pg_ctl are absent (apt-get install postgresql, or set RLHF_ARENA_PG_BIN)")
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        missing(f"the psycopg driver is not installed ({exc}); pip install -r requirements.txt")
    server = PgServer(bin_dir)
    try:
        server.start()
        wait_ready(server)
    except Exception:
        server.stop()
        raise
    yield server
    server.stop()


@pytest.fixture()
def pg_url(pg_server) -> str:
    """The SQLAlchemy URL of a fresh, empty database on the session's PostgreSQL server."""
    return pg_server.create_database()
