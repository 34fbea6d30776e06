"""The shared training core's own pieces: activation checkpointing under both transformers names."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

from tiny import tiny_llama
from tuneful.models.loading import enable_activation_checkpointing


def test_activation_checkpointing_uses_the_current_name_without_a_deprecation_warning():
    model = tiny_llama(64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the old name warns on transformers >= 5.24
        enable_activation_checkpointing(model)
    on = model.is_activation_checkpointing if hasattr(model, "is_activation_checkpointing") else \
        model.is_gradient_checkpointing
    assert on and model.config.use_cache is False


def test_activation_checkpointing_falls_back_to_the_old_name():
    """transformers before 5.24 has only gradient_checkpointing_enable."""
    calls = []
    old_api = SimpleNamespace(config=SimpleNamespace(use_cache=True),
                              gradient_checkpointing_enable=lambda **kw: calls.append(kw))
    enable_activation_checkpointing(old_api)
    assert calls == [{"gradient_checkpointing_kwargs": {"use_reentrant": False}}]
    assert old_api.config.use_cache is False
