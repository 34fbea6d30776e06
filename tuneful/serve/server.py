"""An OpenAI-compatible HTTP server: ``POST /v1/chat/completions`` (plain and streaming), ``GET /v1/models``.

The HTTP layer over :class:`tuneful.infer.engine.GenerationEngine`, which does the batching: uvicorn
(httptools) and Starlette, the convention of vLLM and ``transformers serve``. Requests are served on
one event loop; preparing a prompt runs in the thread pool and the engine's own thread owns the model,
handing tokens back to the loop. What a hostile client could hold, it cannot: a request's headers must
arrive within ``idle_timeout_s`` of the connection opening or of the previous response (uvicorn alone
times out only idle keep-alive connections, so a client sending headers a byte at a time held its
connection for ever), a body within the same time (408), of at most ``max_body_bytes`` (413, read no
further); the API key is checked before the body is read; a full engine queue is a 503 with
``Retry-After``; a streaming client that leaves frees its batch row at the next token. Binds 127.0.0.1
unless told otherwise; an API key, when set, is required as ``Authorization: Bearer KEY`` and compared
in constant time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..data.tool_parsers import PARSERS, ParsedReply, ReplyStream, ToolParser, split_reasoning
from ..infer.chat_model import ChatModel, TextDeltas
from ..infer.constrain import CallConstraints, SYNTAXES
from ..infer.engine import EngineStopped, GenerationEngine, GenerationRequest, QueueFull, Sampling
from ..infer.prefix_cache import PrefixCache
from .protocol import (ApiError, ChatRequest, StopStrings, chunk_body, completion_body, parse_chat_request,
                       reply_message, request_id, usage)


BACKLOG = 256  # a burst of clients waits to be accepted instead of being reset


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
    max_body_bytes: int = 1 << 20  # a larger request body is a 413, and is not read
    idle_timeout_s: float = 30.0  # for a request's headers (from connect or the last response) and for its body
    # finished requests' keys and values kept (MiB, on the model's device) for a request that starts the same way —
    # a chat's next turn resends the whole conversation — which then prefills only what is new; 0: off
    prefix_cache_mb: int = 512


class ChatServer:
    """The server: bound at construction (``port=0`` picks a free port, see ``url``), serving once
    ``serve()`` (blocking) or ``start_in_thread()`` runs, until ``stop()``."""

    def __init__(self, chat: ChatModel, settings: ServeSettings):
        self.chat = chat
        self.settings = settings
        name = settings.tool_parser or chat.tool_parser
        if name is not None and name not in PARSERS:
            raise ValueError(f"--tool-parser {name!r} is not one of {', '.join(PARSERS)}")
        self.tool_parser: ToolParser | None = PARSERS[name] if name else None
        kept = PrefixCache(settings.prefix_cache_mb << 20) if settings.prefix_cache_mb > 0 else None
        self.engine = GenerationEngine(chat, max_batch=settings.max_batch, max_queue=settings.max_queue,
                                       batch_wait_s=settings.batch_wait_ms / 1000, prefix_cache=kept)
        self.metrics: dict[str, int] = {"requests": 0, "tool_requests": 0, "tool_calls": 0, "tool_parse_failures": 0,
                                        "constrained_requests": 0, "client_disconnects": 0}
        self._constraints: Any = None  # CallConstraints, built on the first forced tool_choice
        self._lock = threading.Lock()
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((settings.host, settings.port))
            self._socket.listen(BACKLOG)
        except OSError:
            self._socket.close()
            raise
        self.server_address = self._socket.getsockname()
        config = uvicorn.Config(self.app(), lifespan="off", http=_protocol_with_header_deadline(settings.idle_timeout_s),
                                timeout_keep_alive=int(settings.idle_timeout_s) or 1, backlog=BACKLOG,
                                access_log=not settings.quiet, log_level="info" if not settings.quiet else "warning",
                                timeout_graceful_shutdown=30)
        self._uvicorn = _Uvicorn(config)

    # --- the server's life ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def serve(self) -> None:
        """Serve until ``stop()``: requests in flight are answered, then the engine stops."""
        self.engine.start()
        try:
            self._uvicorn.run(sockets=[self._socket])
        finally:
            self.engine.stop()
            self._socket.close()

    def start_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve, name="tuneful-http", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """Stop accepting connections; requests in flight finish first (see ``serve``)."""
        self._uvicorn.should_exit = True

    def app(self) -> Starlette:
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
        return Starlette(routes=[Route("/{path:path}", self._handle, methods=methods)])

    def count(self, **increments: int) -> None:
        with self._lock:
            for key, value in increments.items():
                self.metrics[key] += value

    # --- routing ----------------------------------------------------------------------------
    async def _handle(self, request: Request) -> Response:
        route = (request.method, request.url.path.rstrip("/"))
        body_read = request.method != "POST"
        try:
            self._authorize(request)
            if route == ("GET", "/metrics"):
                with self._lock:
                    kept = self.engine.prefix_cache
                    return JSONResponse({**self.metrics, "prefilled_tokens": self.engine.prefilled_tokens,
                                         "prefix_reused_tokens": kept.reused_tokens if kept else 0})
            if route == ("GET", "/v1/models"):
                model = {"id": self.chat.name, "object": "model", "created": 0, "owned_by": "tuneful"}
                return JSONResponse({"object": "list", "data": [model]})
            if route != ("POST", "/v1/chat/completions"):
                raise ApiError(404, f"no route {request.method} {request.url.path}", code="not_found")
            raw = await self._read_body(request)
            body_read = True
            return await self._chat_completion(raw)
        except ApiError as error:
            headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else {}
            if not body_read:  # refused before its body was read: the connection cannot carry another request
                headers["Connection"] = "close"
            return JSONResponse(error.body(), status_code=error.status, headers=headers)

    def _authorize(self, request: Request) -> None:
        key = self.settings.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            raise ApiError(401, "missing or wrong API key (send Authorization: Bearer KEY)",
                           kind="authentication_error", code="invalid_api_key")

    async def _read_body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        given = request.headers.get("content-length")
        if given is not None and given.isdigit() and int(given) > limit:
            raise ApiError(413, f"request body of {given} bytes is over the {limit}-byte limit")

        async def collect() -> bytes:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"request body is over the {limit}-byte limit")
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            return await asyncio.wait_for(collect(), self.settings.idle_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {self.settings.idle_timeout_s:g} s")
        except ClientDisconnect:
            raise ApiError(400, "the client closed the connection before the body ended")

    # --- chat completions -------------------------------------------------------------------
    async def _chat_completion(self, raw: bytes) -> Response:
        events = _LoopEvents(asyncio.get_running_loop())
        request, generation, prompt_tokens, parser = await run_in_threadpool(self._start, raw, events)
        if request.stream:
            return StreamingResponse(self._stream(request, generation, prompt_tokens, parser),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        ids: list[int] = []
        try:
            async for token in _tokens(generation):
                ids.append(token)
        except RuntimeError as exc:
            raise ApiError(503, str(exc), kind="server_error")
        finally:
            generation.cancelled.set()  # a no-op once it ended; frees the row if this request was cancelled
        stops = StopStrings(request.stop)
        # a call marker may be a special token (Mistral's [TOOL_CALLS]): keep them when tools are offered
        text = stops.feed(self.chat.tokenizer.decode(ids, skip_special_tokens=parser is None))
        text += "" if stops.hit else stops.flush()
        reply = self._reply(text, parser, truncated=not stops.hit and _finish(generation) == "length")
        reason = "tool_calls" if reply.tool_calls else "stop" if stops.hit else _finish(generation)
        return JSONResponse(completion_body(request_id(), self.chat.name, reply_message(reply), reason, prompt_tokens,
                                            len(ids)))

    def _start(self, raw: bytes, events: "_LoopEvents") -> tuple[ChatRequest, GenerationRequest, int, Any]:
        """Parse and check a request, render its prompt and hand it to the engine (in the thread pool:
        the template, the tokenizer and a first call constraint take CPU time)."""
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}")
        except RecursionError:
            raise ApiError(400, "the request body is nested too deeply")
        request = parse_chat_request(body, self.chat.name)
        parser = self._tool_parser(request)
        prompt_ids = self._prompt_ids(request)
        generation = self._submit(request, prompt_ids, self._call_constraint(request), events)
        self.count(requests=1, tool_requests=int(parser is not None),
                   constrained_requests=int(generation.constraint is not None))
        return request, generation, len(prompt_ids), parser

    def _tool_parser(self, request: ChatRequest) -> ToolParser | None:
        """The parser for a request that offers tools; a 400 when this model cannot take them."""
        if not request.tools:
            return None
        if self.tool_parser is None:
            raise ApiError(400, f"this model's template ({self.chat.template.origin}) prints no tool calls "
                                "tuneful can parse; serve it with --tool-parser NAME or a tool-capable template",
                           param="tools")
        return self.tool_parser

    def _prompt_ids(self, request: ChatRequest) -> list[int]:
        chat = self.chat
        if request.tools:
            text = chat.prompt_text(request.messages, request.tools)
            missing = [t["function"]["name"] for t in request.tools if t["function"]["name"] not in text]
            if missing:
                raise ApiError(400, f"this model's template ({chat.template.origin}) does not print the tool "
                                    f"definitions (missing: {', '.join(missing)}); it cannot be offered tools",
                               param="tools")
            return chat.encode_prompt(text)
        return chat.prompt_ids(request.messages)

    def _call_constraint(self, request: ChatRequest) -> Any:
        """The matcher a forced reply follows (tool_choice required / named), or None."""
        if request.forced_calls is None:
            return None
        if self.tool_parser is None or self.tool_parser.name not in SYNTAXES:
            raise ApiError(400, f"tool_choice forces a call, but this model's template ({self.chat.template.origin}) "
                                "prints no call syntax tuneful can constrain decoding to", param="tool_choice")
        with self._lock:
            if self._constraints is None:
                vocab = self.chat.model.get_output_embeddings().weight.shape[0]
                self._constraints = CallConstraints(self.chat.tokenizer, vocab, self.chat.stop_ids)
        try:
            return self._constraints.matcher(self.tool_parser.name, request.forced_calls,
                                             parallel=request.parallel_tool_calls)
        except ValueError as exc:
            raise ApiError(400, f"tools: {exc}", param="tools")

    def _submit(self, request: ChatRequest, prompt_ids: list[int], constraint: Any,
                events: "_LoopEvents") -> GenerationRequest:
        chat, settings = self.chat, self.settings
        room = chat.context_length - len(prompt_ids)
        wanted = request.max_tokens or min(settings.default_max_tokens, room)
        if wanted > room or room < 1:
            raise ApiError(400, f"the prompt has {len(prompt_ids)} tokens and max_tokens is {wanted}; together they "
                                f"exceed the model's context of {chat.context_length} tokens",
                           param="max_tokens", code="context_length_exceeded")
        temperature = chat.default_temperature if request.temperature is None else request.temperature
        sampling = Sampling(temperature, request.top_p) if temperature > 0 else Sampling()
        try:
            return self.engine.submit(GenerationRequest(prompt_ids, wanted, sampling, request.seed,
                                                        stream=request.stream, constraint=constraint, events=events))
        except QueueFull as exc:
            raise ApiError(503, f"server busy: {exc}; retry later", kind="server_error", code="overloaded",
                           retry_after=1)
        except EngineStopped as exc:
            raise ApiError(503, str(exc), kind="server_error", code="shutting_down")

    def _reply(self, text: str, parser: ToolParser | None, truncated: bool) -> ParsedReply:
        if parser is not None:
            reply = parser.parse(text, truncated=truncated)
        else:
            reasoning, content = split_reasoning(text)
            reply = ParsedReply(content, (), reasoning)
        self.count(tool_calls=len(reply.tool_calls), tool_parse_failures=int(reply.failed))
        return reply

    async def _stream(self, request: ChatRequest, generation: GenerationRequest, prompt_tokens: int,
                      parser: ToolParser | None) -> AsyncIterator[bytes]:
        rid, model = request_id(), self.chat.name
        deltas = TextDeltas(self.chat.tokenizer, skip_special_tokens=parser is None)
        stops, count, reply_stream = StopStrings(request.stop), 0, ReplyStream(parser)
        finished = False
        try:
            yield _event(chunk_body(rid, model, {"role": "assistant", "content": ""}))
            async for token in _tokens(generation):
                count += 1
                for delta in reply_stream.feed(stops.feed(deltas.add(token))):
                    yield _event(chunk_body(rid, model, delta))
                if stops.hit:
                    break
            owed = reply_stream.feed("" if stops.hit else stops.flush())
            rest, reply = reply_stream.finish(truncated=not stops.hit and _finish(generation) == "length")
            for delta in owed + rest:
                yield _event(chunk_body(rid, model, delta))
            self.count(tool_calls=len(reply.tool_calls), tool_parse_failures=int(reply.failed))
            reason = "tool_calls" if reply.tool_calls else "stop" if stops.hit else _finish(generation)
            yield _event(chunk_body(rid, model, {}, reason))
            if request.include_usage:
                yield _event({**chunk_body(rid, model, {}), "choices": [], "usage": usage(prompt_tokens, count)})
            yield b"data: [DONE]\n\n"
            finished = True
        except RuntimeError as exc:  # the headers are gone: report the failure inside the stream
            yield _event(ApiError(500, str(exc), kind="server_error").body())
            finished = True
        finally:
            generation.cancelled.set()  # the row leaves the batch at its next token (a no-op once it ended)
            if not finished:  # the client went away: Starlette cancelled this stream
                self.count(client_disconnects=1)


class _LoopEvents:
    """A request's event queue when it is served on an event loop: the engine's thread puts, the loop awaits."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.queue = loop, asyncio.Queue()

    def put(self, item: tuple[str, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting any more
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    async def get(self) -> tuple[str, Any]:
        return await self.queue.get()


async def _tokens(generation: GenerationRequest) -> AsyncIterator[int]:
    while (ids := generation.unpack(*await generation.events.get())) is not None:
        for token in ids:
            yield token


def _event(body: dict) -> bytes:
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _finish(generation: GenerationRequest) -> str:
    return "stop" if generation.finish_reason in ("stop", "cancelled") else "length"


def _protocol_with_header_deadline(seconds: float) -> type:
    """uvicorn's httptools protocol with a deadline for each request's headers: from the connection's
    start, and from each response (which also bounds an idle keep-alive connection)."""

    class Protocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            waiting = bool(self.pipeline)  # a pipelined request whose headers are already in
            super().on_response_complete()
            if not waiting and not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            if not self.transport.is_closing():
                self.transport.close()

    return Protocol


class _Uvicorn(uvicorn.Server):
    """uvicorn's server without its own signal handling: ``serve_until_signalled`` (or the caller) owns the
    signals, and a thread that is not the main one serves the same way."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


def serve_until_signalled(server: ChatServer, announce: Any) -> None:
    """Serve until SIGINT/SIGTERM, then shut down cleanly (requests in flight are answered first)."""
    def on_signal(signum: int, frame: Any) -> None:
        server.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    announce(f"Serving on {server.url}  (model {server.chat.name}, template {server.chat.template.origin}; "
             f"Ctrl-C stops)")
    started = time.perf_counter()
    server.serve()
    announce(f"Stopped after {time.perf_counter() - started:.0f} s")
