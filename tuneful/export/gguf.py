"""GGUF export for llama.cpp, Ollama and LM Studio: glue around llama.cpp's own converter and quantizer.

Boundary: this module writes no tensor and parses no GGUF layout itself. It stages a plain transformers
folder (a LoRA adapter merged; the model's chat template, the one tuneful trained and serves with, put
in the tokenizer files), runs llama.cpp's ``convert_hf_to_gguf.py`` on it (it writes f32/f16/bf16/q8_0
itself), quantizes further (q4_k_m ...) with llama.cpp's ``llama_model_quantize`` through
``llama-cpp-python``, reads the metadata back with the ``gguf`` package to confirm the template is
embedded, and writes an Ollama ``Modelfile`` next to the file (``ollama.py``).

Where the converter comes from: llama.cpp does not publish it on PyPI (``llama-cpp-python``'s wheel
leaves it out), so ``scripts/setup-gguf`` takes it from the llama.cpp that ``llama-cpp-python``'s source
release vendors, the same llama.cpp it builds, into ``<venv>/share/llama.cpp``. A llama.cpp checkout
works as well (``--llama-cpp DIR`` or ``TUNEFUL_LLAMA_CPP``).

One addition to the converter's behaviour, and why: it recognises a BPE tokenizer's pre-tokenizer by
hashing how the tokenizer encodes a probe text, so a tokenizer trained from scratch (the sandbox's) is
unknown to it even when it splits text exactly like GPT-2. When the converter refuses for that reason
and the tokenizer's own settings are GPT-2's byte-level split (checked in ``tokenizer.json``), the
conversion is re-run telling the converter the name ``gpt-2`` (``convert_runner.py``), and the summary
says so; the tests then compare llama.cpp's tokenization with the tokenizer's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..infer.chat_model import choose_template, is_adapter_folder, model_folder, template_end_of_turn_ids
from ..models.loading import merged_adapter
from ..tokenization.masking import load_tokenizer, special_tokens_of
from .ollama import modelfile


LLAMA_CPP_ENV = "TUNEFUL_LLAMA_CPP"
CONVERTER = "convert_hf_to_gguf.py"
# written by the converter itself
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
# quantized from an f16 file by llama.cpp's quantizer: the name → llama_cpp's LLAMA_FTYPE_* constant
QUANTIZER_TYPES = {"q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
                   "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K"}
QUANTS = CONVERTER_TYPES + tuple(QUANTIZER_TYPES)
_UNKNOWN_PRE_TOKENIZER = "BPE pre-tokenizer was not recognized"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                    "chat_template.json", "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model")


class ExportError(RuntimeError):
    """An export that cannot be done, with what to do about it."""


@dataclass
class GGUFExport:
    gguf: Path
    quant: str
    chat_template_embedded: bool
    modelfile: Path
    modelfile_template: bool  # the Modelfile carries the template as a Go TEMPLATE
    pre_tokenizer: str | None = None  # named by tuneful because the converter did not recognise the tokenizer
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The last-line JSON of ``tuneful export``."""
        return {"gguf": str(self.gguf), "bytes": self.gguf.stat().st_size, "quant": self.quant,
                "chat_template_embedded": self.chat_template_embedded, "modelfile": str(self.modelfile),
                "modelfile_template": self.modelfile_template, "pre_tokenizer": self.pre_tokenizer,
                "notes": self.notes}


def find_converter(llama_cpp: str | Path | None = None) -> Path:
    """llama.cpp's ``convert_hf_to_gguf.py``: in ``llama_cpp`` (a llama.cpp folder), else in
    ``$TUNEFUL_LLAMA_CPP``, else where ``scripts/setup-gguf`` puts it (``<venv>/share/llama.cpp``)."""
    places = [("--llama-cpp", llama_cpp), (LLAMA_CPP_ENV, os.environ.get(LLAMA_CPP_ENV)),
              ("scripts/setup-gguf", Path(sys.prefix) / "share" / "llama.cpp")]
    looked = []
    for origin, place in places:
        if not place:
            continue
        script = Path(place) / CONVERTER
        if script.is_file():
            return script
        looked.append(f"{place} ({origin})")
    raise ExportError(
        f"llama.cpp's converter ({CONVERTER}) was not found" + (f" in {', '.join(looked)}" if looked else "")
        + "; run `bash scripts/setup-gguf` (takes llama.cpp as vendored by llama-cpp-python and builds it), "
        f"or pass --llama-cpp DIR of a llama.cpp checkout, or set {LLAMA_CPP_ENV}=DIR")


def gpt2_byte_level(tokenizer: Any) -> bool:
    """Whether the tokenizer splits text exactly as GPT-2 does: a byte-level BPE whose pre-tokenizer is
    ByteLevel with GPT-2's regex and no prefix space, and no normalizer (read from ``tokenizer.json``)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    spec = json.loads(backend.to_str())
    pre = spec.get("pre_tokenizer") or {}
    return (spec.get("model", {}).get("type") == "BPE" and spec.get("normalizer") is None
            and pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"))


def stage_model(spec: str, stage: Path, *, template: str | None, trust_remote_code: bool) -> tuple[Any, Any, list[str]]:
    """A transformers folder for the converter: weights (an adapter merged into its base, in the base's
    dtype; a full model linked, not copied) and the tokenizer with the model's chat template.
    Returns (tokenizer, chosen template, notes)."""
    folder = model_folder(spec)
    tokenizer = load_tokenizer(folder, trust_remote_code=trust_remote_code)
    chosen, _, notes = choose_template(spec, folder, tokenizer, template)
    stage.mkdir(parents=True)
    if is_adapter_folder(folder):
        base = json.loads((Path(folder) / "adapter_config.json").read_text())["base_model_name_or_path"]
        if not base:
            raise ExportError(f"{folder}/adapter_config.json names no base model; merge it first with tuneful merge --base")
        merged_adapter(folder, base, dtype="auto", trust_remote_code=trust_remote_code).save_pretrained(
            stage, safe_serialization=True)
        notes.append(f"adapter merged into {base}")
    else:
        if not Path(folder).is_dir():
            raise ExportError(f"{spec} is not a local model folder; download it first (e.g. hf download {spec} --local-dir DIR)")
        for item in Path(folder).iterdir():
            if item.is_file() and item.name not in _TOKENIZER_FILES:
                (stage / item.name).symlink_to(item.resolve())
    if (Path(folder) / "generation_config.json").is_file() and not (stage / "generation_config.json").exists():
        shutil.copy(Path(folder) / "generation_config.json", stage / "generation_config.json")
    tokenizer.chat_template = gguf_template(chosen.source, tokenizer)
    if tokenizer.chat_template != chosen.source:
        notes.append("the tokenizer has no BOS token but llama.cpp always names one, so the embedded template "
                     "starts by setting bos_token to '' (as it renders in training)")
    tokenizer.save_pretrained(stage)
    return tokenizer, chosen, notes


def gguf_template(source: str, tokenizer: Any) -> str:
    """The template to embed. llama.cpp gives every vocabulary a BOS (for a byte-level BPE without one it
    picks id 11) and passes its text to the template as ``bos_token``; a template that prints
    ``bos_token`` for a tokenizer without BOS would then start with a stray token, so it is pinned to ''."""
    if getattr(tokenizer, "bos_token", None) or "bos_token" not in source:
        return source
    return "{%- set bos_token = '' -%}\n" + source


def _run_converter(converter: Path, stage: Path, out: Path, outtype: str, pre_tokenizer: str | None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tuneful.export.convert_runner", str(converter)]
    if pre_tokenizer:
        command += ["--pre-tokenizer", pre_tokenizer]
    command += [str(stage), "--outfile", str(out), "--outtype", outtype]
    return subprocess.run(command, capture_output=True, text=True)


def convert(converter: Path, stage: Path, out: Path, outtype: str, tokenizer: Any) -> str | None:
    """Run the converter; returns the pre-tokenizer name tuneful had to give it (None: it knew the tokenizer)."""
    result = _run_converter(converter, stage, out, outtype, None)
    pre_tokenizer = None
    if result.returncode != 0 and _UNKNOWN_PRE_TOKENIZER in result.stderr and gpt2_byte_level(tokenizer):
        pre_tokenizer = "gpt-2"
        result = _run_converter(converter, stage, out, outtype, pre_tokenizer)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-12:])
        hint = (" (its pre-tokenizer is not one llama.cpp knows: llama.cpp supports the tokenizers of the model "
                "families its converter lists)" if _UNKNOWN_PRE_TOKENIZER in result.stderr else "")
        raise ExportError(f"llama.cpp's converter failed{hint}:\n{tail}")
    return pre_tokenizer


def quantize(source: Path, out: Path, quant: str) -> None:
    """llama.cpp's quantizer (``llama_model_quantize`` through llama-cpp-python) from an f16 GGUF."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise ExportError(f"--quant {quant} uses llama.cpp's quantizer from llama-cpp-python, which is not "
                          "installed: run `bash scripts/setup-gguf`, or use --quant f16|q8_0 (written by the converter)") from exc
    import ctypes

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTIZER_TYPES[quant])
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params)) != 0:
        raise ExportError(f"llama.cpp's quantizer failed to write {out} as {quant}")


def read_metadata(path: Path, *keys: str) -> dict[str, Any]:
    """String, number and bool values of ``keys`` in a GGUF file's metadata (through the ``gguf`` package)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    values = {}
    for key in keys:
        item = reader.get_field(key)
        if item is not None:
            values[key] = item.contents()
    return values


def export_gguf(spec: str, out: str | Path, *, quant: str = "f16", template: str | None = None,
                llama_cpp: str | Path | None = None, trust_remote_code: bool = False) -> GGUFExport:
    """MODEL (a folder, an adapter, or ``sandbox``) → ``out`` (GGUF) and an Ollama ``Modelfile`` beside it."""
    if quant not in QUANTS:
        raise ExportError(f"--quant {quant!r} is not one of {', '.join(QUANTS)}")
    converter = find_converter(llama_cpp)
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tuneful-export-", dir=out.parent) as scratch:
        stage = Path(scratch) / "model"
        tokenizer, chosen, notes = stage_model(spec, stage, template=template, trust_remote_code=trust_remote_code)
        direct = quant in CONVERTER_TYPES
        converted = out if direct else Path(scratch) / "f16.gguf"
        pre_tokenizer = convert(converter, stage, converted, quant if direct else "f16", tokenizer)
        if not direct:
            quantize(converted, out, quant)
    if pre_tokenizer:
        notes.append(f"llama.cpp's converter does not know this tokenizer; its pre-tokenizer settings are GPT-2's, "
                     f"so it was converted with pre-tokenizer {pre_tokenizer!r}")
    metadata = read_metadata(out, "tokenizer.chat_template", "tokenizer.ggml.add_bos_token")
    embedded = metadata.get("tokenizer.chat_template") == gguf_template(chosen.source, tokenizer)
    stops = tokenizer.convert_ids_to_tokens(template_end_of_turn_ids(tokenizer, chosen))
    special = special_tokens_of(tokenizer)
    if metadata.get("tokenizer.ggml.add_bos_token"):
        special = {**special, "bos_token": ""}  # llama.cpp adds BOS itself when tokenizing: the template must not
    text, has_template = modelfile(out.name, chosen.source, special, stops)
    modelfile_path = out.parent / "Modelfile"
    modelfile_path.write_text(text, encoding="utf-8")
    if not has_template:
        notes.append("the Modelfile has no TEMPLATE: this chat template has no exact Go form (see the Modelfile)")
    return GGUFExport(out, quant, embedded, modelfile_path, has_template, pre_tokenizer, notes)
