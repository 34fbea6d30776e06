"""Runs llama.cpp's converter: ``python -m tuneful.export.convert_runner CONVERTER [--pre-tokenizer NAME] ARGS...``.

Without ``--pre-tokenizer`` this is the converter run as it is. With it, the converter is told the
pre-tokenizer's name instead of looking the tokenizer up by hash (see ``gguf.py`` for when tuneful does
that); nothing else about the conversion changes.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    converter, rest = Path(argv[0]).resolve(), argv[1:]
    pre_tokenizer = None
    if rest[:1] == ["--pre-tokenizer"]:
        pre_tokenizer, rest = rest[1], rest[2:]
    home = converter.parent
    sys.path.insert(0, str(home))
    if (home / "gguf-py").is_dir():  # the converter's own gguf package, as the script itself arranges
        sys.path.insert(1, str(home / "gguf-py"))
    if pre_tokenizer is not None:
        from conversion.base import TextModel  # llama.cpp's converter package, next to the script

        TextModel.get_vocab_base_pre = lambda self, tokenizer: pre_tokenizer
    sys.argv = [str(converter), *rest]
    runpy.run_path(str(converter), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
