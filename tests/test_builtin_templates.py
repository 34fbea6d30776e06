"""Built-in templates: pinned renderings, exact masks, and training/inference consistency."""

from __future__ import annotations

import pytest

from tuneful.tokenization.masking import ConversationTokenizer
from tuneful.samples import train_tokenizer
from tuneful.templates.registry import builtin, builtin_names, resolve
from tuneful.templates.render import render

SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<start_of_turn>", "<end_of_turn>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
EOT = {"chatml": "<|im_end|>", "llama-3": "<|eot_id|>", "llama-2": " </s>", "mistral": "</s>", "zephyr": "</s>",
       "gemma": "<end_of_turn>", "phi-3": "<|end|>", "alpaca": "</s>", "tuneful": "<|end|>"}
CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another?"},
    {"role": "assistant", "content": "Green."},
]
TOKENS = {"bos_token": "<s>", "eos_token": "</s>"}
PINNED = {
    "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\nBlue.<|im_end|>\n<|im_start|>user\nAnother?<|im_end|>\n<|im_start|>assistant\nGreen.<|im_end|>\n",
    "llama-3": "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nName a colour.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nBlue.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nAnother?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nGreen.<|eot_id|>",
    "llama-2": "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nName a colour. [/INST] Blue. </s><s>[INST] Another? [/INST] Green. </s>",
    "mistral": "<s>[INST] Be brief.\n\nName a colour. [/INST]Blue.</s>[INST] Another? [/INST]Green.</s>",
    "zephyr": "<|system|>\nBe brief.</s>\n<|user|>\nName a colour.</s>\n<|assistant|>\nBlue.</s>\n<|user|>\nAnother?</s>\n<|assistant|>\nGreen.</s>\n",
    "gemma": "<s><start_of_turn>user\nBe brief.\n\nName a colour.<end_of_turn>\n<start_of_turn>model\nBlue.<end_of_turn>\n<start_of_turn>user\nAnother?<end_of_turn>\n<start_of_turn>model\nGreen.<end_of_turn>\n",
    "phi-3": "<|system|>\nBe brief.<|end|>\n<|user|>\nName a colour.<|end|>\n<|assistant|>\nBlue.<|end|>\n<|user|>\nAnother?<|end|>\n<|assistant|>\nGreen.<|end|>\n",
    "alpaca": "<s>Be brief.\n\n### Instruction:\nName a colour.\n\n### Response:\nBlue.</s>\n\n### Instruction:\nAnother?\n\n### Response:\nGreen.</s>\n\n",
    "tuneful": "<s><|system|>Be brief.<|end|><|user|>Name a colour.<|end|><|assistant|>Blue.<|end|><|user|>Another?<|end|><|assistant|>Green.<|end|>",
}


@pytest.fixture(scope="module")
def tok():
    texts = [m["content"] for m in CONV] * 3 + ["### Instruction", "### Response", "[INST] [/INST] <<SYS>>"]
    return train_tokenizer(texts, special_tokens=SPECIALS, eos_token="</s>", pad_token="<s>")


def test_all_required_builtins_exist():
    assert set(builtin_names()) == set(PINNED)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_pinned_rendering(name):
    assert render(CONV, builtin(name).source, special_tokens=TOKENS) == PINNED[name]


@pytest.mark.parametrize("name", sorted(PINNED))
def test_builtin_masks_are_replies_plus_end_of_turn(name, tok):
    tok.bos_token = "<s>"
    example = ConversationTokenizer(tok, builtin(name))(CONV)
    runs, current = [], []
    for token, m in zip(example.input_ids, example.train_mask):
        if m:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    decoded = [tok.decode(r) for r in runs]
    eot = EOT[name]
    assert [d.strip() for d in decoded] == [f"Blue.{eot}", f"Green.{eot}"]
    assert all(t.prompt_matches_inference for t in example.rendered.turns)
    assert example.boundary_merges == 0


@pytest.mark.parametrize("name", sorted(PINNED))
def test_generation_prompt_is_the_training_context(name):
    """What inference feeds (add_generation_prompt) is exactly the text before the reply in training."""
    prompt = render(CONV[:3 - 1], builtin(name).source, add_generation_prompt=True, special_tokens=TOKENS)
    assert PINNED[name].startswith(prompt)
    rest = PINNED[name][len(prompt):]
    assert rest.lstrip(" ").startswith("Blue.")


def test_resolve_by_file_and_unknown_name(tmp_path):
    path = tmp_path / "mine.jinja"
    path.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert resolve(str(path)).origin == f"file:{path}"
    with pytest.raises(ValueError, match="built-ins are: alpaca, chatml"):
        resolve("no-such-template")
    with pytest.raises(ValueError, match="no template given"):
        resolve(None)
