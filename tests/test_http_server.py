"""`roma serve --http`: the OpenAI-compatible HTTP server, driven by the real `openai` client.

The server runs in a thread of this process on 127.0.0.1 and a free port, on the tiny random model through the
emulated board (the real roma_core C simulation, the default backend), with two real PEFT adapters served as
their own model ids. Every answer is checked against Engine.generate with the same prompt, options and
adapter, computed before the server starts (one engine, one core: nothing runs beside the server's worker),
and once against the `roma generate` command itself. Raw HTTP (http.client) covers what the client library
would not send: bad JSON, oversize bodies, a client that hangs up mid-stream, more clients than the queue.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HOST = REPO / "host"
if str(HOST) not in sys.path:
    sys.path.insert(0, str(HOST))

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from roma_runtime import http_server as hs  # noqa: E402
from roma_runtime.generate import SamplingParams  # noqa: E402

KEY = "test-key-0123456789"
MAX_TOKENS = 48  # the server's --max-tokens
QUESTION = "Hello there! What is a tiny model good for?"
SAMPLED = dict(temperature=0.9, top_p=0.9, seed=1234)
SAMPLED_EXTRA = dict(top_k=40, min_p=0.02, repeat_penalty=1.2, repeat_last_n=16)


@pytest.fixture(scope="module")
def adapters(tiny_models, tmp_path_factory):
    pytest.importorskip("peft")
    pytest.importorskip("torch")
    from tiny_models import write_peft_adapter

    root = tmp_path_factory.mktemp("http-lora")
    return {
        "a1": write_peft_adapter(tiny_models["hf"], root / "a1", 1, r=4, lora_alpha=8,
                                 target_modules=["q_proj", "v_proj"]),
        "a2": write_peft_adapter(tiny_models["hf"], root / "a2", 2, r=8, lora_alpha=16,
                                 target_modules=["o_proj", "down_proj", "up_proj"]),
    }


@pytest.fixture(scope="module")
def engine(tiny_models, tiny_build, adapters):
    import shutil

    if shutil.which("g++") is None:
        pytest.skip("the emulated board needs g++")
    from roma_runtime.engine import Engine

    e = Engine(str(tiny_models["q4_1"]), "emu", lora_slots=2, build=tiny_build)
    for name, folder in adapters.items():
        e.load_lora(name, str(folder))
    return e


def reference(engine, prompt, params: SamplingParams, adapter=None, chat=False):
    """Engine.generate on a fresh session: what the server must answer."""
    if chat:
        prompt = engine.tokenizer.encode_chat(prompt, add_generation_prompt=True)
    session = engine.new_session(adapter=adapter)
    try:
        return engine.generate(prompt, params, session=session).run()
    finally:
        session.close()


@pytest.fixture(scope="module")
def refs(engine):
    """Every expected answer, computed before the server takes the engine."""
    out = {}
    user = [{"role": "user", "content": QUESTION}]
    for model, adapter in (("tiny", None), ("a1", "a1"), ("a2", "a2")):
        out["greedy", model] = reference(engine, user, SamplingParams(max_tokens=12), adapter, chat=True)
        out["sampled", model] = reference(engine, user, SamplingParams(max_tokens=10, top_k=40, min_p=0.02,
                                                                       repetition_penalty=1.2, repeat_last_n=16,
                                                                       **SAMPLED), adapter, chat=True)
    out["completion"] = reference(engine, "Once upon a time", SamplingParams(max_tokens=16), "a1")
    out["completion_ids"] = reference(engine, [1, 2, 3, 400, 5000], SamplingParams(max_tokens=8), "a2")
    first = out["greedy", "tiny"]
    turn2 = user + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "Tell me more."}]
    out["turn2"] = reference(engine, turn2, SamplingParams(max_tokens=12), None, chat=True)
    out["turn2_messages"] = turn2
    stopped = out["greedy", "a2"].text
    out["stop_text"] = stopped[3:7] if len(stopped) > 8 else None
    return out


@pytest.fixture(scope="module")
def served(engine, refs):
    options = hs.ServeOptions(model_id="tiny", api_key=KEY, max_queue=1, max_tokens=MAX_TOKENS, sessions=3,
                              max_request_bytes=64 << 10)
    logs: list[str] = []
    server, thread, port = hs.start_in_thread(engine, options, log=logs.append)
    server.logs = logs
    server.port = port
    yield server
    server.stop()
    thread.join(timeout=15)
    assert not thread.is_alive()


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{served.port}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture
def slow_core(served, monkeypatch):
    """Every forward pass takes 30 ms longer: answers last long enough to be interrupted or queued behind."""
    inner = served.counting.inner
    forward = inner.forward

    def slow(ids, cache):
        time.sleep(0.03)
        return forward(ids, cache)

    monkeypatch.setattr(inner, "forward", slow)
    return served


def raw(served, method, path, body=None, headers=None, key=KEY, timeout=30):
    """(status, parsed JSON or text) over a plain HTTP connection."""
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=timeout)
    h = {"Content-Type": "application/json"}
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    h.update(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    conn.request(method, path, body=body, headers=h)
    resp = conn.getresponse()
    data = resp.read().decode("utf-8")
    conn.close()
    try:
        return resp.status, json.loads(data)
    except ValueError:
        return resp.status, data


def chat_body(**kw):
    body = {"model": "tiny", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 12}
    body.update(kw)
    return body


# --- answers -------------------------------------------------------------------------------------------------


def test_models_lists_the_base_and_every_adapter(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny", "a1", "a2"]
    assert client.models.retrieve("a2").id == "a2"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("a3")


@pytest.mark.parametrize("model", ["tiny", "a1", "a2"])
def test_chat_answers_equal_engine_generate_streamed_and_not(client, refs, model):
    messages = [{"role": "user", "content": QUESTION}]
    want = refs["greedy", model]
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0)
    assert r.object == "chat.completion" and r.model == model
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == want.text
    assert r.choices[0].finish_reason == ("length" if want.finish_reason == "length" else "stop")
    assert r.usage.prompt_tokens == len(want.prompt_ids) and r.usage.completion_tokens == len(want.ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=12, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.model == model for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.text and len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [r.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want.ids)
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == len(want.prompt_ids) - 1  # the same prompt again


@pytest.mark.parametrize("model", ["tiny", "a2"])
def test_sampling_options_reproduce_engine_generate(client, refs, model):
    want = refs["sampled", model]
    messages = [{"role": "user", "content": QUESTION}]
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=10, extra_body=SAMPLED_EXTRA,
                                       **SAMPLED)
    assert r.choices[0].message.content == want.text
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=10, stream=True,
                                            extra_body=SAMPLED_EXTRA, **SAMPLED)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == want.text


def test_completions_equal_engine_generate_with_text_ids_and_stop(client, refs):
    want = refs["completion"]
    r = client.completions.create(model="a1", prompt="Once upon a time", max_tokens=16, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text == want.text
    assert r.usage.prompt_tokens == len(want.prompt_ids) and r.usage.completion_tokens == len(want.ids)
    stream = client.completions.create(model="a1", prompt="Once upon a time", max_tokens=16, stream=True)
    assert "".join(c.choices[0].text for c in stream) == want.text
    want = refs["completion_ids"]
    r = client.completions.create(model="a2", prompt=[1, 2, 3, 400, 5000], max_tokens=8)
    assert r.choices[0].text == want.text and r.usage.prompt_tokens == 5
    stop = refs["stop_text"]
    if stop:
        r = client.chat.completions.create(model="a2", messages=[{"role": "user", "content": QUESTION}],
                                           max_tokens=12, stop=[stop])
        full = refs["greedy", "a2"].text
        assert r.choices[0].message.content == full[:full.index(stop)] and r.choices[0].finish_reason == "stop"


def test_a_conversation_reuses_the_kv_cache_of_its_earlier_turns(client, refs):
    first = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": QUESTION}],
                                           max_tokens=12)
    second = client.chat.completions.create(model="tiny", messages=refs["turn2_messages"], max_tokens=12)
    assert second.choices[0].message.content == refs["turn2"].text  # the same answer as computed afresh
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens <= cached < second.usage.prompt_tokens


def test_the_answer_equals_roma_generate_with_the_same_adapter_and_options(client, tiny_models, adapters):
    from conftest import cli_env

    cmd = [sys.executable, "-m", "roma_runtime.cli", "generate", "--chat", QUESTION, "--model",
           str(tiny_models["q4_1"]), "--backend", "emu", "--lora", f"a1={adapters['a1']}", "--max-tokens", "10",
           "--json", "--threads", "1", *sum(([f"--{k.replace('_', '-')}", str(v)] for k, v in SAMPLED.items()), []),
           "--top-k", "40", "--min-p", "0.02", "--repeat-penalty", "1.2", "--repeat-last-n", "16"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), cwd=str(REPO), timeout=300)
    assert done.returncode == 0, done.stderr
    cli = json.loads(done.stdout)
    assert cli["adapter"] == "a1"
    r = client.chat.completions.create(model="a1", messages=[{"role": "user", "content": QUESTION}],
                                       max_tokens=10, extra_body=SAMPLED_EXTRA, **SAMPLED)
    assert r.choices[0].message.content == cli["text"] and r.usage.completion_tokens == len(cli["ids"])


def test_max_tokens_above_the_server_limit_is_lowered_to_it(client):
    r = client.completions.create(model="tiny", prompt="Count:", max_tokens=100_000, temperature=0)
    assert r.usage.completion_tokens <= MAX_TOKENS
    if r.choices[0].finish_reason == "length":
        assert r.usage.completion_tokens == MAX_TOKENS


def test_the_prefix_cache_continues_copies_and_gives_back_sessions(tiny_models, adapters):
    """PrefixCache on its own engine (the ref backend: nothing shared with the served one)."""
    from roma_runtime.engine import Engine, common_prefix

    e = Engine(str(tiny_models["q4_1"]), "ref", lora_slots=1)
    e.load_lora("a1", str(adapters["a1"]))
    tok = e.tokenizer
    first = tok.encode_chat([{"role": "user", "content": "Hello there!"}])
    cache = hs.PrefixCache(e, 2, 128)
    s1 = cache.take(first, None)
    result = e.generate(first, SamplingParams(max_tokens=4), session=s1).run()
    longer = first + result.ids[:-1] + tok.encode(" and more")
    assert cache.take(longer, None) is s1  # all of s1 is a prefix of the prompt: continue in it
    other = tok.encode_chat([{"role": "user", "content": "Something else entirely"}])
    shared = common_prefix(first, other)
    s2 = cache.take(other, None)  # shares the template's start with s1: a new session with that prefix copied
    assert s2 is not s1 and s2.ids == first[:shared] and cache.copied_tokens == shared > 0
    assert s1.ids[:len(first)] == first  # s1 keeps its own conversation
    s3 = cache.take(first, "a1")  # another adapter never reuses rows made under the base model
    assert s3.adapter == "a1" and s3.ids == [] and s3 not in (s1, s2)
    assert len(cache.sessions) == 2 and s1 not in cache.sessions  # s1 was the least recently used
    assert cache.tokens_in_use() == s2.length + s3.length
    one = hs.PrefixCache(e, 1, 128)
    s = one.take(first, None)
    e.generate(first, SamplingParams(max_tokens=2), session=s).run()
    assert one.take(other, None) is s  # one session: the prompt continues in it from the shared prefix
    cache.close()
    one.close()
    assert cache.sessions == [] and e.kv_pool.used == 0


# --- refusals ------------------------------------------------------------------------------------------------


def check_error(status, body, want_status, code=None, param=None):
    assert status == want_status, body
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert "Traceback" not in err["message"]
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err


def test_bad_json_bad_options_and_unknown_things_get_openai_errors(served):
    path = "/v1/chat/completions"
    check_error(*raw(served, "POST", path, b"{not json"), 400, "invalid_json")
    check_error(*raw(served, "POST", path, b"\xff\xfe"), 400, "invalid_json")
    check_error(*raw(served, "POST", path, b'{"max_tokens": NaN}'), 400, "invalid_json")
    check_error(*raw(served, "POST", path, [1, 2]), 400, "invalid_type")
    check_error(*raw(served, "POST", path, chat_body(model="gpt-4")), 404, "model_not_found", "model")
    check_error(*raw(served, "POST", path, chat_body(messages=[])), 400, param="messages")
    check_error(*raw(served, "POST", path, chat_body(messages="hi")), 400, param="messages")
    check_error(*raw(served, "POST", path, chat_body(messages=[{"role": "tool", "content": "x"}])), 400,
                param="messages[0].role")
    check_error(*raw(served, "POST", path, chat_body(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}])), 400, "unsupported_value")
    for field, value, code in (("temperature", -1, "invalid_value"), ("temperature", "hot", "invalid_type"),
                               ("top_p", 0, "invalid_value"), ("top_p", 1.5, "invalid_value"),
                               ("top_k", -3, "invalid_value"), ("min_p", 1, "invalid_value"),
                               ("max_tokens", 0, "invalid_value"), ("max_tokens", True, "invalid_type"),
                               ("max_tokens", 2.5, "invalid_type"), ("seed", -1, "invalid_value"),
                               ("seed", 1 << 70, "invalid_value"), ("repeat_penalty", 0, "invalid_value"),
                               ("stop", ["x"] * 40, "invalid_type"), ("stop", [""], "invalid_value"),
                               ("stop", 5, "invalid_type"), ("n", 2, "unsupported_value"),
                               ("logprobs", True, "unsupported_value"),
                               ("frequency_penalty", 0.5, "unsupported_value"),
                               ("tools", [{"type": "function"}], "unsupported_value"),
                               ("stream", "yes", "invalid_type"),
                               ("response_format", {"type": "json_object"}, "unsupported_value")):
        check_error(*raw(served, "POST", path, chat_body(**{field: value})), 400, code, field)
    check_error(*raw(served, "POST", "/v1/completions", {"model": "tiny", "prompt": [1, -2]}), 400, param="prompt")
    check_error(*raw(served, "POST", "/v1/completions", {"model": "tiny", "prompt": ["a", "b"]}), 400,
                "unsupported_value", "prompt")
    check_error(*raw(served, "POST", "/v1/completions", {"model": "tiny", "prompt": "x", "echo": True}),
                400,
                "unsupported_value", "echo")
    check_error(*raw(served, "POST", "/v1/completions", {"model": "tiny"}), 400, param="prompt")
    check_error(*raw(served, "POST", path, b"x" * (70 << 10)), 413, "request_too_large")
    check_error(*raw(served, "GET", "/v1/nothing"), 404, "not_found")
    check_error(*raw(served, "GET", path), 405)
    status, body = raw(served, "GET", "/health", key=None)
    assert status == 200 and body == {"status": "ok"}


def test_an_over_long_prompt_is_refused_before_it_runs(client, served):
    long_prompt = " ".join(["word"] * 400)  # the tiny model's context is 256 tokens
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="a1", messages=[{"role": "user", "content": long_prompt}])
    assert e.value.code == "context_length_exceeded" and "at most 255" in e.value.message
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt=long_prompt, stream=True)
    assert served.worker.queue_length == 0 and served.worker.running is None


def test_a_wrong_or_missing_api_key_is_refused(served, client):
    bad = openai.OpenAI(base_url=f"http://127.0.0.1:{served.port}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    check_error(*raw(served, "GET", "/v1/models", key=None), 401, "invalid_api_key")
    check_error(*raw(served, "GET", "/metrics", key=None), 401, "invalid_api_key")
    check_error(*raw(served, "POST", "/v1/completions", {"prompt": "x"}, key=KEY + "x"), 401, "invalid_api_key")
    check_error(*raw(served, "GET", "/v1/models", headers={"Authorization": KEY}, key=None), 401)
    assert raw(served, "GET", "/health", key=None)[0] == 200


# --- the queue -----------------------------------------------------------------------------------------------


def test_a_client_that_drops_mid_stream_frees_the_core_at_once(served, client, slow_core):
    before = served.metrics.cancelled
    stream = client.chat.completions.create(model="a1", messages=[{"role": "user", "content": "Go on and on."}],
                                            max_tokens=MAX_TOKENS, stream=True)
    got = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            got += 1
            if got == 3:
                break
    stream.close()  # the client hangs up: 40-odd tokens (more than a second) were still to come
    t0 = time.monotonic()
    r = client.chat.completions.create(model="a2", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    elapsed = time.monotonic() - t0
    assert r.usage.completion_tokens == 3
    assert elapsed < 0.9, elapsed  # 3 tokens at 30 ms plus the prompt; not behind the dropped answer
    deadline = time.monotonic() + 5
    while served.metrics.cancelled == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert served.metrics.cancelled == before + 1


def test_a_client_that_gives_up_while_queued_or_while_answered_frees_its_place(served, slow_core):
    import socket

    def send(prompt, max_tokens):
        conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
        conn.request("POST", "/v1/completions", json.dumps({"model": "tiny", "prompt": prompt,
                                                           "max_tokens": max_tokens}),
                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
        return conn

    def hang_up(conn):
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()

    def wait_for(condition, seconds):
        deadline = time.monotonic() + seconds
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.01)
        return condition()

    worker, cancelled = served.worker, served.metrics.cancelled
    first = send("Once", 30)  # runs for about a second, not streamed
    assert wait_for(lambda: worker.running is not None, 5)
    second = send("Twice", 30)
    assert wait_for(lambda: worker.queue_length == 1, 5)  # waiting behind the first (the queue is full)
    hang_up(second)
    assert wait_for(lambda: worker.queue_length == 0, 1) and worker.running is not None  # gone; the first runs on
    status, body = raw(served, "POST", "/v1/completions", {"model": "tiny", "prompt": "Thrice", "max_tokens": 3})
    assert status == 200 and body["usage"]["completion_tokens"] == 3  # its place was free: queued, not refused
    assert json.loads(first.getresponse().read())["usage"]["completion_tokens"] == 30
    first.close()
    assert served.metrics.cancelled == cancelled + 1
    # a client of a plain (not streamed) answer that hangs up mid-answer stops it as a streaming one does
    fourth = send("Four", 40)
    assert wait_for(lambda: worker.running is not None, 5)
    time.sleep(0.2)
    hang_up(fourth)
    t0 = time.monotonic()
    assert wait_for(lambda: worker.running is None, 1), "the answer ran on for a client that is gone"
    assert time.monotonic() - t0 < 0.5
    assert wait_for(lambda: served.metrics.cancelled == cancelled + 2, 1)


def test_more_clients_than_the_queue_get_503_at_once(served, slow_core):
    results: list[tuple[int, dict, float]] = []
    lock = threading.Lock()

    def one():
        t0 = time.monotonic()
        status, body = raw(served, "POST", "/v1/completions",
                           {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 20})
        with lock:
            results.append((status, body, time.monotonic() - t0))

    rejected_before = served.metrics.rejected_queue_full
    threads = [threading.Thread(target=one) for _ in range(4)]
    threads[0].start()
    time.sleep(0.2)  # the first one runs (20 tokens, about 0.7 s); one may wait behind it (--max-queue 1)
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(60)
    statuses = sorted(s for s, _, _ in results)
    assert statuses == [200, 200, 503, 503], results
    for status, body, seconds in results:
        if status == 503:
            check_error(status, body, 503, "queue_full")
            assert "busy" in body["error"]["message"] and seconds < 0.5  # refused at once, not after waiting
        else:
            assert body["usage"]["completion_tokens"] == 20
    assert served.metrics.rejected_queue_full == rejected_before + 2


# --- metrics -------------------------------------------------------------------------------------------------


def test_metrics_are_prometheus_text_with_tokens_queue_kv_lora_and_cycles(served, client):
    client.chat.completions.create(model="a1", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    client.chat.completions.create(model="a2", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    status, text = raw(served, "GET", "/metrics")
    assert status == 200 and isinstance(text, str)
    values = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) roma_[a-z_]+ .+$", line), line
            continue
        m = re.match(r'^(roma_[a-z_]+)(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? (-?[0-9.e+-]+|nan|inf)$', line)
        assert m, line
        values[m.group(1) + (m.group(2) or "")] = float(m.group(4))
    assert values["roma_generated_tokens_total"] > 0 and values["roma_prompt_tokens_reused_total"] > 0
    assert values["roma_decode_tokens_per_second"] > 0 and values["roma_prefill_tokens_per_second"] > 0
    assert values["roma_lora_swaps_total"] >= 1 and values["roma_lora_adapters_loaded"] == 2
    assert values["roma_queue_length"] == 0 and values["roma_queue_capacity"] == 1
    assert values["roma_kv_bytes_in_use"] > 0 and 1 <= values["roma_kv_sessions"] <= 3
    assert values['roma_requests_total{endpoint="/v1/chat/completions",status="200"}'] >= 2
    cycles = {k: v for k, v in values.items() if k.startswith("roma_core_cycles_total")}
    assert cycles and sum(cycles.values()) > 0  # the emulated core counts its cycles per stage
    assert values["roma_core_clock_mhz"] > 0


# --- the command ---------------------------------------------------------------------------------------------


def test_roma_serve_http_refuses_unsafe_or_impossible_setups_before_loading(tiny_models):
    from conftest import cli_env

    env = cli_env()
    env.pop(hs.API_KEY_ENV, None)

    def serve(*args, extra_env=None):
        e = dict(env, **(extra_env or {}))
        return subprocess.run([sys.executable, "-m", "roma_runtime.cli", "serve", "--http",
                               "--model", str(tiny_models["q4_1"]), *args], capture_output=True, text=True,
                              env=e, cwd=str(REPO), timeout=60)

    r = serve("--host", "0.0.0.0")
    assert r.returncode == 2 and "refusing to serve on 0.0.0.0 without an API key" in r.stderr
    assert "--api-key" in r.stderr and "--insecure" in r.stderr and "Traceback" not in r.stderr
    r = serve("--host", "0.0.0.0", "--api-key", "has space")
    assert r.returncode == 2 and "API key must be printable ASCII" in r.stderr
    r = serve("--port", "70000")
    assert r.returncode == 2 and "--port must be in 0..65535" in r.stderr
    r = serve("--max-queue", "-1")
    assert r.returncode == 2 and "--max-queue" in r.stderr
    r = serve("--http", "--serial", "/dev/null")
    assert r.returncode == 2 and "not allowed with argument" in r.stderr
    # without the `serve` extra: a clear error naming it, and the rest of roma works
    blocked = ("import sys; sys.modules['starlette'] = None; sys.modules['uvicorn'] = None; "
               "from roma_runtime.cli import main; sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", blocked, "serve", "--http"], capture_output=True, text=True,
                       env=env, cwd=str(REPO), timeout=60)
    assert r.returncode == 2 and "pip install 'roma-runtime[serve]'" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-c", blocked, "tokenize", "Hello", "--model", str(tiny_models["q4_1"])],
                       capture_output=True, text=True, env=env, cwd=str(REPO), timeout=60)
    assert r.returncode == 0 and r.stdout.strip()


def test_roma_serve_http_end_to_end_with_a_key_from_the_environment(tiny_models, tiny_build, adapters):
    from conftest import ServerProcess, cli_env

    env = dict(cli_env(), **{hs.API_KEY_ENV: KEY})
    args = ["serve", "--http", "--port", "0", "--model", str(tiny_models["q4_1"]), "--backend", "emu",
            "--served-model-name", "tiny", "--lora", f"a1={adapters['a1']}", "--max-tokens", "6", "--threads", "1"]
    with ServerProcess(args, env) as server:
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/v1", server.line).group(1))
        assert "models: tiny, a1" in server.line and "API key required" in server.line
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=60)
        assert [m.id for m in c.models.list().data] == ["tiny", "a1"]
        r = c.chat.completions.create(model="a1", messages=[{"role": "user", "content": "Hi"}], max_tokens=50)
        assert r.usage.completion_tokens <= 6  # the server's --max-tokens
        rc, err = server.interrupt()
        assert rc == 0, err
        assert "stopped" in err and "Traceback" not in err
