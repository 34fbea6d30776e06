"""Shared fixtures. Third-party artefacts come from TUNEFUL_FIXTURES (CI: ../shared/fixtures).

When TUNEFUL_FIXTURES is set, a missing folder is a failure; when it is not set, tests that need
the folder skip with a visible reason unless ../shared/fixtures exists next to the checkout.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FROZEN_NOW = datetime(2024, 7, 26, 12, 0, 0)
# prepared data of the test run (and of the CLI processes it starts) is cached apart from the user's cache
os.environ.setdefault("TUNEFUL_CACHE_DIR", tempfile.mkdtemp(prefix="tuneful-test-cache-"))


def _fixtures_dir() -> Path | None:
    configured = os.environ.get("TUNEFUL_FIXTURES")
    if configured:
        path = Path(configured)
        if not path.is_absolute():
            path = (Path.cwd() / path).resolve()
        if not path.is_dir():
            raise pytest.UsageError(f"TUNEFUL_FIXTURES={configured} is set but {path} is not a folder")
        return path
    default = REPO.parent / "shared" / "fixtures"
    return default if default.is_dir() else None


FIXTURES = _fixtures_dir()
needs_fixtures = pytest.mark.skipif(
    FIXTURES is None, reason="shared fixtures not found: set TUNEFUL_FIXTURES=../shared/fixtures to run these"
)


@pytest.fixture(scope="session")
def fixtures() -> Path:
    if FIXTURES is None:
        pytest.skip("shared fixtures not found: set TUNEFUL_FIXTURES=../shared/fixtures to run these")
    return FIXTURES


@pytest.fixture(scope="session")
def fixture_conversations(fixtures: Path) -> list[dict]:
    return json.loads((fixtures / "chat_templates" / "conversations.json").read_text())


@pytest.fixture(scope="session")
def starter_tok():
    from tuneful.tokenization.masking import starter_tokenizer

    return starter_tokenizer()


@pytest.fixture(scope="session")
def sandbox_chat():
    """The shipped sandbox base model, loaded for inference (its logits are sharp: greedy is stable)."""
    from tuneful.infer.chat_model import load_chat_model

    return load_chat_model("sandbox", device="cpu")


@pytest.fixture(scope="session")
def agent_model(tmp_path_factory) -> Path:
    """A tiny Llama overfitted on tests/test_serve_tools.py's agent traces (chatml, Hermes-style calls of
    ``get_weather``): it calls the tool, reads the result and answers."""
    from test_serve_tools import train_agent_model

    return train_agent_model(tmp_path_factory.mktemp("agent"))


@pytest.fixture(scope="module")
def word_tok():
    """Word-level tokenizer: one token per space-separated word, so masks can be written by hand (one per module:
    tests may change its pad token)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<eos>"]
    words = ["hello", "world", "hi", "there", "a", "b", "c", "d", "sys", "<think>", "</think>", "[UNK]"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(special + words)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", unk_token="[UNK]")
    tok.add_special_tokens({"additional_special_tokens": special[:4]})
    return tok
