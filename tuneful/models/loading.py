"""Loading the model (full, LoRA, QLoRA) and the attention-mask helper every loss module uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .head import HeadPlan, MODEL_FORWARD, REFUSED, probe_head, unwrap_causal_lm
from .layouts import attention_mask_for
from .lora import resolve_lora_targets
from .settings import LoraSettings, ModelSettings


def compute_dtype(setting: str, device: torch.device) -> torch.dtype:
    """fp32 on CPU unless asked (bf16 matmuls are slow on many CPUs), bf16 on GPU."""
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, setting)


def load_model(settings: ModelSettings, *, quantize_4bit: bool = False) -> nn.Module:
    """A Hugging Face causal LM, weights in fp32 (mixed precision is applied by autocast)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {
        "trust_remote_code": settings.trust_remote_code,
        **settings.loading_kwargs(),
        "dtype": torch.float32,
    }
    if quantize_4bit:
        kwargs.update(quantization_config=_bnb_config(), dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(settings.name_or_path, **kwargs)
    if settings.gradient_checkpointing:
        enable_activation_checkpointing(model)
    return model


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute activations in backward (non-reentrant). transformers 5.24 calls it
    ``activation_checkpointing_enable`` (the old ``gradient_checkpointing_enable`` warns and goes in v6);
    the versions before know only the old name."""
    options = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    model.config.use_cache = False


def _bnb_config() -> Any:
    if not torch.cuda.is_available():
        raise RuntimeError("lora.qlora=true needs a CUDA GPU; none is visible. Fix: set lora.qlora=false.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise RuntimeError("lora.qlora=true needs bitsandbytes. Fix: pip install bitsandbytes, or lora.qlora=false.")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)


def _module_name(model: nn.Module, module: nn.Module) -> str:
    return next(name.rsplit(".", 1)[-1] for name, m in model.named_modules() if m is module)


def add_token_rows(model: nn.Module, vocab_size: int, new_ids: list[int]) -> None:
    """Grow the embeddings to ``vocab_size``; each new row starts as the mean of the existing rows (input
    embeddings, and the output head when it is not tied to them)."""
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(vocab_size, mean_resizing=False)
    with torch.no_grad():
        for layer in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings())
                      if m is not None}.values():
            layer.weight[new_ids] = layer.weight[:old].mean(dim=0, keepdim=True).to(layer.weight.dtype)


def merged_adapter(adapter_dir: str | Path, base: str, *, dtype: Any = torch.float32,
                   trust_remote_code: bool = False) -> nn.Module:
    """A LoRA adapter folded into its base model. When training added tokens (the adapter's tokenizer is
    longer than the base's vocabulary), the base grows first: the adapter holds those rows."""
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    task = json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get("task_type")
    auto = AutoModelForSeq2SeqLM if task == "SEQ_2_SEQ_LM" else AutoModelForCausalLM
    model = auto.from_pretrained(base, dtype=dtype, trust_remote_code=trust_remote_code)
    vocab = len(AutoTokenizer.from_pretrained(adapter_dir))
    if vocab > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(vocab, mean_resizing=False)
    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()


def apply_lora(model: nn.Module, settings: LoraSettings, new_token_ids: list[int] | None = None, *,
               task_type: str = "CAUSAL_LM") -> nn.Module:
    """LoRA adapters; with ``new_token_ids`` (tokens added for the template) those rows of the embeddings
    and of an untied output head train too, through peft's trainable tokens, and no other row does."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if settings.qlora:
        model = prepare_model_for_kbit_training(model)

    targets, parameters = resolve_lora_targets(unwrap_causal_lm(model), list(settings.target_modules), task_type)
    tokens: Any = None
    if new_token_ids:
        tokens = {_module_name(model, model.get_input_embeddings()): list(new_token_ids)}
        if not getattr(model.config, "tie_word_embeddings", False) and model.get_output_embeddings() is not None:
            tokens[_module_name(model, model.get_output_embeddings())] = list(new_token_ids)
    init: Any = {"default": True}.get(settings.init, settings.init)
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=targets, task_type=task_type, trainable_token_indices=tokens,
                        **({"target_parameters": parameters} if parameters else {}),
                        use_dora=settings.dora, use_rslora=settings.rslora, init_lora_weights=init)
    return get_peft_model(model, config)


def save_initial_adapter(model: nn.Module, folder: Path, *, is_main: bool) -> None:
    """A PiSSA/OLoRA adapter as initialised (saved as plain LoRA), for converting the final one at save time."""
    if not is_main:
        return
    config = model.peft_config["default"]
    init, config.init_lora_weights = config.init_lora_weights, True
    model.save_pretrained(str(folder), safe_serialization=True)
    config.init_lora_weights = init


def add_neftune(model: nn.Module, alpha: float) -> Any:
    """NEFTune (Jain et al. 2023, arXiv:2310.05914): in training mode only, the input embeddings get uniform
    noise in [-m, m], m = alpha / sqrt(length x width) of the batch. Returns the hook's handle."""

    def noisy(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        magnitude = alpha / (output.size(1) * output.size(2)) ** 0.5
        return output + torch.zeros_like(output).uniform_(-magnitude, magnitude)

    return unwrap_causal_lm(model).get_input_embeddings().register_forward_hook(noisy)


class DecoderWithHead(nn.Module):
    """A causal LM wrapped for a loss: the decoder's hidden states, and the vocabulary projection applied
    only where a loss needs it. Wrapping the model (rather than calling its decoder from outside)
    keeps the forward pass inside one module, so DDP's hooks see it. Trainers subclass it with a
    ``forward`` that computes their per-micro-batch quantities.

    What the model's own forward does after its decoder is measured once (:func:`tuneful.models.head.probe_head`):
    a logit scale or soft-cap is applied by :meth:`lm_head`; a model whose head cannot be split safely runs its own
    forward (all positions reach the vocabulary: memory, never a wrong loss); the MoE load-balancing loss, where the
    config asks for it, is the model's own ``aux_loss``, collected by :meth:`pop_aux` for the training core.
    """

    def __init__(self, model: nn.Module, chunk_size: int = 0, head: HeadPlan | None = None):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        self.head = head if head is not None else probe_head(model)
        if self.head.mode == REFUSED:
            name = type(unwrap_causal_lm(model)).__name__
            raise ValueError(f"{name}: tuneful cannot train this model on exactly its own loss: {self.head.reason}. "
                             f"Fix: a causal LM whose loss is next-token cross-entropy (`tuneful model check` "
                             "shows what tuneful does with a model)")
        self._aux: list[torch.Tensor] = []

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits at the given positions: the projection and what the model applies after it (scale, soft-cap).
        Under ``model_forward`` the states already are the model's own logits."""
        if self.head.mode == MODEL_FORWARD:
            return hidden
        return self.head.transform(unwrap_causal_lm(self.model).get_output_embeddings()(hidden))

    def hidden_states(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        """What :meth:`lm_head` reads: the decoder's final hidden states (or, under ``model_forward``, the model's own
        logits), the mask in the kernel's form. The MoE loss of a training forward is kept for :meth:`pop_aux`."""
        causal = unwrap_causal_lm(self.model)
        mask = attention_mask_for(self.model, attention_mask)
        coefficient = self.head.aux_coefficient
        if self.head.mode != MODEL_FORWARD and coefficient is None:
            return causal.get_decoder()(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                                        use_cache=False).last_hidden_state
        extra: dict[str, Any] = {}
        if coefficient is not None:
            extra["output_router_logits"] = True
        captured: list[torch.Tensor] = []
        handle = None
        if self.head.mode != MODEL_FORWARD:
            if self.head.keeps_logits:
                extra["logits_to_keep"] = 1  # the states come from the decoder; one position reaches the head

            def capture(module: nn.Module, args: Any, output: Any) -> None:
                captured.append(output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0])

            handle = causal.get_decoder().register_forward_hook(capture)  # for this forward only
        try:
            output = causal(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False,
                            **extra)
        finally:
            if handle is not None:
                handle.remove()
        aux = getattr(output, "aux_loss", None)
        if coefficient is not None and aux is not None and torch.is_grad_enabled():
            self._aux.append(coefficient * aux.float())
        if self.head.mode == MODEL_FORWARD:
            return output.logits
        return captured[-1]

    def pop_aux(self) -> torch.Tensor | None:
        """The summed ``coefficient x aux_loss`` of the training forwards since the last call (None: no MoE loss)."""
        if not self._aux:
            return None
        total, self._aux = torch.stack(self._aux).sum(), []
        return total
