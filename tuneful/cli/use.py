"""``tuneful chat`` and ``tuneful serve``: talk to a model, or serve it over an OpenAI-compatible API."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator, Optional

import typer

from .common import fail

MODEL_HELP = "A Hugging Face folder or hub id, a PEFT adapter folder, or 'sandbox' (the shipped sandbox model)."
TEMPLATE_HELP = "Chat template (built-in name or .jinja file); default: the one saved with the model."


def _load(model: str, template: Optional[str], trust_remote_code: bool, device: str):
    from ..infer.chat_model import load_chat_model

    try:
        chat = load_chat_model(model, template=template, trust_remote_code=trust_remote_code, device=device)
    except (OSError, ValueError) as exc:
        fail(f"cannot load {model}: {exc}")
    for note in chat.notes:
        typer.echo(f"note: {note}", err=True)
    return chat


def _terminal_lines() -> Iterator[str]:
    while True:
        try:
            yield input("you> ")
        except EOFError:
            return


def chat(
    model: str = typer.Argument(..., help=MODEL_HELP),
    template: Optional[str] = typer.Option(None, "--template", help=TEMPLATE_HELP),
    system: Optional[str] = typer.Option(None, "--system", help="System prompt to start with."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="Longest reply, in tokens."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy; > 0 samples."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run model code from the hub (off by default)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ..."),
    tools: Optional[Path] = typer.Option(None, "--tools", help="A Python file whose public functions (type hints, "
                                         "docstring with Args:) are offered to the model as tools and run when it calls them."),
    yes: bool = typer.Option(False, "--yes", help="Run tool calls without asking first."),
) -> None:
    """Multi-turn chat in the terminal with the model's own template; /help lists commands."""
    from ..infer.chat_repl import HELP, ChatSession, ask, run_chat
    from ..infer.tools import load_tools

    try:
        functions = load_tools(tools) if tools else {}
    except (ValueError, OSError, SyntaxError) as exc:
        fail(str(exc))
    session = ChatSession(_load(model, template, trust_remote_code, device), max_new_tokens, temperature, system,
                          tools=functions, confirm=(lambda _: True) if yes else ask)
    if functions:
        typer.echo(f"tools: {', '.join(functions)}" + ("" if yes else " (each call asks before it runs)"), err=True)
    interactive = sys.stdin.isatty()
    if interactive:
        typer.echo(f"chatting with {model} (template {session.chat.template.origin}); {HELP}")

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    lines = _terminal_lines() if interactive else (f"{line}" for line in sys.stdin)
    run_chat(session, lines, write)


def serve(
    model: str = typer.Argument(..., help=MODEL_HELP),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port (0 picks a free one)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 exposes the server to the network."),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env",
                                              help="Name of an environment variable holding the API key clients must send."),
    template: Optional[str] = typer.Option(None, "--template", help=TEMPLATE_HELP),
    max_batch: int = typer.Option(16, "--max-batch", min=1, help="Requests decoded together."),
    max_queue: int = typer.Option(64, "--max-queue", min=1, help="Requests allowed to wait; more get 503."),
    batch_wait_ms: float = typer.Option(10.0, "--batch-wait-ms", min=0.0,
                                        help="How long a request waits for others to share its batch."),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="Default max_tokens when a request names none."),
    prefix_cache_mb: int = typer.Option(512, "--prefix-cache-mb", min=0,
                                        help="Keys and values of finished requests kept (MiB) so that a request starting "
                                        "the same way, a chat's next turn, prefills only what is new; 0: off."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run model code from the hub (off by default)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ..."),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request line."),
    tool_parser: Optional[str] = typer.Option(None, "--tool-parser", help="Call syntax of the model's output: hermes, "
                                              "tuneful, llama3_json, mistral or granite; default: the one its template prints."),
) -> None:
    """Serve MODEL with an OpenAI-compatible API (POST /v1/chat/completions with tools, GET /v1/models, GET /metrics)."""
    from ..serve.server import ChatServer, ServeSettings, serve_until_signalled

    api_key = None
    if api_key_env:  # the key itself never appears on the command line (shell history, ps) or in logs
        api_key = os.environ.get(api_key_env)
        if not api_key:
            fail(f"--api-key-env {api_key_env}: that environment variable is empty or unset")
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        typer.echo(f"warning: binding {host} without an API key exposes the model to the network", err=True)
    settings = ServeSettings(host, port, api_key, max_batch, max_queue, batch_wait_ms, max_tokens,
                             quiet=not access_log, tool_parser=tool_parser, prefix_cache_mb=prefix_cache_mb)
    chat_model = _load(model, template, trust_remote_code, device)
    try:
        server = ChatServer(chat_model, settings)
    except OSError as exc:
        fail(f"cannot bind {host}:{port}: {exc}")
    except ValueError as exc:
        fail(str(exc))
    serve_until_signalled(server, lambda line: typer.echo(line))


def export(
    model: str = typer.Argument(..., help=MODEL_HELP),
    gguf: Path = typer.Option(..., "--gguf", help="GGUF file to write (an Ollama Modelfile is written beside it)."),
    quant: str = typer.Option("f16", "--quant", help="f16, bf16, f32 or q8_0 (written by llama.cpp's converter); "
                              "q4_k_m, q5_k_m, q6_k or q4_0 (llama.cpp's quantizer, from f16)."),
    template: Optional[str] = typer.Option(None, "--template", help=TEMPLATE_HELP + " It is embedded in the GGUF."),
    llama_cpp: Optional[Path] = typer.Option(None, "--llama-cpp", help="A llama.cpp folder holding convert_hf_to_gguf.py; "
                                             "default: $TUNEFUL_LLAMA_CPP, else the one scripts/setup-gguf installs."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run model code from the checkpoint."),
) -> None:
    """Export MODEL to GGUF for llama.cpp / Ollama / LM Studio, with its chat template embedded (adapters merged first)."""
    import json

    from ..export.gguf import ExportError, export_gguf

    try:
        result = export_gguf(model, gguf, quant=quant, template=template, llama_cpp=llama_cpp,
                             trust_remote_code=trust_remote_code)
    except (ExportError, OSError, ValueError) as exc:
        fail(str(exc))
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"wrote {result.gguf} and {result.modelfile}; run it with: llama-cli -m {result.gguf} -cnv   or   "
               f"cd {result.gguf.parent} && ollama create NAME -f Modelfile && ollama run NAME", err=True)
    typer.echo(json.dumps(result.summary()))
