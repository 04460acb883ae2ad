"""`roma serve --http`: the OpenAI HTTP API over the chat's Engine, for the tools that already speak it (the
`openai` client, LangChain, curl, chat UIs). Starlette and uvicorn, server-sent events for streaming; both come
with the `serve` extra (pip install 'roma-runtime[serve]'), and nothing else in the runtime needs them.

Endpoints:
    POST /v1/chat/completions   messages -> the model's chat template -> one answer; "stream": true sends
                                chat.completion.chunk events ("data: {...}" lines, then "data: [DONE]")
    POST /v1/completions        a raw continuation of "prompt" (text, or token ids); streamed the same way
    GET  /v1/models             the base model and every loaded LoRA adapter, each its own model id
    GET  /health                {"status": "ok"}: no key needed, for load balancers and probes
    GET  /metrics               Prometheus text: tokens/s, queue, KV memory, LoRA swaps, core cycles

A request picks its LoRA adapter by "model": the base model's id runs without one, an adapter's name runs
under it; the slots are resident, so a swap between requests is a register write on the core.

Sampling: temperature, top_p, top_k, min_p, repeat_penalty (or repetition_penalty), repeat_last_n, seed, stop,
max_tokens (or max_completion_tokens). Options a request leaves out take the server's (`roma serve`'s sampling
options); max_tokens above the server's --max-tokens is lowered to it. Options the engine does not have
(n > 1, logprobs, tools, frequency or presence penalties other than 0, ...) are refused with a 400, never
ignored silently.

One core: a single worker thread runs every generation, one at a time, in the order they came; up to
--max-queue requests wait behind the running one and the next is answered 503 at once. A client that goes
away (mid-stream or while waiting) is noticed within a token and its generation stops, freeing the core.

Prefix reuse: the worker keeps up to --sessions KV caches (Engine sessions) between requests. A request runs
in the session whose cached tokens are the longest prefix of its prompt (a conversation's next turn finds
its earlier turns there); when no session holds all of its tokens, it gets a fresh session (the least recently
used one is given back) into which the longest matching prefix any session holds is copied. usage.
prompt_tokens_details.cached_tokens says how many prompt tokens were not computed again.

Security: binds 127.0.0.1 unless --host says otherwise, and refuses a non-loopback address without an API key
(--api-key or ROMA_API_KEY) unless --insecure. With a key, every endpoint but /health needs it as
"Authorization: Bearer KEY". Request bodies, prompts and max_tokens are bounded; every refusal is an
OpenAI-style error object ({"error": {"message", "type", "param", "code"}}) with a 4xx status, and a bug is
a 500 with a one-line message (the traceback goes to the server's log only).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import math
import secrets
import socket
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field, replace

from . import kv
from .backends.base import Wrapper
from .engine import GenerationStats, common_prefix
from .errors import RomaError
from .generate import MAX_SEED, SamplingParams

SERVE_EXTRA = "pip install 'roma-runtime[serve]'"
API_KEY_ENV = "ROMA_API_KEY"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_MAX_QUEUE = 8
DEFAULT_SESSIONS = 4
DEFAULT_MAX_REQUEST_BYTES = 1 << 20
MAX_STOPS = 16  # stop strings per request
MAX_STOP_CHARS = 512
MAX_REPEAT_LAST_N = 1 << 16
POLL_SECONDS = 0.1  # how often a waiting request looks whether its client is still there
MAX_CONNECTIONS = 128  # open connections uvicorn serves at once (plus --max-queue)


def require_asgi():
    """(starlette, uvicorn), or RomaError naming the extra that brings them."""
    try:
        import starlette
        import uvicorn
    except ImportError as e:
        raise RomaError(f"roma serve --http needs Starlette and uvicorn, and {e.name or 'one of them'} is not "
                        "installed", hint=f"{SERVE_EXTRA} (or pip install starlette uvicorn)") from None
    return starlette, uvicorn


# --- errors --------------------------------------------------------------------------------------------------


class ApiError(Exception):
    """A refusal as the OpenAI API words it: HTTP status and {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _bad(param: str | None, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _from_roma(e: RomaError, status: int = 400, param: str | None = None, code: str | None = None) -> ApiError:
    text = e.message if not e.hint else f"{e.message} ({e.hint})"
    kind = "invalid_request_error" if status < 500 else "server_error"
    return ApiError(status, text, type=kind, param=param, code=code)


# --- options -------------------------------------------------------------------------------------------------


@dataclass
class ServeOptions:
    """What `roma serve --http` was started with (everything but the address)."""

    model_id: str
    api_key: str | None = None
    max_queue: int = DEFAULT_MAX_QUEUE  # requests that may wait behind the running one
    max_tokens: int = SamplingParams().max_tokens  # the most tokens one answer may have
    defaults: SamplingParams = field(default_factory=SamplingParams)  # for options a request leaves out
    context: int | None = None  # KV positions of each cached session (None: the engine's longest)
    sessions: int = DEFAULT_SESSIONS  # KV caches kept between requests, for prefix reuse
    max_prompt_tokens: int | None = None  # None: what the session's context holds
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES

    def check(self) -> "ServeOptions":
        for name, value, low in (("--max-queue", self.max_queue, 0), ("--max-tokens", self.max_tokens, 1),
                                 ("--sessions", self.sessions, 1),
                                 ("--max-request-bytes", self.max_request_bytes, 256)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise RomaError(f"{name} must be a whole number >= {low} (got {value!r})")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise RomaError(f"--max-prompt-tokens must be at least 1 (got {self.max_prompt_tokens})")
        if self.context is not None and self.context < 2:
            raise RomaError(f"--context must be at least 2 tokens for a server (got {self.context})")
        if self.api_key is not None:
            check_api_key(self.api_key)
        if not isinstance(self.model_id, str) or not self.model_id.strip():
            raise RomaError("the served model needs a name", hint="--served-model-name NAME")
        return self


def check_api_key(key: str) -> str:
    if not key or not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
        raise RomaError("the API key must be printable ASCII without spaces, and not empty",
                        hint="for example: --api-key \"$(python -c 'import secrets; print(secrets.token_urlsafe())')\"")
    return key


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach: 127.0.0.0/8, ::1 and "localhost"."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, api_key: str | None, insecure: bool) -> None:
    """The server refuses to listen beyond this machine without an API key unless told --insecure."""
    if not is_loopback(host) and api_key is None and not insecure:
        raise RomaError(f"refusing to serve on {host} without an API key: anyone who can reach this address "
                        "could use the model",
                        hint=f"set a key (--api-key KEY, or the environment variable {API_KEY_ENV}); or pass "
                             "--insecure if the network is yours alone; or keep the default --host 127.0.0.1")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port); RomaError when the address is taken."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise RomaError(f"--port must be in 0..65535 (got {port!r})")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise RomaError(f"cannot listen on {host}: {e.strerror or e}",
                        hint="give an IP address or a known host name") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise RomaError(f"cannot listen on {host}:{port}: {e.strerror or e}",
                        hint="choose another --port (0 picks a free one), or stop what holds this one") from None
    sock.setblocking(False)
    return sock


# --- requests ------------------------------------------------------------------------------------------------


@dataclass
class CompletionRequest:
    """A checked request: what to run and how to answer."""

    kind: str  # "chat" or "completion"
    model: str
    adapter: str | None
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False
    messages: list[dict] | None = None
    prompt: str | list[int] | None = None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


class _Body:
    """The request's JSON object, read field by field with OpenAI-style errors naming the field."""

    def __init__(self, body):
        if not isinstance(body, dict):
            raise _bad(None, f"the request body must be a JSON object, not {_json_kind(body)}", "invalid_type")
        self.d = body

    def value(self, *names):
        """(name, value) of the first of `names` present and not null; (names[0], None) if none is."""
        for name in names:
            if self.d.get(name) is not None:
                return name, self.d[name]
        return names[0], None

    def integer(self, *names, low=None, high=None):
        name, v = self.value(*names)
        if v is None:
            return None
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if not _is_int(v):
            raise _bad(name, f"'{name}' must be an integer, not {_json_kind(v)}", "invalid_type")
        if (low is not None and v < low) or (high is not None and v > high):
            raise _bad(name, f"'{name}' is {v}, outside {low if low is not None else '-inf'}.."
                             f"{high if high is not None else 'inf'}")
        return v

    def number(self, *names, check=None, what=""):
        name, v = self.value(*names)
        if v is None:
            return None
        if not _is_number(v):
            raise _bad(name, f"'{name}' must be a finite number, not {_json_kind(v)}", "invalid_type")
        if check is not None and not check(v):
            raise _bad(name, f"'{name}' is {v:g}; it must be {what}")
        return float(v)

    def boolean(self, name) -> bool | None:
        v = self.d.get(name)
        if v is None:
            return None
        if not isinstance(v, bool):
            raise _bad(name, f"'{name}' must be true or false, not {_json_kind(v)}", "invalid_type")
        return v

    def unsupported(self, name, allowed=(None,)) -> None:
        """Refuse an OpenAI option the engine cannot honour, unless it holds a value that changes nothing."""
        v = self.d.get(name)
        if any(v == a and type(v) is type(a) for a in allowed):
            return
        raise _bad(name, f"'{name}' is not supported by this server", "unsupported_value")


def _json_kind(v) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(v), type(v).__name__)


def _text(v, what: str, param: str) -> str:
    if not isinstance(v, str):
        raise _bad(param, f"{what} must be a string, not {_json_kind(v)}", "invalid_type")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(param, f"{what} contains a lone surrogate, which is not valid Unicode text") from None
    return v


def _sampling(b: _Body, options: ServeOptions) -> SamplingParams:
    """The request's sampling options over the server's defaults; max_tokens at most the server's."""
    p = replace(options.defaults, stop=list(options.defaults.stop))
    asked = b.integer("max_tokens", "max_completion_tokens", low=1)
    p.max_tokens = min(asked if asked is not None else options.defaults.max_tokens, options.max_tokens)
    t = b.number("temperature", check=lambda v: v >= 0, what=">= 0 (0 is greedy)")
    if t is not None:
        p.temperature = t
    top_p = b.number("top_p", check=lambda v: 0 < v <= 1, what="in (0, 1]")
    if top_p is not None:
        p.top_p = top_p
    top_k = b.integer("top_k", low=0, high=1 << 31)
    if top_k is not None:
        p.top_k = top_k
    min_p = b.number("min_p", check=lambda v: 0 <= v < 1, what="in [0, 1)")
    if min_p is not None:
        p.min_p = min_p
    rp = b.number("repeat_penalty", "repetition_penalty", check=lambda v: v > 0, what="> 0 (1 is off)")
    if rp is not None:
        p.repetition_penalty = rp
    last_n = b.integer("repeat_last_n", low=0, high=MAX_REPEAT_LAST_N)
    if last_n is not None:
        p.repeat_last_n = last_n
    seed = b.integer("seed", low=0, high=MAX_SEED)
    if seed is not None:
        p.seed = seed
    name, stop = b.value("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or len(stops) > MAX_STOPS:
            raise _bad(name, f"'stop' must be a string or an array of at most {MAX_STOPS} strings", "invalid_type")
        for s in stops:
            _text(s, "every stop sequence", name)
            if not s or len(s) > MAX_STOP_CHARS:
                raise _bad(name, f"stop sequences must be 1..{MAX_STOP_CHARS} characters long")
        p.stop = list(stops)
    for option in ("frequency_penalty", "presence_penalty"):
        if b.number(option) not in (None, 0.0):
            raise _bad(option, f"'{option}' is not supported (only 0); use repeat_penalty", "unsupported_value")
    if b.integer("n", low=1) not in (None, 1):
        raise _bad("n", "'n' must be 1: the server generates one answer per request", "unsupported_value")
    b.unsupported("logit_bias", (None, {}))
    try:
        p.validate()
    except RomaError as e:
        raise _from_roma(e) from None
    return p


def _stream_options(b: _Body) -> tuple[bool, bool]:
    stream = bool(b.boolean("stream"))
    opts = b.d.get("stream_options")
    if opts is None:
        return stream, False
    if not isinstance(opts, dict):
        raise _bad("stream_options", "'stream_options' must be an object", "invalid_type")
    usage = opts.get("include_usage")
    if usage is not None and not isinstance(usage, bool):
        raise _bad("stream_options", "'stream_options.include_usage' must be true or false", "invalid_type")
    return stream, bool(usage)


def _model(b: _Body, models: dict[str, str | None], default: str) -> tuple[str, str | None]:
    name, model = b.value("model")
    if model is None:
        return default, models[default]
    if not isinstance(model, str):
        raise _bad(name, f"'model' must be a string, not {_json_kind(model)}", "invalid_type")
    if model not in models:
        known = ", ".join(models)
        raise ApiError(404, f"The model '{model[:200]}' does not exist on this server (it serves: {known})",
                       param="model", code="model_not_found")
    return model, models[model]


CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def parse_chat(body, options: ServeOptions, models: dict[str, str | None]) -> CompletionRequest:
    b = _Body(body)
    model, adapter = _model(b, models, options.model_id)
    messages = b.d.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "'messages' must be a non-empty array of {role, content} objects",
                   "invalid_type" if not isinstance(messages, list) else "invalid_value")
    out = []
    for i, m in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(param, f"{param} must be an object with 'role' and 'content'", "invalid_type")
        role = m.get("role")
        if role not in CHAT_ROLES:
            raise _bad(f"{param}.role", f"{param}.role is {str(role)[:40]!r}; this server takes "
                                        f"{', '.join(CHAT_ROLES)} (no tools or functions)")
        if m.get("tool_calls") or m.get("function_call"):
            raise _bad(param, f"{param} holds tool calls, which this server does not support", "unsupported_value")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            texts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise _bad(f"{param}.content[{j}]", "only text content parts ({\"type\": \"text\", "
                                                        "\"text\": ...}) are supported", "unsupported_value")
                texts.append(_text(part.get("text"), f"{param}.content[{j}].text", f"{param}.content"))
            content = "\n".join(texts)
        out.append({"role": CHAT_ROLES[role], "content": _text(content, f"{param}.content", f"{param}.content")})
    for option, allowed in (("tools", (None, [])), ("functions", (None, [])), ("logprobs", (None, False)),
                            ("top_logprobs", (None, 0)), ("tool_choice", (None, "none", "auto")),
                            ("parallel_tool_calls", (None, True, False)), ("audio", (None,)),
                            ("prediction", (None,)), ("modalities", (None, ["text"]))):
        b.unsupported(option, allowed)
    fmt = b.d.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise _bad("response_format", "only the text response format is supported", "unsupported_value")
    params = _sampling(b, options)
    stream, usage = _stream_options(b)
    return CompletionRequest("chat", model, adapter, params, stream, usage, messages=out)


def parse_completion(body, options: ServeOptions, models: dict[str, str | None],
                     vocab_size: int) -> CompletionRequest:
    b = _Body(body)
    model, adapter = _model(b, models, options.model_id)
    prompt = b.d.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # one prompt in a batch of one
    if isinstance(prompt, str):
        prompt = _text(prompt, "'prompt'", "prompt")
        if not prompt:
            raise _bad("prompt", "'prompt' is empty")
    elif isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        if min(prompt) < 0 or max(prompt) >= vocab_size:
            raise _bad("prompt", f"the prompt has token ids outside 0..{vocab_size - 1}")
    elif isinstance(prompt, list) and len(prompt) > 1:
        raise _bad("prompt", "one prompt per request: this server does not batch prompts", "unsupported_value")
    else:
        raise _bad("prompt", "'prompt' must be a non-empty string or an array of token ids",
                   "invalid_type" if prompt is not None else "missing_required_parameter")
    for option, allowed in (("echo", (None, False)), ("suffix", (None, "")), ("best_of", (None, 1)),
                            ("logprobs", (None,))):
        b.unsupported(option, allowed)
    params = _sampling(b, options)
    stream, usage = _stream_options(b)
    return CompletionRequest("completion", model, adapter, params, stream, usage, prompt=prompt)


# --- the worker ----------------------------------------------------------------------------------------------


class Job:
    """One request on its way through the worker. The worker thread emits events onto the request's event
    loop: ("start", None) when it begins, ("text", piece)*, then ("done", GenerationResult) or ("error",
    ApiError)."""

    def __init__(self, request: CompletionRequest, prompt_ids: list[int], loop: asyncio.AbstractEventLoop):
        self.id = secrets.token_hex(12)
        self.request, self.prompt_ids, self.loop = request, prompt_ids, loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.submitted = time.monotonic()
        self.client_checked = self.submitted  # when the handler last looked whether the client is still there
        self.started: float | None = None
        self.first_text: float | None = None
        self.finished = False  # the answer was delivered whole

    def emit(self, kind: str, value=None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancelled.set()


class QueueFull(Exception):
    pass


class PrefixCache:
    """The worker's sessions, kept between requests so a prompt that starts like an earlier one (the next turn
    of a conversation, the same system prompt) does not compute those tokens again. See the module doc."""

    def __init__(self, engine, size: int, capacity: int):
        self.engine, self.size, self.capacity = engine, size, capacity
        self.sessions: list = []  # least recently used first
        self.copied_tokens = 0

    def take(self, prompt: list[int], adapter: str | None):
        def match(s) -> int:
            return common_prefix(s.ids, prompt) if s.adapter == adapter and s.kv_valid else 0

        scored = [(match(s), s) for s in self.sessions]
        whole = [(n, s) for n, s in scored if n and n == len(s.ids)]
        best_n, best = max(scored, key=lambda t: t[0], default=(0, None))
        if whole:
            target = max(whole, key=lambda t: t[0])[1]
        elif best_n and len(self.sessions) >= self.size and best is self.sessions[0]:
            target = best  # the session to give back holds the best prefix: continue in it
        else:
            target = self._new(adapter, keep=best if best_n else None)
            if best_n:
                self._copy(best, target, best_n)
        self.sessions.remove(target)
        self.sessions.append(target)
        return target

    def _new(self, adapter, keep):
        """A fresh session under `adapter`; the least recently used one other than `keep` makes room."""
        victims = [s for s in self.sessions if s is not keep]
        if len(self.sessions) >= self.size and victims:
            self._evict(victims[0])
        while True:
            try:
                session = self.engine.new_session(self.capacity, adapter)
            except RomaError:  # the KV memory budget is spent: give back the least recently used session
                victims = [s for s in self.sessions if s is not keep]
                if not victims:
                    raise
                self._evict(victims[0])
                continue
            self.sessions.append(session)
            return session

    def _evict(self, session) -> None:
        self.sessions.remove(session)
        session.close()

    def _copy(self, source, target, n: int) -> None:
        try:
            keys, values = kv.cache_rows(source.cache, n)
            kv.write_cache_rows(target.cache, keys, values)
            target.ids = list(source.ids[:n])
            self.copied_tokens += n
        except RomaError:  # a backend whose cache cannot be read back: the prefix is computed again
            target.reset()

    def tokens_in_use(self) -> int:
        return sum(s.length for s in list(self.sessions))

    def tokens_reserved(self) -> int:
        return sum(s.capacity for s in list(self.sessions))

    def close(self) -> None:
        for s in list(self.sessions):
            self._evict(s)


class _CountingBackend(Wrapper):
    """The engine's backend, with the core's cycle counts per stage (last_cycles(), None on a backend without
    them) added up for the metrics."""

    def __init__(self, inner):
        super().__init__(inner)
        self.cycles: dict[str, int] = {}
        self.forward_calls = 0

    def forward(self, ids, cache):
        logits = self.inner.forward(ids, cache)
        self.forward_calls += 1
        for stage, n in (self.inner.last_cycles() or {}).items():
            self.cycles[str(stage)] = self.cycles.get(str(stage), 0) + int(n)
        return logits


class Metrics:
    """Counters and gauges for /metrics; the worker and the handlers add to them under one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.started = time.time()
        self.requests: dict[tuple[str, int], int] = {}
        self.rejected_queue_full = 0
        self.cancelled = 0
        self.generations = GenerationStats()  # every generation's tokens and seconds
        self.last_prefill_tps = self.last_decode_tps = 0.0
        self.ttft_sum = 0.0
        self.ttft_count = 0
        self.queue_wait_sum = 0.0
        self.queue_wait_count = 0
        self.lora_swaps = 0

    def count_request(self, endpoint: str, status: int) -> None:
        with self.lock:
            key = (endpoint, int(status))
            self.requests[key] = self.requests.get(key, 0) + 1

    def record(self, job: Job, result) -> None:
        with self.lock:
            self.generations.record(result)
            if result.prefill_seconds:
                self.last_prefill_tps = result.prefill_tokens_per_s
            if result.decode_seconds:
                self.last_decode_tps = result.decode_tokens_per_s
            if job.started is not None:
                self.queue_wait_sum += job.started - job.submitted
                self.queue_wait_count += 1
            if job.first_text is not None:
                self.ttft_sum += job.first_text - job.submitted
                self.ttft_count += 1
            if result.finish_reason == "interrupted":
                self.cancelled += 1


class Worker:
    """The one thread that runs the engine: takes jobs in arrival order, one at a time."""

    def __init__(self, engine, options: ServeOptions, metrics: Metrics, log):
        self.engine, self.options, self.metrics, self.log = engine, options, metrics, log
        self.capacity = session_capacity(engine, options)
        self.cache = PrefixCache(engine, options.sessions, self.capacity)
        self._cond = threading.Condition()
        self._pending: deque[Job] = deque()
        self.running: Job | None = None
        self._closed = False
        self._last_adapter = _UNSET
        self.thread = threading.Thread(target=self._loop, name="roma-http-worker", daemon=True)

    def start(self) -> None:
        self.thread.start()

    @property
    def queue_length(self) -> int:
        return len(self._pending)

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._closed:
                raise ApiError(503, "the server is shutting down", type="server_error", code="shutting_down")
            busy = self.running is not None or self._pending
            if busy and len(self._pending) >= self.options.max_queue:
                raise QueueFull()
            self._pending.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """The client is gone: drop the job if it waits, stop it at its next token if it runs."""
        with self._cond:
            job.cancelled.set()
            try:
                self._pending.remove(job)
            except ValueError:
                return
        with self.metrics.lock:
            self.metrics.cancelled += 1

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            for job in self._pending:
                job.cancelled.set()
            self._pending.clear()
            if self.running is not None:
                self.running.cancelled.set()
            self._cond.notify_all()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._pending.popleft()
                self.running = job
            try:
                self._run(job)
            except Exception as e:  # a bug: report it to this client, keep serving the others
                self.log("internal error in a generation:\n" + traceback.format_exc().rstrip())
                job.emit("error", ApiError(500, f"internal error: {type(e).__name__}", type="server_error",
                                           code="internal_error"))
            finally:
                with self._cond:
                    self.running = None

    def _run(self, job: Job) -> None:
        if job.cancelled.is_set():
            return
        req, engine = job.request, self.engine
        try:
            session = self.cache.take(job.prompt_ids, req.adapter)
            generation = engine.generate(job.prompt_ids, req.params, session=session)
        except RomaError as e:
            job.emit("error", _from_roma(e, 400))
            return
        if self._last_adapter is not _UNSET and req.adapter != self._last_adapter:
            with self.metrics.lock:
                self.metrics.lora_swaps += 1
        self._last_adapter = req.adapter
        job.started = time.monotonic()
        job.emit("start")
        pieces = iter(generation)
        error = None
        try:
            for piece in pieces:
                if job.first_text is None:
                    job.first_text = time.monotonic()
                job.emit("text", piece)
                if job.cancelled.is_set():
                    break
        except RomaError as e:
            error = _from_roma(e, 500)
        finally:
            pieces.close()  # a stopped generation ends here: its partial answer stays in the session
        result = generation.result
        self.metrics.record(job, result)
        if error is not None:
            self.log(f"error during a generation: {error.message}")
            job.emit("error", error)
        else:
            job.emit("done", result)


_UNSET = object()


def session_capacity(engine, options: ServeOptions) -> int:
    """KV positions per cached session: --context, else the engine's longest; with a KV memory budget, at most
    an equal share of it per session."""
    capacity = options.context or engine.max_context
    if capacity > engine.max_context:
        raise RomaError(f"--context {capacity} is above the {engine.max_context} tokens this model and backend hold")
    tokens = engine.kv_pool.tokens
    if tokens is not None:
        capacity = min(capacity, max(2, tokens // options.sessions))
    return capacity


# --- the application -----------------------------------------------------------------------------------------


FINISH = {"stop": "stop", "length": "length", "context": "length", "interrupted": "stop"}


class RomaHTTPServer:
    """The Starlette application over one Engine; `app` is the ASGI app, `serve(sock)` runs it with uvicorn."""

    def __init__(self, engine, options: ServeOptions, log=None):
        require_asgi()
        self.options = options.check()
        self.log = log or (lambda text: print(text, file=sys.stderr, flush=True))
        self.engine = engine
        self.metrics = Metrics()
        self.created = int(time.time())
        names = engine.lora_names()
        if options.model_id in names:
            raise RomaError(f"the served model name '{options.model_id}' is also the name of a LoRA adapter",
                            hint="name the adapter apart (--lora NAME=DIR) or choose --served-model-name")
        self.models: dict[str, str | None] = {options.model_id: None, **{n: n for n in names}}
        self.worker = Worker(engine, options, self.metrics, self.log)
        self.max_prompt = self.worker.capacity - 1
        if options.max_prompt_tokens is not None:
            self.max_prompt = min(self.max_prompt, options.max_prompt_tokens)
        self.fingerprint = f"fp_roma_{engine.backend.name}_{engine.numerics}"
        self.app = self._build_app()
        self.server = None  # the uvicorn.Server while serve() runs
        self.counting = _CountingBackend(engine.backend)  # until close(): the core's cycles for /metrics
        engine.backend = self.counting
        self.worker.start()

    # --- plumbing --------------------------------------------------------------------------------------

    def _build_app(self):
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.routing import Route

        def route(path, handler, method, name=None, auth=True):
            return Route(path, self._endpoint(handler, name or path, auth), methods=[method])

        routes = [
            route("/v1/chat/completions", self.chat_completions, "POST"),
            route("/v1/completions", self.completions, "POST"),
            route("/v1/models", self.list_models, "GET"),
            route("/v1/models/{model:path}", self.get_model, "GET", name="/v1/models/{model}"),
            route("/health", self.health, "GET", auth=False),
            route("/metrics", self.metrics_text, "GET"),
        ]

        async def http_error(request, exc):
            status = getattr(exc, "status_code", 500)
            message = {404: f"no such endpoint: {request.method} {request.url.path}",
                       405: f"{request.method} is not allowed on {request.url.path}"}.get(status, str(exc.detail))
            return self._error_response(ApiError(status, message, code="not_found" if status == 404 else None,
                                                 headers=dict(getattr(exc, "headers", None) or {})))

        async def any_error(request, exc):  # Starlette logs the traceback; the client gets one line
            return self._error_response(ApiError(500, f"internal error: {type(exc).__name__}", type="server_error",
                                                 code="internal_error"))

        return Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: any_error})

    def _endpoint(self, handler, name: str, auth: bool = True):
        async def endpoint(request):
            try:
                if auth:
                    self._authorize(request)
                response = await handler(request)
            except ApiError as e:
                response = self._error_response(e)
            except QueueFull:
                with self.metrics.lock:
                    self.metrics.rejected_queue_full += 1
                response = self._error_response(ApiError(
                    503, f"the server is busy: {self.worker.queue_length} requests are waiting for the core "
                         f"(--max-queue {self.options.max_queue}); try again shortly", type="server_error",
                    code="queue_full", headers={"Retry-After": "1"}))
            self.metrics.count_request(name, response.status_code)
            return response
        return endpoint

    def _error_response(self, e: ApiError):
        from starlette.responses import JSONResponse

        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    def _authorize(self, request) -> None:
        key = self.options.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(401, "Incorrect API key provided: send it as 'Authorization: Bearer KEY'" if given else
                           "You did not provide an API key: send it as 'Authorization: Bearer KEY'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def _json(self, request):
        limit = self.options.max_request_bytes
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise ApiError(413, f"the request body is over this server's limit of {limit} bytes",
                           code="request_too_large")
        from starlette.requests import ClientDisconnect

        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"the request body is over this server's limit of {limit} bytes",
                                   code="request_too_large")
                chunks.append(chunk)
        except ClientDisconnect:  # gone before its request was whole: nobody reads the answer
            raise ApiError(400, "the client went away before the request was whole", code="incomplete_request") \
                from None
        raw = b"".join(chunks)
        try:
            return json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            detail = f" ({e.msg} at line {e.lineno} column {e.colno})" if isinstance(e, json.JSONDecodeError) else ""
            raise ApiError(400, f"the request body is not valid JSON{detail}", code="invalid_json") from None

    # --- endpoints -------------------------------------------------------------------------------------

    async def health(self, request):
        from starlette.responses import JSONResponse

        return JSONResponse({"status": "ok"})

    def _model_card(self, name: str) -> dict:
        card = {"id": name, "object": "model", "created": self.created, "owned_by": "roma"}
        if self.models[name] is not None:
            card["parent"] = self.options.model_id
            card["root"] = self.options.model_id
        return card

    async def list_models(self, request):
        from starlette.responses import JSONResponse

        return JSONResponse({"object": "list", "data": [self._model_card(n) for n in self.models]})

    async def get_model(self, request):
        from starlette.responses import JSONResponse

        name = request.path_params["model"]
        if name not in self.models:
            raise ApiError(404, f"The model '{name[:200]}' does not exist on this server", param="model",
                           code="model_not_found")
        return JSONResponse(self._model_card(name))

    async def chat_completions(self, request):
        from starlette.concurrency import run_in_threadpool

        req = parse_chat(await self._json(request), self.options, self.models)
        prompt_ids = await run_in_threadpool(self._encode, req)
        return await self._complete(request, req, prompt_ids)

    async def completions(self, request):
        from starlette.concurrency import run_in_threadpool

        req = parse_completion(await self._json(request), self.options, self.models, self.engine.config.vocab_size)
        prompt_ids = await run_in_threadpool(self._encode, req)
        return await self._complete(request, req, prompt_ids)

    def _encode(self, req: CompletionRequest) -> list[int]:
        tok = self.engine.tokenizer
        try:
            if req.kind == "chat":
                ids = tok.encode_chat(req.messages, add_generation_prompt=True)
            elif isinstance(req.prompt, str):
                ids = tok.encode(req.prompt)
            else:
                ids = list(req.prompt)
        except RomaError as e:
            raise _from_roma(e, 400, "messages" if req.kind == "chat" else "prompt") from None
        if not ids:
            raise _bad("prompt", "the prompt encodes to no tokens")
        if len(ids) > self.max_prompt:
            raise ApiError(400, f"the prompt has {len(ids)} tokens; this server takes at most {self.max_prompt} "
                                f"(the context holds {self.worker.capacity}, and one token must be left to answer)",
                           param="messages" if req.kind == "chat" else "prompt", code="context_length_exceeded")
        return ids

    async def _complete(self, request, req: CompletionRequest, prompt_ids: list[int]):
        from starlette.responses import JSONResponse, StreamingResponse

        job = Job(req, prompt_ids, asyncio.get_running_loop())
        self.worker.submit(job)  # QueueFull: 503
        try:
            kind, value = await self._next_event(request, job)  # waits in the queue; "start" or "error"
        except BaseException:
            self.worker.cancel(job)
            raise
        if kind == "error":
            raise value
        if kind == "gone":
            return JSONResponse({}, status_code=499)  # nobody reads it; recorded in the metrics as 499
        if req.stream:
            return StreamingResponse(self._sse(request, job), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        pieces = []
        try:
            while True:
                kind, value = await self._next_event(request, job)
                if kind == "text":
                    pieces.append(value)
                elif kind == "done":
                    job.finished = True
                    return JSONResponse(self._final_object(job, value, "".join(pieces)))
                elif kind == "error":
                    raise value
                else:
                    return JSONResponse({}, status_code=499)
        finally:
            if not job.finished:
                self.worker.cancel(job)

    async def _next_event(self, request, job: Job):
        """The job's next event; ("gone", None) as soon as its client disconnected (the job is cancelled). The
        client is looked at every POLL_SECONDS, whether events are flowing (an answer running) or not (waiting
        in the queue)."""
        while True:
            now = time.monotonic()
            if now - job.client_checked >= POLL_SECONDS:
                job.client_checked = now
                if await request.is_disconnected():
                    self.worker.cancel(job)
                    return "gone", None
            try:
                return await asyncio.wait_for(job.events.get(), POLL_SECONDS)
            except asyncio.TimeoutError:
                pass

    # --- answers ---------------------------------------------------------------------------------------

    def _usage(self, result) -> dict:
        prompt, completion = len(result.prompt_ids), len(result.ids)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": result.reused_tokens}}

    def _timings(self, job: Job, result) -> dict:
        return {"adapter": result.adapter, "reused_tokens": result.reused_tokens,
                "queue_seconds": round((job.started or job.submitted) - job.submitted, 6),
                "prefill_tokens": result.prefill_tokens, "prefill_tokens_per_s": result.prefill_tokens_per_s,
                "decode_tokens": result.decode_tokens, "decode_tokens_per_s": result.decode_tokens_per_s,
                "finish_reason": result.finish_reason}

    def _head(self, job: Job, obj: str) -> dict:
        prefix = "chatcmpl-" if job.request.kind == "chat" else "cmpl-"
        return {"id": prefix + job.id, "object": obj, "created": int(time.time()), "model": job.request.model,
                "system_fingerprint": self.fingerprint}

    def _final_object(self, job: Job, result, text: str) -> dict:
        finish = FINISH.get(result.finish_reason, "stop")
        if job.request.kind == "chat":
            d = self._head(job, "chat.completion")
            d["choices"] = [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                             "finish_reason": finish}]
        else:
            d = self._head(job, "text_completion")
            d["choices"] = [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]
        d["usage"] = self._usage(result)
        d["roma"] = self._timings(job, result)
        return d

    def _chunk(self, job: Job, text: str | None, finish: str | None, first: bool = False) -> dict:
        if job.request.kind == "chat":
            d = self._head(job, "chat.completion.chunk")
            delta = {} if text is None else {"content": text}
            if first:
                delta = {"role": "assistant", "content": ""}
            d["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        else:
            d = self._head(job, "text_completion")
            d["choices"] = [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]
        if job.request.include_usage:
            d["usage"] = None
        return d

    async def _sse(self, request, job: Job):
        def event(obj) -> bytes:
            return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n\n"

        try:
            if job.request.kind == "chat":
                yield event(self._chunk(job, None, None, first=True))
            while True:
                kind, value = await self._next_event(request, job)
                if kind == "text":
                    yield event(self._chunk(job, value, None))
                elif kind == "done":
                    yield event(self._chunk(job, None, FINISH.get(value.finish_reason, "stop")))
                    if job.request.include_usage:
                        last = self._head(job, "chat.completion.chunk" if job.request.kind == "chat"
                                          else "text_completion")
                        last.update(choices=[], usage=self._usage(value), roma=self._timings(job, value))
                        yield event(last)
                    yield b"data: [DONE]\n\n"
                    job.finished = True
                    return
                elif kind == "error":
                    yield event(value.body())
                    yield b"data: [DONE]\n\n"
                    job.finished = True
                    return
                else:  # the client is gone
                    return
        finally:
            if not job.finished:  # a disconnect cancels this generator: stop the generation at once
                self.worker.cancel(job)

    # --- metrics ---------------------------------------------------------------------------------------

    async def metrics_text(self, request):
        from starlette.responses import Response

        return Response(self.render_metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def render_metrics(self) -> str:
        m, e, w = self.metrics, self.engine, self.worker
        out: list[str] = []

        def metric(name, kind, help_text, samples):
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                label = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
                out.append(f"{name}{{{label}}} {_num(value)}" if label else f"{name} {_num(value)}")

        token_bytes = kv.kv_token_bytes(e.config, e.kv_dtype)
        with m.lock:
            g = m.generations
            requests = sorted(m.requests.items())
            metric("roma_info", "gauge", "The served model, backend and numerics (always 1).",
                   [({"model": self.options.model_id, "backend": self.counting.name,
                      "numerics": e.numerics, "kv_dtype": e.kv_dtype}, 1)])
            metric("roma_requests_total", "counter", "HTTP requests answered, by endpoint and status code.",
                   [({"endpoint": k[0], "status": str(k[1])}, v) for k, v in requests])
            metric("roma_requests_rejected_queue_full_total", "counter",
                   "Requests answered 503 because the queue was full.", [({}, m.rejected_queue_full)])
            metric("roma_requests_cancelled_total", "counter",
                   "Generations stopped or dropped because their client went away.", [({}, m.cancelled)])
            metric("roma_generations_total", "counter", "Generations run on the core.", [({}, g.generations)])
            metric("roma_queue_length", "gauge", "Requests waiting for the core.", [({}, w.queue_length)])
            metric("roma_queue_capacity", "gauge", "Requests that may wait (--max-queue).",
                   [({}, self.options.max_queue)])
            metric("roma_requests_running", "gauge", "Requests on the core now (0 or 1).",
                   [({}, int(w.running is not None))])
            metric("roma_prompt_tokens_total", "counter", "Prompt tokens of all generations.", [({}, g.prompt_tokens)])
            metric("roma_prompt_tokens_reused_total", "counter",
                   "Prompt tokens whose KV cache was reused from an earlier request.", [({}, g.reused_tokens)])
            metric("roma_generated_tokens_total", "counter", "Tokens generated.", [({}, g.generated_tokens)])
            metric("roma_prefill_tokens_total", "counter", "Prompt tokens computed.", [({}, g.prefill_tokens)])
            metric("roma_prefill_seconds_total", "counter", "Seconds spent computing prompts.",
                   [({}, g.prefill_seconds)])
            metric("roma_decode_tokens_total", "counter", "Single-token forward passes.", [({}, g.decode_tokens)])
            metric("roma_decode_seconds_total", "counter", "Seconds spent in single-token forward passes.",
                   [({}, g.decode_seconds)])
            metric("roma_prefill_tokens_per_second", "gauge", "Prefill speed of the last generation.",
                   [({}, m.last_prefill_tps)])
            metric("roma_decode_tokens_per_second", "gauge", "Decode speed of the last generation.",
                   [({}, m.last_decode_tps)])
            metric("roma_time_to_first_token_seconds", "summary",
                   "From a request's arrival (after parsing) to its first text, queue time included.",
                   [])
            out.append(f"roma_time_to_first_token_seconds_sum {_num(m.ttft_sum)}")
            out.append(f"roma_time_to_first_token_seconds_count {m.ttft_count}")
            metric("roma_queue_wait_seconds", "summary", "Time requests waited for the core.", [])
            out.append(f"roma_queue_wait_seconds_sum {_num(m.queue_wait_sum)}")
            out.append(f"roma_queue_wait_seconds_count {m.queue_wait_count}")
            metric("roma_lora_swaps_total", "counter",
                   "Requests that ran under another LoRA adapter than the one before.", [({}, m.lora_swaps)])
        metric("roma_lora_adapters_loaded", "gauge", "LoRA adapters served as models.", [({}, len(self.models) - 1)])
        in_use = w.cache.tokens_in_use()
        metric("roma_kv_sessions", "gauge", "KV caches kept for prefix reuse.", [({}, len(w.cache.sessions))])
        metric("roma_kv_tokens_in_use", "gauge", "Token positions filled in the kept KV caches.", [({}, in_use)])
        metric("roma_kv_bytes_in_use", "gauge", "Bytes of KV cache filled (keys and values, all layers).",
               [({}, in_use * token_bytes)])
        metric("roma_kv_bytes_reserved", "gauge", "Bytes of KV cache allocated for the kept sessions.",
               [({}, w.cache.tokens_reserved() * token_bytes)])
        metric("roma_kv_tokens_copied_total", "counter", "Prefix tokens copied between sessions instead of computed.",
               [({}, w.cache.copied_tokens)])
        cycles = dict(self.counting.cycles)
        if cycles:
            metric("roma_core_cycles_total", "counter",
                   "Cycles the core counted (estimated FPGA cycles on the emulated board), by stage.",
                   [({"stage": k}, v) for k, v in sorted(cycles.items())])
            clock = self.counting.clock_mhz
            if clock:
                metric("roma_core_clock_mhz", "gauge", "The fabric clock the cycle counts are for.", [({}, clock)])
        metric("roma_uptime_seconds", "gauge", "Seconds since the server started.", [({}, time.time() - m.started)])
        return "\n".join(out) + "\n"

    # --- running ---------------------------------------------------------------------------------------

    def serve(self, sock: socket.socket, log_level: str = "warning") -> None:
        """Run until Ctrl-C (or stop()); the socket is bound and listening already (bind_socket)."""
        _, uvicorn = require_asgi()
        # Connections beyond the queue's need are refused by uvicorn itself (a plain 503): bounded resources.
        config = uvicorn.Config(self.app, log_level=log_level, lifespan="off", timeout_graceful_shutdown=3,
                                access_log=False, server_header=False,
                                limit_concurrency=MAX_CONNECTIONS + self.options.max_queue)
        self.server = uvicorn.Server(config)
        try:
            self.server.run(sockets=[sock])
        finally:
            self.close()

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True

    def close(self) -> None:
        self.worker.close()
        self.worker.cache.close()
        if self.engine.backend is self.counting:
            self.engine.backend = self.counting.inner


def _no_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _escape(value) -> str:
    return str(value).replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _num(v) -> str:
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, int):
        return str(v)
    return repr(float(v))


def start_in_thread(engine, options: ServeOptions, host: str = DEFAULT_HOST, port: int = 0, log=None):
    """(server, thread, port): a server on a free port in a daemon thread, for tests and notebooks. Stop it
    with server.stop() and thread.join()."""
    server = RomaHTTPServer(engine, options, log=log)
    sock = bind_socket(host, port)
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.serve, args=(sock,), name="roma-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while server.server is None or not server.server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RomaError("the HTTP server did not start")
        time.sleep(0.01)
    return server, thread, port
