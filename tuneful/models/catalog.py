"""Tiny random models of every causal-LM architecture transformers ships, for the architecture matrix.

Boundary: transformers' auto mappings in, small configs and models out; nothing here trains. The test matrix
(``tests/test_architectures.py``), ``tuneful model matrix`` and the docs' support table all walk
:func:`architectures`, so what is built and what is skipped (with its reason) is one list.

Each config is the architecture's own default shrunk by one generic rule (hidden 32, 2 layers, 4 heads, 4 experts,
a 256-token vocabulary, an 8-token sliding window so windows bind in short tests) plus the few fields some
families need to stay consistent (MLA ranks and head widths, Mamba state sizes, hybrid and per-layer patterns,
GPT-Neo's attention pattern); a multimodal wrapper's sub-configs (text, vision, audio) are shrunk the same way.
What cannot be built on a CPU in a few seconds this way is skipped with the reason.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import torch

VOCAB = 256
MAX_PARAMETERS = 3_000_000  # a "tiny" model: above this the shrink missed a sub-config (vision towers, audio)

SIZES = {
    "hidden_size": 32, "d_model": 32, "n_embd": 32, "n_embed": 32, "embed_dim": 32, "model_dim": 32,
    "num_hidden_layers": 2, "n_layer": 2, "n_layers": 2, "num_layers": 2,
    "num_attention_heads": 4, "n_head": 4, "n_heads": 4, "num_heads": 4,
    "num_key_value_heads": 2, "n_kv_heads": 2, "num_kv_heads": 2, "head_dim": 8, "kv_channels": 8,
    "intermediate_size": 64, "ffn_hidden_size": 64, "n_inner": 64, "ffn_dim": 64, "decoder_ffn_dim": 64,
    "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32, "expert_intermediate_size": 32,
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "moe_num_experts": 4,
    "num_experts_per_tok": 2, "moe_topk": 2, "top_k": 2, "moe_k": 2, "n_group": 1, "topk_group": 1,
    "vocab_size": VOCAB, "max_position_embeddings": 256, "n_positions": 256,
    "vocab_size_per_layer_input": VOCAB, "hidden_size_per_layer_input": 8,  # Gemma 3n / 4: per-layer embeddings
    "sliding_window": 8, "attention_window_size": 8,
    # multi-head latent attention (DeepSeek-V2/V3 style)
    "q_lora_rank": 16, "kv_lora_rank": 16, "qk_rope_head_dim": 4, "qk_nope_head_dim": 4, "v_head_dim": 8,
    "rotary_dim": 4,
    # Mamba / SSM / convolution layers
    "state_size": 8, "mamba_d_state": 8, "ssm_state_size": 8, "mamba_d_conv": 4, "conv_kernel": 4, "mamba_expand": 2,
    "expand": 2, "mamba_n_heads": 4, "mamba_d_head": 16, "mamba_n_groups": 1, "n_groups": 1, "time_step_rank": 4,
    "mamba_d_ssm": 64, "mamba_chunk_size": 8, "chunk_size": 8,
    "linear_num_value_heads": 4, "linear_num_key_heads": 2, "linear_key_head_dim": 8, "linear_value_head_dim": 8,
    "decoder_sparse_step": 1, "first_k_dense_replace": 1,
}
HYBRID_PERIODS = {"attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 1}


@dataclass
class Built:
    model_type: str
    model: Any = None  # the tiny model, or None when skipped
    skipped: str = ""  # why it was not built


def causal_model_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _set(config: Any, name: str, value: Any) -> None:
    try:
        setattr(config, name, value)
    except (AttributeError, TypeError, ValueError):  # a derived property, or a validated field
        pass


def _shrink(config: Any) -> Any:
    values = config.to_dict()
    routed = any(isinstance(values.get(name), int) for name in ("num_experts", "num_local_experts", "n_routed_experts"))
    for name, value in SIZES.items():
        if name in values and isinstance(values[name], int) and not isinstance(values[name], bool):
            _set(config, name, value)
        elif name == "num_experts_per_tok" and routed and name in values and values[name] is None:
            _set(config, name, value)  # DeepSeek-V2 leaves it unset (None) by default: its router needs a number
    for name, value in values.items():  # no dropout: tests compare forwards exactly, in train mode too
        if isinstance(value, float) and ("dropout" in name or "pdrop" in name):
            _set(config, name, 0.0)
    for name, value in HYBRID_PERIODS.items():
        if name in values:
            _set(config, name, value)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value >= VOCAB:
            _set(config, name, 1)
        elif isinstance(value, list):
            _set(config, name, [v if v < VOCAB else 1 for v in value])
    if "kv_lora_rank" in values and "num_key_value_heads" in values:  # latent attention: one KV head per query head
        _set(config, "num_key_value_heads", SIZES["num_attention_heads"])
    if "qk_rope_head_dim" in values:  # latent attention derives these at init: the rotary part and the query's width
        if "head_dim" in values:
            _set(config, "head_dim", SIZES["qk_rope_head_dim"])
        if "qk_head_dim" in values:
            _set(config, "qk_head_dim", SIZES["qk_rope_head_dim"] + SIZES["qk_nope_head_dim"])
    if isinstance(values.get("attention_types"), list) and isinstance(values.get("attention_layers"), list):
        kinds = list(dict.fromkeys(values["attention_layers"]))  # GPT-Neo: [[kinds, repeats]] must add up to layers
        _set(config, "attention_types", [[kinds, 1]])
        _set(config, "attention_layers", kinds)
        _set(config, "num_layers", len(kinds))
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and layer_types:
        kinds = list(dict.fromkeys(layer_types))  # keep one layer of each kind the model mixes, at least two layers
        _set(config, "layer_types", (kinds * 2)[: max(2, len(kinds))])
        _set(config, "num_hidden_layers", len(getattr(config, "layer_types")))
        overrides = values.get("per_layer_config")
        if isinstance(overrides, dict) and overrides:  # Gemma 4: wider heads on its full-attention layers
            kind_of = {layer_types[int(k)]: v for k, v in overrides.items() if int(k) < len(layer_types)}
            _set(config, "per_layer_config", {
                f"{i:02d}": {name: 2 * SIZES[name] if name in SIZES and isinstance(v, int) else v
                             for name, v in kind_of[kind].items()}
                for i, kind in enumerate(getattr(config, "layer_types")) if kind in kind_of})
    if isinstance(getattr(config, "full_attn_idxs", None), list):  # LFM2: a convolution layer, then attention
        _set(config, "full_attn_idxs", [1])
        _set(config, "layer_types", ["conv", "full_attention"])
    layers = getattr(config, "num_hidden_layers", None)
    original = values.get("num_hidden_layers")
    for name, value in values.items():  # per-layer lists besides layer_types (mlp_layer_types, ...): cut to length
        if (isinstance(value, list) and isinstance(original, int) and len(value) == original and layers
                and name not in ("layer_types", "layers_block_type") and len(value) > layers):
            _set(config, name, value[:layers])
    if getattr(config, "layers_block_type", None) and isinstance(values.get("layers_block_type"), list):
        kinds = list(dict.fromkeys(values["layers_block_type"]))
        _set(config, "layers_block_type", (kinds * 2)[: max(2, len(kinds))])
    return config


def tiny_config(model_type: str) -> Any:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config = CONFIG_MAPPING[model_type]()
    for name in getattr(config, "sub_configs", None) or {}:  # a multimodal wrapper: its text, vision and audio parts
        if getattr(config, name, None) is not None:
            _shrink(getattr(config, name))
    return _shrink(config)


def build(model_type: str, *, aux_loss: bool = True, seed: int = 0) -> Built:
    """The tiny model of ``model_type`` in fp32 (MoE models with their router loss on), or why it was skipped."""
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        previous = logging.getLogger("transformers").level
        logging.getLogger("transformers").setLevel(logging.ERROR)
        try:
            config = tiny_config(model_type)
            if aux_loss and hasattr(config, "output_router_logits"):
                config.output_router_logits = True
            if getattr(config, "is_encoder_decoder", False):
                return Built(model_type, skipped="encoder-decoder (tuneful trains these as seq2seq: tested apart)")
            with torch.device("meta"):
                meta = AutoModelForCausalLM.from_config(config)
            size = sum(p.numel() for p in meta.parameters())
            if size > MAX_PARAMETERS:
                return Built(model_type, skipped=f"the generic shrink leaves {size / 1e6:.0f}M parameters "
                                                 "(a sub-config it does not reach: vision, audio or a fixed size)")
            type(config).from_dict(config.to_dict())  # a saved folder must load again (tuneful model check)
            if type(meta.config) is not type(config):  # a wrapper whose causal LM keeps only a part of its config
                try:
                    with torch.device("meta"):
                        AutoModelForCausalLM.from_config(type(meta.config).from_dict(meta.config.to_dict()))
                except ValueError:
                    return Built(model_type, skipped=f"its causal LM saves a {type(meta.config).__name__}, which "
                                                     "AutoModelForCausalLM does not load back (tuneful model check)")
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            ids = torch.randint(3, VOCAB, (1, 12))
            with torch.no_grad():
                model(input_ids=ids, use_cache=False)
            return Built(model_type, model.eval())
        except Exception as error:  # every failure becomes a named skip in the table
            message = " ".join(str(error).split())[:140]
            return Built(model_type, skipped=f"does not build or run from the shrunk default config: "
                                             f"{type(error).__name__}: {message}")
        finally:
            logging.getLogger("transformers").setLevel(previous)
