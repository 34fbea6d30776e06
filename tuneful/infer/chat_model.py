"""A model ready to chat: weights, tokenizer, *the* chat template and the tokens that end a turn.

Used by ``tuneful chat``, ``tuneful serve`` and ``tuneful eval`` so that all three render prompts
the same way training did. The template is the one saved with the model (tuneful embeds the
training template in the tokenizer it writes); choosing another one is allowed but reported,
because a template mismatch at inference is one of the field's classic silent failures.

``MODEL`` may be a Hugging Face folder or hub id, a PEFT adapter folder (merged into its base for
inference), or ``sandbox`` for the shipped sandbox base model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..data.tool_parsers import parser_for_template
from ..models.loading import merged_adapter
from ..models.seq2seq import is_encoder_decoder
from ..samples import sandbox_base_dir
from ..templates.registry import ChatTemplate, resolve
from ..templates.render import render
from ..tokenization.masking import (ConversationTokenizer, end_of_turn_ids, load_tokenizer, pad_id, special_tokens_of,
                                    stop_token_ids)
from ..tokenization.seq2seq import encode_source


SANDBOX = "sandbox"
SANDBOX_TEMPLATE = "tuneful"  # the template the demo trains the sandbox model with
_PROBE = [{"role": "user", "content": "Hello."}, {"role": "assistant", "content": "Hi."}]


@dataclass
class ChatModel:
    name: str
    model: Any
    tokenizer: Any
    template: ChatTemplate
    end_of_turn_ids: list[int]
    stop_ids: list[int]
    context_length: int
    default_temperature: float = 0.0  # from generation_config: sampling only if the model's config asks for it
    notes: list[str] = field(default_factory=list)  # e.g. "template differs from the trained one"
    tool_parser: str | None = None  # the call syntax the template prints (tuneful.data.tool_parsers), None: none

    def prompt_text(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None) -> str:
        """The inference prompt, rendered by the same code as training (tools passed as the template's ``tools``)."""
        return render(messages, self.template.source, add_generation_prompt=True,
                      special_tokens=special_tokens_of(self.tokenizer), tools=tools)

    def prompt_ids(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None) -> list[int]:
        return self.encode_prompt(self.prompt_text(messages, tools))

    @property
    def encoder_decoder(self) -> bool:
        # (a ChatModel may be a prompt renderer without weights: GRPO's prompts)
        return bool(getattr(getattr(self.model, "config", None), "is_encoder_decoder", False))

    def encode_prompt(self, text: str) -> list[int]:
        if self.encoder_decoder:  # the encoder's input, encoded as SFT encoded it
            return encode_source(self.tokenizer, text)
        # The template writes BOS itself when the model wants one; adding it again would double it.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @property
    def pad_id(self) -> int:
        """Padding for batched inference (masked out by attention; any id works when the tokenizer has none)."""
        return pad_id(self.tokenizer, self.stop_ids)

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device


def _device_and_dtype(device: str) -> tuple[Any, Any]:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    # bf16 generation is several times slower than fp32 on CPUs; on GPUs bf16 is the norm.
    return torch.device(device), (torch.bfloat16 if device.startswith("cuda") else torch.float32)


def is_adapter_folder(spec: str) -> bool:
    return (Path(spec) / "adapter_config.json").is_file()


def _load_weights(folder: str, trust_remote_code: bool, device: Any, dtype: Any) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    if is_adapter_folder(folder):
        base = json.loads((Path(folder) / "adapter_config.json").read_text())["base_model_name_or_path"]
        if not base:
            raise ValueError(f"{folder}/adapter_config.json names no base model; merge it first with tuneful merge --base")
        model = merged_adapter(folder, base, dtype=dtype, trust_remote_code=trust_remote_code)  # no adapter cost per token
    else:
        auto = AutoModelForSeq2SeqLM if is_encoder_decoder(folder, trust_remote_code) else AutoModelForCausalLM
        model = auto.from_pretrained(folder, dtype=dtype, trust_remote_code=trust_remote_code)
    return model.to(device).eval()


def _trained_summary(folder: str) -> dict:
    summary = Path(folder) / "tuneful.json"
    return json.loads(summary.read_text()) if summary.is_file() else {}


def prompt_renderer(tokenizer: Any, template: ChatTemplate, name: str = "renderer") -> ChatModel:
    """A ChatModel without weights: inference prompts (text and ids) rendered exactly as a loaded model renders
    them, for code that holds the model elsewhere (GRPO's policy, the sandbox's evaluation)."""

    eot = template_end_of_turn_ids(tokenizer, template)
    return ChatModel(name, None, tokenizer, template, eot, stop_token_ids(tokenizer, eot), 0)


def template_end_of_turn_ids(tokenizer: Any, template: ChatTemplate) -> list[int]:
    """Token ids the template closes an assistant turn with, found by rendering a probe conversation."""
    return end_of_turn_ids(tokenizer, ConversationTokenizer(tokenizer, template).render(_PROBE).turns)


def _generation_eos(model: Any) -> set[int]:
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None) if config is not None else None
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, (list, tuple)) else {eos}


def model_folder(spec: str) -> str:
    """The folder MODEL names (``sandbox``: the shipped sandbox base model)."""
    if spec == SANDBOX:
        return str(sandbox_base_dir())
    return spec


def choose_template(spec: str, folder: str, tokenizer: Any, template: str | None) -> tuple[ChatTemplate, str | None, list[str]]:
    """The template MODEL is used with: the one saved with it unless ``template`` names another (which
    is reported); returns it with the tool-call syntax it prints and the notes for the user."""
    notes = []
    own = getattr(tokenizer, "chat_template", None)
    if template is None and not own and spec == SANDBOX:
        template = SANDBOX_TEMPLATE
    chosen = resolve(template, tokenizer, f"{spec}'s tokenizer")
    summary = _trained_summary(folder)
    trained = summary.get("template")
    changed = own and template is not None and chosen.source != (own if isinstance(own, str) else own.get("default"))
    if changed:
        notes.append(f"template {chosen.origin} differs from the one saved with the model"
                     + (f" (trained with {trained})" if trained else ""))
    # the syntax recorded at training time, unless another template was chosen: then the template's own
    tool_parser = summary.get("tool_parser") if "tool_parser" in summary and not changed else \
        parser_for_template(chosen.source)
    return chosen, tool_parser, notes


def load_chat_model(spec: str, *, template: str | None = None, trust_remote_code: bool = False,
                    device: str = "auto") -> ChatModel:
    """Load MODEL for inference with the template it was trained with (or ``template`` if given)."""
    folder = model_folder(spec)
    torch_device, dtype = _device_and_dtype(device)
    tokenizer = load_tokenizer(folder, trust_remote_code=trust_remote_code)
    model = _load_weights(folder, trust_remote_code, torch_device, dtype)
    chosen, tool_parser, notes = choose_template(spec, folder, tokenizer, template)
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    # an encoder-decoder's reply is the whole decoder output: EOS ends it (the template renders only its input)
    eot = [tokenizer.eos_token_id] if encoder_decoder else template_end_of_turn_ids(tokenizer, chosen)
    stops = set(eot) | _generation_eos(model)
    if tokenizer.eos_token_id is not None:
        stops.add(tokenizer.eos_token_id)
    if not eot:
        notes.append(f"template {chosen.origin} closes assistant turns with no single special token; "
                     "generation stops only at EOS or the length limit")
    context = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
    config = getattr(model, "generation_config", None)
    temperature = float(config.temperature or 1.0) if config is not None and config.do_sample else 0.0
    return ChatModel(spec, model, tokenizer, chosen, eot, sorted(stops), context, temperature, notes, tool_parser)


class TextDeltas:
    """Turns a stream of token ids into text pieces, never splitting a multi-byte character."""

    def __init__(self, tokenizer: Any, *, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens  # False where a call marker may be a special token
        self.ids: list[int] = []
        self.sent = ""

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip_special_tokens)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta
