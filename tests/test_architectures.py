"""The architecture matrix: every causal LM transformers ships that builds tiny on a CPU, trained by tuneful on
exactly its own loss.

For each architecture (tiny random fp32 model from ``tuneful.models.catalog``, MoE router loss on):
- SFT loss (padded rows) == ``model(input_ids, labels=...).loss``, MoE auxiliary loss included, within 1e-5;
- packed SFT (the layout tuneful picks for it) == the model's own forward on the same packed row, and the packed
  NLL == the examples' NLL alone (sliding windows bind: examples are longer than the 8-token window); where packing
  is refused, the probe's reason is checked by showing the examples *do* read each other;
- per-reply log-probs in both DPO layouts == log-probs from the model's own logits of each reply alone (the
  shared-prompt layout where tuneful allows it; where it refuses, the refusal is asserted);
- one full step and one LoRA (all-linear) step give finite gradients that reach the weights;
- gradient checkpointing gives the same gradients.
Skipped architectures carry their reason (the same table as docs/models.md).
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from tuneful.preference.pairs import COLLATORS, PreferenceExample
from tuneful.preference.reference import ResponseLogps
from tuneful.models.catalog import build, causal_model_types
from tuneful.models.head import REFUSED, probe_head
from tuneful.models.layouts import BLOCK_MASK, probe_layouts
from tuneful.models.lora import expert_parameters
from tuneful.tokenization.batching import Example, collate_packed, collate_padded
from tuneful.sft.losses import SelectedTokenLoss
from tuneful.models.settings import LoraSettings
from tuneful.models.loading import apply_lora, attention_mask_for, enable_activation_checkpointing

PAD = 0
RTOL = 1e-5


@functools.lru_cache(maxsize=None)  # each architecture built once for every test here
def _built(model_type: str):
    return build(model_type)


def model_of(model_type: str):
    built = _built(model_type)
    if built.model is None:
        pytest.skip(built.skipped)
    head = probe_head(built.model)
    if head.mode == REFUSED:  # refused by name, never trained on a wrong loss
        with pytest.raises(ValueError, match="cannot train this model on exactly its own loss"):
            SelectedTokenLoss(built.model)
        pytest.skip(f"refused: {head.reason}")
    return built.model


def examples() -> list[Example]:
    g = torch.Generator().manual_seed(7)
    out = []
    for length in (12, 10):
        ids = torch.randint(3, 250, (length,), generator=g).tolist()
        out.append(Example(ids, [-100] * 4 + ids[4:]))
    return out


def ours(module: SelectedTokenLoss, batch: dict) -> tuple[float, float]:
    """(mean NLL + the model's MoE term, NLL sum) as tuneful's SFT step computes them for one micro-batch."""
    total, count = module(**batch)
    aux = module.pop_aux()
    return float(total / count + (aux if aux is not None else 0.0)), float(total)


def own_loss(model, batch: dict) -> float:
    mask = batch.get("attention_mask")
    return float(model(input_ids=batch["input_ids"], labels=batch["labels"], position_ids=batch.get("position_ids"),
                       attention_mask=attention_mask_for(model, mask) if mask is not None else None,
                       use_cache=False).loss)


def close(a: float, b: float, rtol: float = RTOL) -> bool:
    return abs(a - b) <= rtol * max(abs(a), abs(b), 1e-6)


@pytest.mark.parametrize("model_type", causal_model_types())
def test_sft_loss_is_the_models_own(model_type: str):
    model = model_of(model_type)
    module = SelectedTokenLoss(model)
    batch = collate_padded(examples(), PAD)
    mine, _ = ours(module, batch)
    assert close(mine, own_loss(model, batch)), (module.head, mine, own_loss(model, batch))


@pytest.mark.parametrize("model_type", causal_model_types())
def test_packing_keeps_examples_apart_or_is_refused(model_type: str):
    model = model_of(model_type)
    module = SelectedTokenLoss(model)
    support = probe_layouts(model)
    exs = examples()
    alone = sum(ours(module, collate_padded([e], PAD))[1] for e in exs)
    if support.packing is None:  # refused: show the second example really reads the first, even under a block mask
        assert support.packing_reason
        if support.sliding_window is None:
            batch = collate_packed([exs], PAD, block_mask=True)
            decoder = model.get_decoder()
            try:
                with torch.no_grad():
                    packed = decoder(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                     attention_mask=attention_mask_for(model, batch["attention_mask"])).last_hidden_state
                    by_itself = decoder(input_ids=torch.tensor([exs[1].input_ids])).last_hidden_state
            except Exception:  # the model cannot even take the packed row: refusing it is right
                return
            assert (packed[0, len(exs[0]):] - by_itself[0]).abs().max() > 1e-4, support
        return
    batch = collate_packed([exs], PAD, block_mask=support.packing == BLOCK_MASK)
    mine, packed_sum = ours(module, batch)
    assert close(mine, own_loss(model, batch)), (mine, own_loss(model, batch))
    assert close(packed_sum, alone, 1e-4), (support, packed_sum, alone)


def pair() -> PreferenceExample:
    g = torch.Generator().manual_seed(3)
    ids = lambda n: torch.randint(3, 250, (n,), generator=g).tolist()  # noqa: E731
    return PreferenceExample(ids(6), ids(5), [1] * 5, ids(4), [1, 1, 1, 0])


def own_reply_logps(model, prompt: list[int], reply: list[int], mask: list[int]) -> float:
    ids = torch.tensor([prompt + reply])
    logits = model(input_ids=ids, use_cache=False).logits.float()
    logps = torch.log_softmax(logits[0, :-1], -1).gather(1, ids[0, 1:, None])[:, 0]
    keep = torch.tensor([0] * (len(prompt) - 1) + mask, dtype=torch.bool)
    return float(logps[keep].sum())


@pytest.mark.parametrize("model_type", causal_model_types())
def test_reply_logps_in_both_pair_layouts(model_type: str):
    model = model_of(model_type)
    example = pair()
    expected = [own_reply_logps(model, example.prompt_ids, example.chosen_ids, example.chosen_mask),
                own_reply_logps(model, example.prompt_ids, example.rejected_ids, example.rejected_mask)]
    module = ResponseLogps(model)
    support = probe_layouts(model)
    width = len(example.prompt_ids) + len(example.chosen_ids) + len(example.rejected_ids)
    problem = support.shared_prompt_problem(width, aux_loss=module.head.aux_coefficient is not None)
    for layout in ("two-rows", "shared-prompt"):
        if layout == "shared-prompt" and problem:
            continue  # refused by name (preference.policy.resolve_pair_layout), two-rows chosen by default
        with torch.no_grad():
            sums, _ = module(**COLLATORS[layout]([example], PAD).inputs())
        module.pop_aux()
        for got, want in zip(sums.tolist(), expected):
            assert close(got, want), (layout, got, want, module.head)


def _grads(model, batch: dict) -> dict[str, torch.Tensor]:
    model.zero_grad()
    module = SelectedTokenLoss(model)
    total, count = module(**batch)
    aux = module.pop_aux()
    (total / count + (aux if aux is not None else 0.0)).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("model_type", causal_model_types())
def test_full_and_lora_steps_and_checkpointing(model_type: str):
    model = copy.deepcopy(model_of(model_type)).train()
    batch = collate_padded(examples(), PAD)
    plain = _grads(model, batch)
    assert plain and all(torch.isfinite(g).all() for g in plain.values())
    assert any(g.abs().sum() > 0 for g in plain.values())
    if model.supports_gradient_checkpointing:  # else transformers refuses it by name when it is asked for
        enable_activation_checkpointing(model)
        checkpointed = _grads(model, batch)
        assert plain.keys() == checkpointed.keys()
        for name, grad in plain.items():
            assert torch.allclose(grad, checkpointed[name], rtol=1e-4, atol=1e-6), name
    lora = apply_lora(copy.deepcopy(model_of(model_type)).train(), LoraSettings(enabled=True, r=4, alpha=8))
    grads = _grads(lora, batch)
    trained = {n: g for n, g in grads.items() if "lora_" in n}
    assert trained and all(torch.isfinite(g).all() for g in trained.values())
    assert any(g.abs().sum() > 0 for g in trained.values())
    if expert_parameters(model_of(model_type)):  # MoE with fused 3-D experts: the experts adapt too
        assert any(g.abs().sum() > 0 for n, g in trained.items() if "expert" in n), sorted(trained)


def test_the_matrix_builds_the_families_people_fine_tune():
    wanted = ["llama", "qwen2", "qwen3", "qwen3_moe", "gpt_oss", "gemma2", "gemma3_text", "mistral", "mixtral", "phi3",
              "granite", "granitemoe", "cohere", "cohere2", "olmo2", "smollm3", "glm4", "qwen3_next", "jamba", "lfm2",
              "falcon_h1", "deepseek_v2", "deepseek_v3", "gpt_neo", "gemma3", "gemma4"]  # MLA, GPT-Neo, multimodal
    missing = {name: _built(name).skipped for name in wanted if build(name).model is None}
    assert not missing, missing


@pytest.mark.parametrize("model_type", causal_model_types())
def test_the_serving_engine_decodes_the_models_own_greedy_tokens(model_type: str):
    """Two prompts of different lengths through the engine together (continuous batching, left padding, the KV
    cache merged row by row — or static batches where the cache cannot be merged) against each prompt alone
    through the model's own ``generate``."""
    from types import SimpleNamespace

    from tuneful.infer.chat_model import ChatModel
    from tuneful.infer.engine import GenerationEngine, GenerationRequest

    model = model_of(model_type)
    stop = [1]
    prompts = [examples()[0].input_ids[:7], examples()[1].input_ids[:4]]
    owns = []
    for prompt in prompts:
        try:
            with torch.no_grad():
                own = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=5, do_sample=False,
                                     eos_token_id=stop, pad_token_id=1)[0, len(prompt):].tolist()
        except Exception as error:
            pytest.skip(f"the model's own generate fails on this tiny config: {type(error).__name__}: {error}")
        owns.append(own[: own.index(1)] if 1 in own else own)
    tokenizer = SimpleNamespace(pad_token_id=None, eos_token_id=1)
    chat = ChatModel(model_type, model, tokenizer, None, stop, stop, 256)
    engine = GenerationEngine(chat, max_batch=4, batch_wait_s=0.05).start()
    try:
        requests = [engine.submit(GenerationRequest(p, max_new_tokens=5, stream=False)) for p in prompts]
        produced = [list(r.tokens()) for r in requests]
    finally:
        engine.stop()
    for prompt, tokens, own in zip(prompts, produced, owns):
        assert tokens == own, (model_type, prompt, tokens, own, engine.continuous)


@pytest.mark.slow
def test_model_check_reads_every_folder_the_matrix_builds(tmp_path):
    """Every built tiny model saved as a folder (``tuneful model matrix --save``) and read back the way ``tuneful
    model check`` reads a folder: the findings carry the contract's keys and the same head as in memory."""
    from tuneful.models.check import check_model, load_for_check

    checked = 0
    for model_type in causal_model_types():
        built = _built(model_type)
        if built.model is None:
            continue
        folder = tmp_path / model_type
        built.model.save_pretrained(folder, safe_serialization=True)
        model, read = load_for_check(str(folder))
        found = check_model(model, name=str(folder))
        assert read and {"architecture", "head", "moe_aux_loss", "lora_targets", "packing", "problems"} <= found.keys()
        assert found["head"] == probe_head(built.model).mode, model_type
        checked += 1
    assert checked >= 120
