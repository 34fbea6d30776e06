"""LoRA variants and NEFTune: each setting changes what its paper says, and nothing when off."""

from __future__ import annotations

import pytest
import torch

from tiny import tiny_llama
from tuneful.config import ConfigError, build
from tuneful.train.components import make_optimizer
from tuneful.models.settings import LoraSettings
from tuneful.models.loading import add_neftune, apply_lora


def _lora(**kw) -> torch.nn.Module:
    return apply_lora(tiny_llama(64), LoraSettings(enabled=True, r=4, alpha=8, **kw))


def test_dora_adds_magnitude_vectors():
    plain, dora = _lora(), _lora(dora=True)
    assert not [n for n, _ in plain.named_parameters() if "lora_magnitude_vector" in n]
    assert [n for n, p in dora.named_parameters() if "lora_magnitude_vector" in n and p.requires_grad]


def test_rslora_scales_by_the_square_root_of_the_rank():
    layer = next(m for m in _lora(rslora=True).modules() if isinstance(getattr(m, "scaling", None), dict))
    assert layer.scaling["default"] == pytest.approx(8 / 4 ** 0.5)
    plain = next(m for m in _lora().modules() if isinstance(getattr(m, "scaling", None), dict))
    assert plain.scaling["default"] == pytest.approx(8 / 4)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_and_olora_start_from_the_weights_not_from_zero(init):
    torch.manual_seed(0)
    x = torch.randint(0, 64, (2, 6))
    base = tiny_llama(64)
    before = base(input_ids=x).logits
    adapted = apply_lora(base, LoraSettings(enabled=True, r=4, alpha=4, init=init))
    b = next(p for n, p in adapted.named_parameters() if "lora_B" in n)
    assert b.abs().sum() > 0  # default LoRA starts with B = 0
    # the base keeps the residual, so the adapted model computes the same function at the start
    assert torch.allclose(adapted(input_ids=x).logits, before, atol=1e-4)


def test_lora_plus_gives_the_b_matrices_their_own_rate():
    model = _lora()
    optimizer = make_optimizer(model, 1e-3, 0.0, lora_plus_ratio=16)
    b_params = {id(p) for n, p in model.named_parameters() if ".lora_B." in n}
    [group] = [g for g in optimizer.param_groups if {id(p) for p in g["params"]} == b_params]
    assert group["lr"] == pytest.approx(16e-3)
    assert all(g["lr"] == pytest.approx(1e-3) for g in optimizer.param_groups if g is not group)
    assert len(make_optimizer(_lora(), 1e-3, 0.0).param_groups) == 2  # ratio 1: plain LoRA, no extra group


def test_neftune_perturbs_embeddings_in_training_only():
    model = tiny_llama(64)
    x = torch.randint(0, 64, (2, 10))
    clean = model.get_input_embeddings()(x)
    handle = add_neftune(model, 5.0)
    model.train()
    noisy = model.get_input_embeddings()(x)
    bound = 5.0 / (10 * clean.shape[-1]) ** 0.5
    assert not torch.equal(noisy, clean) and (noisy - clean).abs().max() <= bound + 1e-6
    model.eval()
    assert torch.equal(model.get_input_embeddings()(x), clean)
    handle.remove()


def test_variant_settings_are_checked_together():
    from tuneful.dpo.config import DPOConfig
    from tuneful.sft.config import SFTConfig

    with pytest.raises(ConfigError) as err:
        build(SFTConfig, None, ["model.name_or_path=x", "data.train=y", "lora.dora=true", "lora.init=svd",
                                "lora.plus_lr_ratio=0", "train.neftune_alpha=-1"])
    text = str(err.value)
    for fragment in ("init: 'svd'", "plus_lr_ratio: 0", "LoRA variants need lora.enabled=true", "neftune_alpha"):
        assert fragment in text, fragment
    with pytest.raises(ConfigError, match="NEFTune is an SFT method"):
        build(DPOConfig, None, ["model.name_or_path=x", "data.train=y", "train.neftune_alpha=5"])


def test_a_run_with_every_variant_trains_saves_and_loads_merged(tmp_path):
    from tiny import save_tiny_model, write_data
    from tuneful.infer.chat_model import load_chat_model
    from tuneful.sft.config import SFTConfig
    from tuneful.sft.trainer import run_sft

    save_tiny_model(tmp_path / "base")
    write_data(tmp_path / "train.jsonl")
    result = run_sft(build(SFTConfig, None, [
        f"model.name_or_path={tmp_path / 'base'}", f"data.train={tmp_path / 'train.jsonl'}",
        f"train.output_dir={tmp_path / 'run'}", "train.progress=false", "train.max_steps=3", "data.max_length=256",
        "lora.enabled=true", "lora.dora=true", "lora.rslora=true", "lora.init=olora", "lora.plus_lr_ratio=16",
        "train.neftune_alpha=5"]))
    assert result.steps == 3 and result.final_loss == result.final_loss
    chat = load_chat_model(str(result.model_dir), device="cpu")  # adapter folded into its (original) base
    assert chat.model.get_input_embeddings().weight.shape[0] == len(chat.tokenizer)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_and_olora_adapters_apply_to_the_original_base(tmp_path, init):
    """They rewrite the base weights at the start; the saved adapter is converted to a plain LoRA (rank 2r)
    against its initial state, so that any runtime applying it to the original base — without re-running
    the initialisation as peft does — computes what the trained model computes."""
    import json

    from tiny import save_tiny_model, write_data
    from tuneful.infer.chat_model import load_chat_model
    from tuneful.sft.config import SFTConfig
    from tuneful.sft.trainer import SFTTrainer
    from tuneful.train.loop import run

    save_tiny_model(tmp_path / "base")
    write_data(tmp_path / "train.jsonl")
    trainer = SFTTrainer(build(SFTConfig, None, [
        f"model.name_or_path={tmp_path / 'base'}", f"data.train={tmp_path / 'train.jsonl'}",
        f"train.output_dir={tmp_path / 'run'}", "train.progress=false", "train.max_steps=3", "data.max_length=256",
        "lora.enabled=true", "lora.r=4", f"lora.init={init}", "train.lr=1e-2"]))
    result = run(trainer)
    x = torch.randint(0, 100, (1, 12))
    trained = trainer.model.eval()(input_ids=x).logits
    loaded = load_chat_model(str(result.model_dir), device="cpu").model(input_ids=x).logits
    assert torch.allclose(trained, loaded, atol=1e-4)
    config = json.loads((result.model_dir / "adapter_config.json").read_text())
    assert config["init_lora_weights"] is True and config["r"] == 8
