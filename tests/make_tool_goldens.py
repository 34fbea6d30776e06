"""Write tests/data/tool_goldens/<template>.json: transformers' own apply_chat_template(tokenize=False)
of every conversation in tests/data/tool_conversations.json, with its tools and chat_template_kwargs,
for each tool-capable template in the shared fixtures (clock frozen at 2024-07-26 12:00).

Run with transformers 5.23 (the version the shared goldens were made with):
    python -m venv /tmp/tf523 && /tmp/tf523/bin/pip install transformers==5.23.0
    TUNEFUL_FIXTURES=../shared/fixtures /tmp/tf523/bin/python tests/make_tool_goldens.py
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import transformers
import transformers.utils.chat_template_utils as ctu
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

HERE = Path(__file__).parent
TEMPLATES = ["llama-3.1-instruct", "llama-3.2-instruct", "llama-3.3-instruct", "qwen2.5-instruct", "qwen3",
             "mistral-7b-instruct-v0.3", "granite-3.0-instruct", "granite-3.1-instruct", "granite-3.2-instruct"]


class _Frozen(datetime):
    @classmethod
    def now(cls, tz=None):
        return datetime(2024, 7, 26, 12, 0, 0)


def main() -> None:
    fixtures = Path(os.environ.get("TUNEFUL_FIXTURES", HERE.parent.parent / "shared" / "fixtures"))
    data = json.loads((HERE / "data" / "tool_conversations.json").read_text())
    ctu.datetime = _Frozen
    out_dir = HERE / "data" / "tool_goldens"
    for name in TEMPLATES:
        special = json.loads((fixtures / "chat_templates" / "goldens" / f"{name}.json").read_text())["special_tokens_map"]
        tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"x": 0}, unk_token="x")), **special)
        tok.chat_template = (fixtures / "chat_templates" / f"{name}.jinja").read_text()
        results = []
        for conv in data["conversations"]:
            for add_generation_prompt in (False, True):
                try:
                    rendered = tok.apply_chat_template(conv["messages"], tools=data["tools"], tokenize=False,
                                                       add_generation_prompt=add_generation_prompt,
                                                       **conv.get("chat_template_kwargs", {}))
                    result = {"rendered": rendered}
                except Exception as exc:
                    result = {"error": {"type": type(exc).__name__, "message": str(exc)}}
                results.append({"conversation_id": conv["id"], "add_generation_prompt": add_generation_prompt, **result})
        golden = {"template": name, "transformers": transformers.__version__, "special_tokens_map": special,
                  "results": results}
        (out_dir / f"{name}.json").write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n")
        print(name, sum("rendered" in r for r in results), "rendered,", sum("error" in r for r in results), "errors")


if __name__ == "__main__":
    main()
