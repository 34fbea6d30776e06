"""``tuneful export --gguf`` against llama.cpp itself, and the Ollama Modelfile's template.

The llama.cpp tests need what ``scripts/setup-gguf`` installs (llama.cpp's converter and llama-cpp-python,
compiled from the same llama.cpp release); ``scripts/test`` runs it, so CI always has them. Elsewhere they
skip with that reason. A LoRA adapter trained by ``tuneful sft`` on the sandbox base model (which has a
tokenizer trained from scratch, unknown to llama.cpp's converter) is exported, merged, to f16 and q8_0:
llama.cpp must tokenize prompts as the tokenizer does, give first-token logits within a stated tolerance of
transformers', and — through the template embedded in the GGUF, not one we pass — reply as tuneful's chat
does with greedy decoding.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tuneful.export.ollama import derive_layout, go_template, modelfile
from tuneful.templates.render import render

REPO = Path(__file__).resolve().parents[1]
TUNEFUL = [sys.executable, "-m", "tuneful.cli.main"]
F16_LOGIT_TOLERANCE = 0.05  # max |logit difference| over the vocabulary, f16 weights vs fp32 transformers


def _llama_cpp_ready() -> str | None:
    """Why the llama.cpp tests cannot run here (None: they can)."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed"
    from tuneful.export.gguf import ExportError, find_converter

    try:
        find_converter()
    except ExportError as exc:
        return str(exc)
    return None


_WHY_NOT = _llama_cpp_ready()
if _WHY_NOT and os.environ.get("CI"):
    raise RuntimeError(f"CI must run the GGUF tests (scripts/test runs scripts/setup-gguf): {_WHY_NOT}")
needs_llama_cpp = pytest.mark.skipif(_WHY_NOT is not None, reason=f"run `bash scripts/setup-gguf` first: {_WHY_NOT}")


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([*TUNEFUL, *args], capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def tuned_adapter(tmp_path_factory) -> tuple[Path, list[str]]:
    """A LoRA adapter on the sandbox base, trained by ``tuneful sft`` on sandbox questions (it learns to answer
    and close its turn), and four of its training questions."""
    from tuneful.sandbox.base import load_recipe, shipped_base_dir
    from tuneful.sandbox.tasks import sft_instances
    from tuneful.sandbox.world import make_world

    base = shipped_base_dir()
    recipe = load_recipe(base)
    world = make_world(recipe.seed, recipe.countries)
    root = tmp_path_factory.mktemp("gguf")
    data = root / "train.jsonl"
    instances = sft_instances(world, 6, seed=0)
    rows = [{"messages": [*inst.messages, {"role": "assistant", "content": inst.answer}]} for inst in instances]
    data.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    _cli("sft", f"model.name_or_path={base}", f"data.train={data}", "data.template=tuneful", "data.eval_fraction=0",
         "lora.enabled=true", "lora.r=8", "train.max_steps=40", "train.micro_batch_size=8", "train.lr=3e-3",
         f"train.output_dir={root / 'run'}", "train.save_every=0", "train.report_to=")
    questions = [inst.messages[-1]["content"] for inst in instances if len(inst.messages) == 1]
    return root / "run" / "model", questions[::7][:4]


def _export(model: Path, out: Path, quant: str) -> dict:
    result = _cli("export", str(model), "--gguf", str(out), "--quant", quant)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary) >= {"gguf", "bytes", "quant", "chat_template_embedded"}
    assert summary["bytes"] == out.stat().st_size and summary["quant"] == quant
    assert summary["chat_template_embedded"] is True
    assert (out.parent / "Modelfile").is_file()
    return summary


def _chat_replies(model: Path, questions: list[str], folder: Path) -> list[str]:
    """Greedy replies of ``tuneful chat`` (stdin not a terminal: a line a turn), each in a fresh conversation,
    read back from the conversations it saves (``/save``)."""
    lines = "".join(f"{question}\n/save {folder / f'chat{i}.json'}\n/reset\n" for i, question in enumerate(questions))
    result = subprocess.run([*TUNEFUL, "chat", str(model), "--max-new-tokens", "24", "--device", "cpu"], input=lines,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    saved = [json.loads((folder / f"chat{i}.json").read_text())["messages"] for i in range(len(questions))]
    assert all(messages[-1]["role"] == "assistant" for messages in saved)
    return [messages[-1]["content"] for messages in saved]


def _llama(path: str, **options):
    """llama.cpp's model with its CPU weight repacking off (``use_extra_bufts``). On a Xeon with AMX tiles in this
    sandbox, llama.cpp 0.3.36 built natively repacks q8_0 weights for AMX and segfaults in the first decode
    (measured: f16 runs, q8_0 crashes, q8_0 without repacking runs and agrees). Repacking changes the weights'
    layout, not the numbers these tests compare."""
    import llama_cpp
    import llama_cpp.llama_cpp as native

    defaults = native.llama_model_default_params

    def without_repacking():
        params = defaults()
        params.use_extra_bufts = False
        return params

    native.llama_model_default_params = without_repacking
    try:
        return llama_cpp.Llama(path, **options)
    finally:
        native.llama_model_default_params = defaults


@needs_llama_cpp
def test_llama_cpp_replies_as_tuneful_chat_does(tuned_adapter, tmp_path: Path):
    import numpy as np
    import torch

    from tuneful.infer.chat_model import load_chat_model

    adapter, questions = tuned_adapter
    summary = _export(adapter, tmp_path / "tuned-f16.gguf", "f16")
    assert summary["pre_tokenizer"] == "gpt-2"  # the sandbox tokenizer is unknown to the converter by hash
    q8 = _export(adapter, tmp_path / "q8" / "tuned-q8_0.gguf", "q8_0")
    assert q8["bytes"] < summary["bytes"]

    chat = load_chat_model(str(adapter), device="cpu")
    prompts = [[{"role": "user", "content": question}] for question in questions]
    ours = _chat_replies(adapter, questions, tmp_path)
    assert sum(bool(reply) for reply in ours) >= 3, ours

    agreement = {}
    for name in ("tuned-f16.gguf", "q8/tuned-q8_0.gguf"):
        llm = _llama(str(tmp_path / name), n_ctx=512, logits_all=True, verbose=False, seed=0)
        try:
            same_reply = 0
            for messages, mine in zip(prompts, ours):
                text = chat.prompt_text(messages)
                ids = chat.encode_prompt(text)
                assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids  # same tokenization
                llm.reset()
                llm.eval(ids)
                theirs = np.array(llm.scores[len(ids) - 1])
                with torch.no_grad():
                    reference = chat.model(torch.tensor([ids])).logits[0, -1].numpy()
                assert theirs.argmax() == reference.argmax()
                if name.endswith("f16.gguf"):
                    assert np.abs(theirs - reference).max() <= F16_LOGIT_TOLERANCE
                # the template llama.cpp applies here is the one embedded in the GGUF
                reply = llm.create_chat_completion(messages, temperature=0.0, max_tokens=24)["choices"][0]
                same_reply += reply["message"]["content"] == mine
            agreement[name] = same_reply / len(prompts)
        finally:
            llm.close()
    print(f"greedy replies equal to tuneful chat's: {agreement}")
    assert agreement["tuned-f16.gguf"] == 1.0
    assert agreement["q8/tuned-q8_0.gguf"] >= 0.5


@needs_llama_cpp
def test_k_quants_go_through_llama_cpps_quantizer(tmp_path: Path):
    summary = _export(Path("sandbox"), tmp_path / "base-q4_k_m.gguf", "q4_k_m")
    from tuneful.export.gguf import read_metadata

    # llama.cpp's file type 15 is Q4_K_M; the template survives quantization
    assert read_metadata(tmp_path / "base-q4_k_m.gguf", "general.file_type")["general.file_type"] == 15
    llm = _llama(summary["gguf"], n_ctx=128, verbose=False)
    try:
        assert llm.tokenize(b"<|user|>Hello", add_bos=False, special=True)[0] == 3
    finally:
        llm.close()


def test_a_missing_converter_names_the_setup_script(tmp_path: Path, monkeypatch):
    from tuneful.export.gguf import ExportError, find_converter

    monkeypatch.setenv("TUNEFUL_LLAMA_CPP", str(tmp_path))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    with pytest.raises(ExportError, match=r"scripts/setup-gguf.*--llama-cpp DIR.*TUNEFUL_LLAMA_CPP"):
        find_converter()
    (tmp_path / "convert_hf_to_gguf.py").write_text("")
    assert find_converter() == tmp_path / "convert_hf_to_gguf.py"


def test_only_gpt2_style_byte_level_tokenizers_get_the_gpt2_pre_tokenizer(fixtures):
    from transformers import AutoTokenizer

    from tuneful.export.gguf import gpt2_byte_level
    from tuneful.tokenization.masking import load_tokenizer
    from tuneful.sandbox.base import shipped_base_dir

    assert gpt2_byte_level(load_tokenizer(str(shipped_base_dir())))
    assert gpt2_byte_level(AutoTokenizer.from_pretrained(fixtures / "tokenizers" / "gpt-2"))
    # Llama-3 and Qwen2.5 split digits and words by their own regex; Llama-2 is SentencePiece
    for name in ("llama-3", "qwen2.5", "llama-2"):
        assert not gpt2_byte_level(AutoTokenizer.from_pretrained(fixtures / "tokenizers" / name)), name


# --- the Modelfile's Go template -------------------------------------------------------------------

def _shipped_and_fixture_templates(fixtures: Path | None) -> dict[str, str]:
    templates = {p.stem: p.read_text() for p in (REPO / "tuneful" / "templates" / "builtin").glob("*.jinja")}
    if fixtures is not None:
        for path in sorted((fixtures / "chat_templates").glob("*.jinja")):
            templates[f"fixture:{path.stem}"] = path.read_text()
    return templates


CONVERSATIONS = [
    [{"role": "user", "content": "Hi there."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi."}],
    [{"role": "user", "content": "One?"}, {"role": "assistant", "content": "Two."}, {"role": "user", "content": "Three?"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "a\nb"}, {"role": "assistant", "content": "c \"q\""},
     {"role": "user", "content": "d"}, {"role": "assistant", "content": "e"}, {"role": "user", "content": "f"}],
]
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}


def test_role_layouts_replay_the_jinja_rendering_or_are_refused():
    import conftest

    templates = _shipped_and_fixture_templates(conftest.FIXTURES)
    derived = {}
    for name, source in templates.items():
        layout = derive_layout(source, SPECIAL)
        derived[name] = layout is not None
        if layout is None:
            continue
        for messages in CONVERSATIONS:
            assert layout.replay(messages) == render(messages, source, add_generation_prompt=True, special_tokens=SPECIAL)
    # the common fixed-wrapping families get a TEMPLATE; llama-2 (system inside the first [INST]) does not
    assert derived["chatml"] and derived["llama-3"] and derived["tuneful"] and derived["zephyr"] and derived["phi-3"]
    assert not derived["llama-2"]


def test_the_modelfile_names_the_file_stops_and_template():
    source = (REPO / "tuneful" / "templates" / "builtin" / "chatml.jinja").read_text()
    text, has_template = modelfile("m.gguf", source, SPECIAL, ["<|im_end|>"])
    assert has_template and "FROM ./m.gguf\n" in text and 'PARAMETER stop "<|im_end|>"' in text
    assert '{{ "<|im_end|>\\n<|im_start|>assistant\\n" }}' in text
    llama2 = (REPO / "tuneful" / "templates" / "builtin" / "llama-2.jinja").read_text()
    text, has_template = modelfile("m.gguf", llama2, SPECIAL, ["</s>"])
    assert not has_template and "TEMPLATE" not in text.replace("# No TEMPLATE", "")


GO_RENDERER = """package main
import ("encoding/json"; "os"; "text/template")
type Message struct { Role string; Content string }
func main() {
  var input struct { Template string; Messages []Message }
  json.NewDecoder(os.Stdin).Decode(&input)
  t := template.Must(template.New("t").Parse(input.Template))
  if err := t.Execute(os.Stdout, map[string]any{"Messages": input.Messages}); err != nil { panic(err) }
}
"""


@pytest.mark.skipif(shutil.which("go") is None and not os.environ.get("CI"), reason="Go is not installed (apt-get install golang-go)")
def test_gos_text_template_renders_the_modelfile_template_as_jinja_does(tmp_path: Path):
    """Ollama executes TEMPLATE with Go's text/template: run the generated one there, on every conversation."""
    program = tmp_path / "render.go"
    program.write_text(GO_RENDERER.replace("map[string]any", "map[string]interface{}"))
    binary = tmp_path / "render"
    subprocess.run(["go", "build", "-o", str(binary), str(program)], check=True, cwd=tmp_path,
                   env={**os.environ, "GOCACHE": str(tmp_path / "cache"), "GO111MODULE": "off", "HOME": str(tmp_path)})
    for name in ("chatml", "llama-3", "tuneful", "zephyr", "phi-3", "alpaca", "mistral", "gemma"):
        source = (REPO / "tuneful" / "templates" / "builtin" / f"{name}.jinja").read_text()
        layout = derive_layout(source, SPECIAL)
        for messages in CONVERSATIONS:
            result = subprocess.run([str(binary)], input=json.dumps({"Template": go_template(layout), "Messages": messages}),
                                    capture_output=True, text=True, check=True)
            assert result.stdout == render(messages, source, add_generation_prompt=True, special_tokens=SPECIAL), name
