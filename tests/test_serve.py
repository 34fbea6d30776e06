"""The OpenAI-compatible server, exercised with the real ``openai`` client over loopback HTTP."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import openai
import pytest

from tuneful.infer.generate import generate
from tuneful.infer.engine import GenerationEngine, GenerationRequest, QueueFull
from tuneful.serve.server import ChatServer, ServeSettings

QUESTION = [{"role": "user", "content": "What is the capital of Norland?"}]


_OPEN: list[openai.OpenAI] = []


@pytest.fixture()
def server(sandbox_chat):
    srv = ChatServer(sandbox_chat, ServeSettings(port=0, api_key="sekrit", max_batch=8, max_queue=32))
    thread = srv.start_in_thread()
    yield srv
    while _OPEN:  # unclosed clients would leave sockets to the garbage collector at interpreter exit
        _OPEN.pop().close()
    srv.stop()
    thread.join(10)


def client(srv: ChatServer, key: str = "sekrit") -> openai.OpenAI:
    _OPEN.append(openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0, timeout=30))
    return _OPEN[-1]


def raw_post(srv: ChatServer, body: bytes, key: str = "sekrit") -> tuple[int, dict]:
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("POST", "/v1/chat/completions", body, {"Authorization": f"Bearer {key}",
                                                        "Content-Type": "application/json"})
    try:
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def greedy(chat, messages, n: int) -> str:
    [out] = generate(chat.model, chat.tokenizer, [chat.prompt_ids(messages)], stop_ids=chat.stop_ids, max_new_tokens=n)
    return out.text


def test_plain_and_streaming_replies_match_local_generation(server, sandbox_chat):
    api = client(server)
    assert [m.id for m in api.models.list().data] == ["sandbox"]
    reply = api.chat.completions.create(model="sandbox", messages=QUESTION, max_tokens=12)
    expected = greedy(sandbox_chat, QUESTION, 12)
    assert reply.choices[0].message.content == expected and expected
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens == len(sandbox_chat.prompt_ids(QUESTION))
    assert 0 < reply.usage.completion_tokens <= 12
    stream = api.chat.completions.create(model="sandbox", messages=QUESTION, max_tokens=12, stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == reply.choices[0].finish_reason


def test_a_chats_next_turn_prefills_only_what_is_new(server, sandbox_chat):
    """The client resends the whole conversation each turn; the server reuses the keys and values of the turn before
    (``--prefix-cache-mb``, on by default) and answers as the model does on the whole prompt."""
    api = client(server)
    system = {"role": "system", "content": "You answer questions about the sandbox world, briefly and plainly."}
    conversation = [system, *QUESTION]
    before = _metrics(server)
    for follow_up in ("And its largest city?", "Thanks. Which animal lives there?"):
        reply = api.chat.completions.create(model="sandbox", messages=conversation, max_tokens=12)
        assert reply.choices[0].message.content == greedy(sandbox_chat, conversation, 12)
        conversation += [{"role": "assistant", "content": reply.choices[0].message.content},
                         {"role": "user", "content": follow_up}]
    last = api.chat.completions.create(model="sandbox", messages=conversation, max_tokens=12)
    assert last.choices[0].message.content == greedy(sandbox_chat, conversation, 12)
    after = _metrics(server)
    prompts = sum(len(sandbox_chat.prompt_ids(conversation[:n])) for n in (2, 4, 6))
    assert after["prefilled_tokens"] - before["prefilled_tokens"] < prompts / 2
    assert after["prefix_reused_tokens"] - before["prefix_reused_tokens"] > prompts / 2


def _metrics(srv: ChatServer) -> dict:
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=30)
    conn.request("GET", "/metrics", headers={"Authorization": "Bearer sekrit"})
    try:
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def test_stop_strings_cut_the_reply(server, sandbox_chat):
    prompt = [{"role": "user", "content": "Tell me about Norland."}]  # the base continues it with a sentence
    full = greedy(sandbox_chat, prompt, 12)
    assert len(full.split()) >= 3, full
    word = full.split()[1]
    reply = client(server).chat.completions.create(model="sandbox", messages=prompt, max_tokens=12, stop=[word])
    assert reply.choices[0].message.content == full[: full.index(word)]
    assert reply.choices[0].finish_reason == "stop"


def test_concurrent_requests_are_batched_and_answer_like_sequential_ones(server, sandbox_chat):
    questions = [[{"role": "user", "content": f"What is the capital of {name}?"}]
                 for name in ("Norland", "Bieth", "Maiport", "Ostra", "Vell", "Karn", "Dunmere", "Pell")]
    results: dict[int, str] = {}

    def ask(i: int) -> None:
        results[i] = client(server).chat.completions.create(model="sandbox", messages=questions[i],
                                                            max_tokens=10).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [results[i] for i in range(len(questions))] == [greedy(sandbox_chat, q, 10) for q in questions]
    assert max(server.engine.batches) > 1  # some requests were decoded together


def _greedy_ids(chat, prompt: list[int], n: int) -> list[int]:
    [out] = generate(chat.model, chat.tokenizer, [prompt], stop_ids=chat.stop_ids, max_new_tokens=n)
    return out.token_ids


def test_requests_join_a_running_batch_and_leave_it_as_they_end(sandbox_chat):
    """Continuous batching: a request submitted while another is decoding joins it at the next step (its
    prompt length differs: its cache rows are left-padded in), and every reply is token for token what it
    is alone; rows that end leave, the others go on."""
    from tuneful.infer.engine import Sampling

    engine = GenerationEngine(sandbox_chat, max_batch=8, batch_wait_s=0.0).start()
    try:
        long_prompt = sandbox_chat.prompt_ids([{"role": "user", "content": "Tell me everything about Norland and its "
                                                                           "flag, its animal and its capital city."}])
        short_prompt = sandbox_chat.prompt_ids(QUESTION)
        first = engine.submit(GenerationRequest(long_prompt, 40))
        stream = first.tokens()
        head = [next(stream) for _ in range(5)]  # the first request is decoding
        second = engine.submit(GenerationRequest(short_prompt, 8))
        third = engine.submit(GenerationRequest(short_prompt, 20, Sampling(0.8, 0.9), seed=7))
        assert head + list(stream) == _greedy_ids(sandbox_chat, long_prompt, 40)
        assert list(second.tokens()) == _greedy_ids(sandbox_chat, short_prompt, 8)
        sampled = list(third.tokens())
        assert 2 in engine.batches[5:] or 3 in engine.batches[5:]  # they shared steps with the running one
        again = engine.submit(GenerationRequest(short_prompt, 20, Sampling(0.8, 0.9), seed=7))
        assert list(again.tokens()) == sampled  # a seed reproduces a sampled reply, whatever shares its steps
    finally:
        engine.stop()


def test_malformed_requests_get_openai_style_errors(server):
    api = client(server)
    status, body = raw_post(server, b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]["message"] and body["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError, match="robot"):
        api.chat.completions.create(model="sandbox", messages=[{"role": "robot", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="context"):
        api.chat.completions.create(model="sandbox", messages=QUESTION, max_tokens=5000)
    with pytest.raises(openai.NotFoundError, match="serves 'sandbox'"):
        api.chat.completions.create(model="gpt-9", messages=QUESTION)
    with pytest.raises(openai.BadRequestError, match="unsupported parameter"):
        api.chat.completions.create(model="sandbox", messages=QUESTION, logprobs=True)
    with pytest.raises(openai.BadRequestError, match="last message"):
        api.chat.completions.create(model="sandbox", messages=[*QUESTION, {"role": "assistant", "content": "x"}])
    with pytest.raises(openai.AuthenticationError):
        client(server, key="wrong").models.list()
    status, body = raw_post(server, json.dumps({"model": "sandbox", "messages": QUESTION, "n": 3}).encode())
    assert status == 400 and body["error"]["param"] == "n"


def test_a_full_queue_is_refused_and_a_stopped_engine_refuses_work(sandbox_chat):
    engine = GenerationEngine(sandbox_chat, max_batch=1, max_queue=2)  # not started: nothing leaves the queue
    prompt = sandbox_chat.prompt_ids(QUESTION)
    engine.submit(GenerationRequest(prompt, 4))
    engine.submit(GenerationRequest(prompt, 4))
    with pytest.raises(QueueFull):
        engine.submit(GenerationRequest(prompt, 4))
    waiting = engine._waiting[0]
    engine.stop()
    with pytest.raises(RuntimeError, match="shutting down"):
        list(waiting.tokens())


def test_cli_serve_prints_the_contract_line_and_stops_cleanly_on_sigterm(tmp_path: Path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "tuneful.cli.main", "serve", "sandbox", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TQDM_DISABLE": "1"})
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Serving on" in line:
                break
        assert f"Serving on http://127.0.0.1:{port}" in lines[-1]
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0) as api:
            reply = api.chat.completions.create(model="sandbox", messages=QUESTION, max_tokens=4)
        assert reply.choices[0].message.role == "assistant"
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=30)[0]
        assert proc.returncode == 0 and "Stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()


def _raw(srv: ChatServer, head: bytes, body: bytes = b"") -> bytes:
    """One request written byte for byte on a fresh socket; what comes back before the server closes or 5 s pass."""
    import socket

    with socket.create_connection(srv.server_address[:2], timeout=5) as sock:
        sock.sendall(head + body)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and b"Connection: close" in b"".join(chunks):
                    break
        except TimeoutError:
            pass
    return b"".join(chunks)


def test_malformed_http_gets_a_4xx_and_a_keep_alive_connection_survives_a_refusal(server):
    """Issue 46: these used to get no response at all (a bad Content-Length, JSON nested 100k deep), or left the
    refused body on the connection for the next request to be read as its request line."""
    post = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sekrit\r\n"
    assert _raw(server, post + b"Content-Length: abc\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert _raw(server, post + b"Content-Length: -1\r\n\r\n").startswith(b"HTTP/1.1 400")
    deep = b"[" * 100_000 + b"]" * 100_000
    assert _raw(server, post + f"Content-Length: {len(deep)}\r\n\r\n".encode(), deep).startswith(b"HTTP/1.1 400")
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    body = json.dumps({"model": "sandbox", "messages": QUESTION, "max_tokens": 2}).encode()
    try:
        conn.request("POST", "/v1/chat/completions", body, {"Authorization": "Bearer wrong"})
        refused = conn.getresponse()
        assert refused.status == 401 and b"API key" in refused.read()
        conn.request("POST", "/v1/chat/completions", body, {"Authorization": "Bearer sekrit"})
        answer = conn.getresponse()
        assert answer.status == 200 and json.loads(answer.read())["choices"][0]["message"]["content"] is not None
    finally:
        conn.close()


@pytest.mark.parametrize("change, param", [
    ({"seed": 2**64}, "seed"),
    ({"seed": -1}, "seed"),
    ({"model": None}, "model"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "a string"}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                                                                              "properties": ["city"]}}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                                                                              "properties": {"city": "string"}}}}]},
     "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": "f"}},
     "tool_choice"),
])
def test_bad_fields_are_a_400_naming_them(server, change, param):
    body = {"model": "sandbox", "messages": QUESTION, "max_tokens": 2, **change}
    status, reply = raw_post(server, json.dumps({k: v for k, v in body.items() if v is not None}).encode())
    assert status == 400 and reply["error"]["param"] == param


def test_a_request_with_an_extreme_temperature_does_not_disturb_its_batch(server, sandbox_chat):
    """Issue 46: ``temperature: 1e-300`` overflowed the scores, and the other rows of its batch failed with it."""
    api = client(server)
    expected = greedy(sandbox_chat, QUESTION, 12)
    streamed: list[str] = []

    def stream() -> None:
        for chunk in api.chat.completions.create(model="sandbox", messages=QUESTION, max_tokens=12, stream=True):
            streamed.append(chunk.choices[0].delta.content or "" if chunk.choices else "")

    thread = threading.Thread(target=stream)
    thread.start()
    cold = api.chat.completions.create(model="sandbox", messages=QUESTION, max_tokens=12, temperature=1e-300, seed=3)
    thread.join(60)
    assert cold.choices[0].message.content == expected  # all but greedy
    assert "".join(streamed) == expected


def test_a_burst_of_64_clients_gets_answers_not_resets(server):
    """Issue 46: a listen backlog of 5 reset 33-48 of 64 simultaneous clients; each now gets a 200 or a 503."""
    statuses: list[int] = []
    errors: list[str] = []
    body = json.dumps({"model": "sandbox", "messages": QUESTION, "max_tokens": 2}).encode()

    def ask() -> None:
        try:
            statuses.append(raw_post(server, body)[0])
        except OSError as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=ask) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and len(statuses) == 64 and set(statuses) <= {200, 503}


@pytest.mark.parametrize("continuous", [True, False], ids=["continuous", "static"])
def test_a_request_that_fails_ends_alone(sandbox_chat, continuous: bool):
    """Isolation (issue 46): a row whose sampling cannot run (a seed its generator refuses; the server refuses it
    first, the engine does not rely on that) gets its own error; the rows beside it answer as if it was never there,
    in continuous batches and in the static ones of models whose cache cannot merge rows."""
    from tuneful.infer.engine import Sampling

    engine = GenerationEngine(sandbox_chat, max_batch=8, batch_wait_s=0.05)
    engine.continuous = continuous
    engine.start()
    try:
        prompt = sandbox_chat.prompt_ids(QUESTION)
        good = engine.submit(GenerationRequest(prompt, 10))
        bad = engine.submit(GenerationRequest(prompt, 10, Sampling(0.8, 1.0), seed=2**64))
        with pytest.raises(RuntimeError, match="generation failed for this request"):
            list(bad.tokens())
        assert list(good.tokens()) == _greedy_ids(sandbox_chat, prompt, 10)
        later = engine.submit(GenerationRequest(prompt, 10, Sampling(0.8, 1.0), seed=5))
        assert len(list(later.tokens())) > 0  # the engine goes on
    finally:
        engine.stop()


def test_a_full_queue_answers_503_with_retry_after(sandbox_chat):
    srv = ChatServer(sandbox_chat, ServeSettings(port=0, max_batch=1, max_queue=1, batch_wait_ms=0))
    thread = srv.start_in_thread()
    answers: list[tuple[int, str | None]] = []
    body = json.dumps({"model": "sandbox", "messages": QUESTION, "max_tokens": 40, "temperature": 0.8,
                       "seed": 1}).encode()

    def ask() -> None:
        host, port = srv.server_address[:2]
        conn = http.client.HTTPConnection(host, port, timeout=60)
        try:
            conn.request("POST", "/v1/chat/completions", body)
            response = conn.getresponse()
            response.read()
            answers.append((response.status, response.getheader("Retry-After")))
        finally:
            conn.close()

    try:
        threads = [threading.Thread(target=ask) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        srv.stop()
        thread.join(10)
    assert len(answers) == 8 and {status for status, _ in answers} <= {200, 503}
    refused = [retry for status, retry in answers if status == 503]
    assert refused and all(retry == "1" for retry in refused)


@pytest.fixture()
def strict_server(sandbox_chat):
    """A server whose deadlines are short enough to test (1 s for headers and for a body; 4 KiB bodies)."""
    srv = ChatServer(sandbox_chat, ServeSettings(port=0, api_key="sekrit", max_body_bytes=4096, idle_timeout_s=1.0))
    thread = srv.start_in_thread()
    yield srv
    srv.stop()
    thread.join(10)


def _closed_after(sock, seconds: float) -> tuple[bytes, float]:
    """What the server sends until it closes the connection (or ``seconds`` pass), and when it closed."""
    import time

    sock.settimeout(seconds)
    started, got = time.monotonic(), b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except TimeoutError:
        return got, float("inf")
    except ConnectionResetError:  # closed with bytes of ours unread: a reset, after what it sent
        pass
    return got, time.monotonic() - started


def test_slow_headers_and_idle_connections_are_closed_at_the_deadline(strict_server):
    """Issue 46: a client that connected and sent nothing, or headers a byte at a time, held its connection (and,
    on http.server, a thread) until it left. Each now has ``idle_timeout_s`` to finish a request's headers."""
    import socket

    with socket.create_connection(strict_server.server_address[:2]) as idle:
        assert _closed_after(idle, 5)[1] < 3
    with socket.create_connection(strict_server.server_address[:2]) as slow:
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        assert _closed_after(slow, 5)[1] < 3
    status, _ = raw_post(strict_server, json.dumps({"model": "sandbox", "messages": QUESTION, "max_tokens": 2}).encode())
    assert status == 200  # the server still serves


def test_a_body_that_stops_coming_is_a_408_and_one_over_the_limit_a_413_unread(strict_server):
    import socket

    post = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sekrit\r\n"
            b"Content-Type: application/json\r\n")
    with socket.create_connection(strict_server.server_address[:2]) as sock:
        sock.sendall(post + b"Content-Length: 100\r\n\r\n" + b'{"model": ')
        got, closed = _closed_after(sock, 5)
        assert got.startswith(b"HTTP/1.1 408") and b"did not arrive" in got and closed < 3
    with socket.create_connection(strict_server.server_address[:2]) as sock:
        sock.sendall(post + f"Content-Length: {50 << 20}\r\n\r\n".encode() + b"{" * 1000)  # 50 MB announced
        got, closed = _closed_after(sock, 5)
        assert got.startswith(b"HTTP/1.1 413") and b"connection: close" in got.lower() and closed < 1
    with socket.create_connection(strict_server.server_address[:2]) as sock:  # no Content-Length: counted as read
        sock.sendall(post + b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(b"400\r\n" + b" " * 1024 + b"\r\n"
                                                                            for _ in range(5)))
        got, _ = _closed_after(sock, 5)
        assert got.startswith(b"HTTP/1.1 413")


def test_the_key_is_checked_before_the_body_is_read(strict_server):
    """A wrong key is refused as soon as the headers are in: the body (announced, never sent) is not waited for."""
    import socket
    import time

    with socket.create_connection(strict_server.server_address[:2]) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
                     b"Content-Length: 2000\r\n\r\n")
        sock.settimeout(5)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 401") and time.monotonic() - started < 0.5


def test_a_streaming_client_that_leaves_frees_its_batch_row(tmp_path):
    """A random tiny model does not end its turn within 400 tokens (checked first), so its row would decode them
    all; closing the connection after the first tokens ends the row at its next token, and the server counts the
    disconnect."""
    import socket
    import time

    from tiny import save_tiny_model
    from tuneful.infer.chat_model import load_chat_model

    chat = load_chat_model(str(save_tiny_model(tmp_path / "model")), template="chatml", device="cpu")
    [alone] = generate(chat.model, chat.tokenizer, [chat.prompt_ids(QUESTION)], stop_ids=chat.stop_ids,
                       max_new_tokens=400)
    assert len(alone.token_ids) == 400
    srv = ChatServer(chat, ServeSettings(port=0))
    thread = srv.start_in_thread()
    try:
        body = json.dumps({"model": chat.name, "messages": QUESTION, "max_tokens": 400, "stream": True}).encode()
        with socket.create_connection(srv.server_address[:2]) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            got = b""
            while got.count(b"data: ") < 4:
                got += sock.recv(65536)
        deadline = time.monotonic() + 20
        while srv.metrics["client_disconnects"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the flag is seen at the row's next token: one step may still run after the count
        steps = len(srv.engine.batches)
        time.sleep(0.5)
        assert srv.metrics["client_disconnects"] == 1
        assert len(srv.engine.batches) == steps and steps < 200  # the row left; it did not decode its 400 tokens
    finally:
        srv.stop()
        thread.join(10)


@pytest.mark.parametrize("parameters", [
    {"type": "object", "properties": {"city": {"type": "strin"}}},
    {"type": "object", "properties": {"city": {"type": "string", "minLength": -1}}},
    {"type": "object", "properties": {"city": {"type": "string"}}, "additionalProperties": "no"},
])
def test_a_tool_schema_that_is_not_a_json_schema_is_a_400(server, parameters):
    body = {"model": "sandbox", "messages": QUESTION, "max_tokens": 2,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": parameters}}]}
    status, reply = raw_post(server, json.dumps(body).encode())
    assert status == 400 and reply["error"]["param"] == "tools" and "not a valid JSON schema" in reply["error"]["message"]
