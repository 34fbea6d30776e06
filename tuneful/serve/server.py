"""An OpenAI-compatible HTTP server: ``POST /v1/chat/completions`` (plain and streaming), ``GET /v1/models``.

Built on the standard library's threading HTTP server: the server is a thin JSON layer over the
:class:`GenerationEngine`, which does the batching, so a web framework would add dependencies
without adding capability. One thread per connection waits on its request's token stream; the
engine's single worker owns the model. Binds 127.0.0.1 unless told otherwise; an API key, when
set, is required as ``Authorization: Bearer KEY`` and compared in constant time.
"""

from __future__ import annotations

import hmac
import json
import signal
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..data.tool_parsers import PARSERS, ParsedReply, ReplyStream, ToolParser, split_reasoning
from ..infer.chat_model import ChatModel
from ..infer.constrain import CallConstraints, SYNTAXES
from ..infer.engine import (EngineStopped, GenerationEngine, GenerationRequest, QueueFull, Sampling, TextDeltas,
                            request_id)
from .protocol import (ApiError, ChatRequest, StopStrings, chunk_body, completion_body, parse_chat_request,
                       reply_message, usage)


MAX_BODY_BYTES = 1 << 20
IDLE_TIMEOUT_S = 30.0


@dataclass
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch: int = 16  # requests decoded together
    max_queue: int = 64  # requests allowed to wait; more are refused with 503
    batch_wait_ms: float = 10.0  # how long a request waits for others to share its batch
    default_max_tokens: int = 256
    quiet: bool = True  # no per-request access log
    tool_parser: str | None = None  # the model's call syntax; None: the one its template prints


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the listen backlog: a burst of clients waits to be accepted instead of being reset

    def __init__(self, chat: ChatModel, settings: ServeSettings):
        self.chat = chat
        self.settings = settings
        self.engine = GenerationEngine(chat, max_batch=settings.max_batch, max_queue=settings.max_queue,
                                       batch_wait_s=settings.batch_wait_ms / 1000)
        name = settings.tool_parser or chat.tool_parser
        if name is not None and name not in PARSERS:
            raise ValueError(f"--tool-parser {name!r} is not one of {', '.join(PARSERS)}")
        self.tool_parser: ToolParser | None = PARSERS[name] if name else None
        self.metrics: dict[str, int] = {"requests": 0, "tool_requests": 0, "tool_calls": 0, "tool_parse_failures": 0,
                                        "constrained_requests": 0}
        self._constraints: Any = None  # CallConstraints, built on the first forced tool_choice
        self._metrics_lock = threading.Lock()
        super().__init__((settings.host, settings.port), _Handler)

    def call_constraint(self, request: ChatRequest) -> Any:
        """The matcher a forced reply follows (tool_choice required / named), or None."""
        if request.forced_calls is None:
            return None

        if self.tool_parser is None or self.tool_parser.name not in SYNTAXES:
            raise ApiError(400, f"tool_choice forces a call, but this model's template ({self.chat.template.origin}) "
                                "prints no call syntax tuneful can constrain decoding to", param="tool_choice")
        with self._metrics_lock:
            if self._constraints is None:
                vocab = self.chat.model.get_output_embeddings().weight.shape[0]
                self._constraints = CallConstraints(self.chat.tokenizer, vocab, self.chat.stop_ids)
        try:
            return self._constraints.matcher(self.tool_parser.name, request.forced_calls,
                                             parallel=request.parallel_tool_calls)
        except ValueError as exc:
            raise ApiError(400, f"tools: {exc}", param="tools")

    def count(self, **increments: int) -> None:
        with self._metrics_lock:
            for key, value in increments.items():
                self.metrics[key] += value

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def serve(self) -> None:
        self.engine.start()
        try:
            self.serve_forever(poll_interval=0.2)
        finally:
            self.engine.stop()
            self.server_close()

    def start_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve, name="tuneful-http", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """Stop accepting connections; the batch in flight finishes, waiting requests get 503."""
        self.shutdown()


class _Handler(BaseHTTPRequestHandler):
    server: ChatServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes; with Nagle's algorithm on, the second waits for
    # the client's delayed ACK (~40 ms per request on Linux).
    disable_nagle_algorithm = True
    timeout = IDLE_TIMEOUT_S  # an idle keep-alive connection, or a body that stops coming, is closed after this
    _body_read = False

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if not self.server.settings.quiet:
            super().log_message(format, *args)

    # --- routing ------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._guarded(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._guarded(self._post)

    def _guarded(self, handler: Any) -> None:
        self._body_read = self.command != "POST"
        try:
            self._authorize()
            handler()
        except ApiError as error:
            if not self._body_read:  # refused before its body was read: the connection cannot carry another request
                self.close_connection = True
            try:
                self._send_json(error.status, error.body(), close=self.close_connection, retry_after=error.retry_after)
            except (BrokenPipeError, ConnectionResetError):
                pass
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client went away, or stopped sending

    def _get(self) -> None:
        if self.path.rstrip("/") == "/metrics":
            with self.server._metrics_lock:
                self._send_json(200, dict(self.server.metrics))
            return
        if self.path.rstrip("/") != "/v1/models":
            raise ApiError(404, f"no route GET {self.path}", code="not_found")
        model = {"id": self.server.chat.name, "object": "model", "created": 0, "owned_by": "tuneful"}
        self._send_json(200, {"object": "list", "data": [model]})

    def _post(self) -> None:
        if self.path.rstrip("/") != "/v1/chat/completions":
            raise ApiError(404, f"no route POST {self.path}", code="not_found")
        request = parse_chat_request(self._read_json(), self.server.chat.name)
        parser = self._tool_parser(request)
        prompt_ids = self._prompt_ids(request)
        generation = self._submit(request, prompt_ids, self.server.call_constraint(request))
        self.server.count(requests=1, tool_requests=int(parser is not None),
                          constrained_requests=int(generation.constraint is not None))
        if request.stream:
            self._stream(request, generation, len(prompt_ids), parser)
        else:
            self._complete(request, generation, len(prompt_ids), parser)

    # --- pieces -------------------------------------------------------------------------------
    def _tool_parser(self, request: ChatRequest) -> ToolParser | None:
        """The parser for a request that offers tools; a 400 when this model cannot take them."""
        if not request.tools:
            return None
        if self.server.tool_parser is None:
            raise ApiError(400, f"this model's template ({self.server.chat.template.origin}) prints no tool calls "
                                "tuneful can parse; serve it with --tool-parser NAME or a tool-capable template",
                           param="tools")
        return self.server.tool_parser

    def _prompt_ids(self, request: ChatRequest) -> list[int]:
        chat = self.server.chat
        if request.tools:
            text = chat.prompt_text(request.messages, request.tools)
            missing = [t["function"]["name"] for t in request.tools if t["function"]["name"] not in text]
            if missing:
                raise ApiError(400, f"this model's template ({chat.template.origin}) does not print the tool "
                                    f"definitions (missing: {', '.join(missing)}); it cannot be offered tools",
                               param="tools")
            return chat.encode_prompt(text)
        return chat.prompt_ids(request.messages)

    def _reply(self, text: str, parser: ToolParser | None, truncated: bool) -> ParsedReply:
        if parser is not None:
            reply = parser.parse(text, truncated=truncated)
        else:
            reasoning, content = split_reasoning(text)
            reply = ParsedReply(content, (), reasoning)
        self.server.count(tool_calls=len(reply.tool_calls), tool_parse_failures=int(reply.failed))
        return reply

    def _authorize(self) -> None:
        key = self.server.settings.api_key
        if key is None:
            return
        given = self.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            raise ApiError(401, "missing or wrong API key (send Authorization: Bearer KEY)",
                           kind="authentication_error", code="invalid_api_key")

    def _read_json(self) -> Any:
        given = self.headers.get("Content-Length") or "0"
        if not given.isdigit():
            raise ApiError(400, f"Content-Length {given!r} is not a byte count")
        length = int(given)
        if length > MAX_BODY_BYTES:
            raise ApiError(413, f"request body of {length} bytes is over the {MAX_BODY_BYTES}-byte limit")
        raw = self.rfile.read(length)
        if len(raw) < length:
            raise ApiError(400, f"the body ended after {len(raw)} of {length} bytes")
        self._body_read = True
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}")
        except RecursionError:
            raise ApiError(400, "the request body is nested too deeply")

    def _submit(self, request: ChatRequest, prompt_ids: list[int], constraint: Any = None) -> GenerationRequest:
        chat, settings = self.server.chat, self.server.settings
        room = chat.context_length - len(prompt_ids)
        wanted = request.max_tokens or min(settings.default_max_tokens, room)
        if wanted > room or room < 1:
            raise ApiError(400, f"the prompt has {len(prompt_ids)} tokens and max_tokens is {wanted}; together they "
                                f"exceed the model's context of {chat.context_length} tokens",
                           param="max_tokens", code="context_length_exceeded")
        temperature = chat.default_temperature if request.temperature is None else request.temperature
        sampling = Sampling(temperature, request.top_p) if temperature > 0 else Sampling()
        try:
            return self.server.engine.submit(GenerationRequest(prompt_ids, wanted, sampling, request.seed,
                                                               stream=request.stream, constraint=constraint))
        except QueueFull as exc:
            raise ApiError(503, f"server busy: {exc}; retry later", kind="server_error", code="overloaded",
                           retry_after=1)
        except EngineStopped as exc:
            raise ApiError(503, str(exc), kind="server_error", code="shutting_down")

    def _complete(self, request: ChatRequest, generation: GenerationRequest, prompt_tokens: int,
                  parser: ToolParser | None) -> None:
        try:
            ids = list(generation.tokens())
        except RuntimeError as exc:
            raise ApiError(503, str(exc), kind="server_error")
        stops = StopStrings(request.stop)
        # a call marker may be a special token (Mistral's [TOOL_CALLS]): keep them when tools are offered
        text = stops.feed(self.server.chat.tokenizer.decode(ids, skip_special_tokens=parser is None))
        text += "" if stops.hit else stops.flush()
        reply = self._reply(text, parser, truncated=not stops.hit and _finish(generation) == "length")
        reason = "tool_calls" if reply.tool_calls else "stop" if stops.hit else _finish(generation)
        body = completion_body(request_id(), self.server.chat.name, reply_message(reply), reason, prompt_tokens,
                               len(ids))
        self._send_json(200, body)

    def _stream(self, request: ChatRequest, generation: GenerationRequest, prompt_tokens: int,
                parser: ToolParser | None) -> None:
        rid, model = request_id(), self.server.chat.name
        deltas = TextDeltas(self.server.chat.tokenizer, skip_special_tokens=parser is None)
        stops, count, reply_stream = StopStrings(request.stop), 0, ReplyStream(parser)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            self._event(chunk_body(rid, model, {"role": "assistant", "content": ""}))
            for token in generation.tokens():
                count += 1
                for delta in reply_stream.feed(stops.feed(deltas.add(token))):
                    self._event(chunk_body(rid, model, delta))
                if stops.hit:
                    generation.cancelled.set()
                    break
            owed = reply_stream.feed("" if stops.hit else stops.flush())
            rest, reply = reply_stream.finish(truncated=not stops.hit and _finish(generation) == "length")
            for delta in owed + rest:
                self._event(chunk_body(rid, model, delta))
            self.server.count(tool_calls=len(reply.tool_calls), tool_parse_failures=int(reply.failed))
            reason = "tool_calls" if reply.tool_calls else "stop" if stops.hit else _finish(generation)
            self._event(chunk_body(rid, model, {}, reason))
            if request.include_usage:
                self._event({**chunk_body(rid, model, {}), "choices": [], "usage": usage(prompt_tokens, count)})
            self.wfile.write(b"data: [DONE]\n\n")
        except RuntimeError as exc:  # headers are gone: report the failure inside the stream
            self._event(ApiError(500, str(exc), kind="server_error").body())
        except (BrokenPipeError, ConnectionResetError):
            generation.cancelled.set()  # free the batch row: the client is gone

    def _event(self, body: dict) -> None:
        self.wfile.write(b"data: " + json.dumps(body).encode() + b"\n\n")
        self.wfile.flush()

    def _send_json(self, status: int, body: dict, *, close: bool = False, retry_after: int | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


def _finish(generation: GenerationRequest) -> str:
    return "stop" if generation.finish_reason in ("stop", "cancelled") else "length"


def serve_until_signalled(server: ChatServer, announce: Any) -> None:
    """Serve until SIGINT/SIGTERM, then shut down cleanly (in-flight batch finishes first)."""
    def on_signal(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()  # shutdown() blocks; not from the loop

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    announce(f"Serving on {server.url}  (model {server.chat.name}, template {server.chat.template.origin}; "
             f"Ctrl-C stops)")
    started = time.perf_counter()
    server.serve()
    announce(f"Stopped after {time.perf_counter() - started:.0f} s")
