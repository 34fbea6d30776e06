"""Literal checks of the head probe: Granite's division, Cohere's multiplication, Gemma 2's soft-cap and the MoE
load-balancing loss are measured from each model and trained on exactly its own loss; the aux loss is reported."""

from __future__ import annotations

import json

import pytest
import torch

from tuneful.models.catalog import tiny_config
from tuneful.models.head import MODEL_FORWARD, SPLIT, probe_head
from tuneful.tokenization.batching import collate_padded
from tuneful.sft.losses import SelectedTokenLoss

from test_architectures import examples, own_loss, ours


def tiny(model_type: str, **fields):
    from transformers import AutoModelForCausalLM

    config = tiny_config(model_type)
    for name, value in fields.items():
        setattr(config, name, value)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@pytest.mark.parametrize("model_type, fields, scale, cap", [
    ("granite", {"logits_scaling": 8.0}, 0.125, None),
    ("cohere", {"logit_scale": 0.25}, 0.25, None),
    ("gemma2", {"final_logit_softcapping": 5.0}, 1.0, 5.0),
])
def test_the_head_is_measured_from_the_model(model_type, fields, scale, cap):
    model = tiny(model_type, **fields)
    head = probe_head(model)
    assert (head.mode, head.scale, head.softcap) == (SPLIT, scale, cap)
    batch = collate_padded(examples(), 0)
    mine, _ = ours(SelectedTokenLoss(model), batch)
    assert abs(mine - own_loss(model, batch)) < 1e-5 * own_loss(model, batch)
    if scale != 1.0:  # (a tiny random model's logits are too small for a cap of 5 to bend them visibly)
        unscaled = SelectedTokenLoss(model, head=type(head)(SPLIT))  # a split that ignores the scale
        assert abs(ours(unscaled, batch)[0] - own_loss(model, batch)) > 1e-3


def test_moe_loss_is_the_models_own_and_off_when_the_config_says_so():
    model = tiny("mixtral", output_router_logits=True)
    module = SelectedTokenLoss(model)
    assert module.head.aux_coefficient == model.config.router_aux_loss_coef
    batch = collate_padded(examples(), 0)
    total, count = module(**batch)
    aux = module.pop_aux()
    assert aux is not None and float(aux) > 0
    own = own_loss(model, batch)
    assert abs(float(total / count + aux) - own) < 1e-5 * own
    assert abs(float(total / count) - own) > 1e-4  # leaving the term out is visibly another loss
    model.config.output_router_logits = False
    assert probe_head(model).aux_coefficient is None


def test_a_head_that_cannot_be_split_runs_the_models_forward():
    model = tiny("llama")

    def shifted(module, args, output):  # after the head, a transform that is no scale or cap: softmax-invariant
        output.logits = output.logits + 1.0
        return output

    model.register_forward_hook(shifted)
    head = probe_head(model)
    assert head.mode == MODEL_FORWARD and "does not reproduce" in head.reason
    batch = collate_padded(examples(), 0)
    assert abs(ours(SelectedTokenLoss(model), batch)[0] - own_loss(model, batch)) < 1e-5 * own_loss(model, batch)


def test_model_check_json_contract(tmp_path):
    from typer.testing import CliRunner

    from tuneful.cli.main import app
    from tuneful.samples import sandbox_base_dir

    tiny("mixtral", output_router_logits=True).save_pretrained(tmp_path / "moe")
    for folder, architecture, aux in [(tmp_path / "moe", "MixtralForCausalLM", 0.001),
                                      (sandbox_base_dir(), "LlamaForCausalLM", None)]:
        result = CliRunner().invoke(app, ["model", "check", str(folder), "--json"])
        assert result.exit_code == 0, result.output
        found = json.loads(result.stdout.strip().splitlines()[-1])
        assert {"architecture", "head", "moe_aux_loss", "lora_targets", "packing", "problems"} <= found.keys()
        assert (found["architecture"], found["head"], found["moe_aux_loss"]) == (architecture, "split", aux)
        assert "q_proj" in found["lora_targets"]


@pytest.mark.parametrize("model_type, fields", [("llama", {}), ("granite", {"logits_scaling": 8.0}),
                                                 ("gemma2", {"final_logit_softcapping": 0.5})])
def test_fused_linear_cross_entropy_equals_the_plain_loss_and_gradients(model_type, fields):
    """Chunked SFT (train.loss_chunk_size > 0) on a plain head runs the fused linear cross-entropy: the same sum and
    gradients (scale and soft-cap included; a cap of 0.5 bends every logit) as all trained positions at once."""
    model = tiny(model_type, **fields)
    batch = collate_padded(examples(), 0)
    results = []
    for chunk in (0, 3):
        model.zero_grad()
        module = SelectedTokenLoss(model, chunk)
        assert (module._plain_head_weight() is not None) == (chunk > 0)
        total, count = module(**batch)
        (total / count).backward()
        results.append((float(total), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (plain, plain_grads), (fused, fused_grads) = results
    assert abs(plain - fused) < 1e-5 * abs(plain)
    for name, grad in plain_grads.items():
        assert torch.allclose(grad, fused_grads[name], rtol=1e-4, atol=1e-6), name
