"""Load on `roma serve --http`: N concurrent streaming clients against one client alone, in one run.

    PYTHONPATH=host python benchmarks/serve_load.py [--clients 4] [--seconds 20] [--max-tokens 48]
        [--model smollm2-135m] [--backend emu] [--json]

Starts the server as a subprocess on 127.0.0.1 (a free port, a random API key), then runs two phases of the
same length: one client alone, then --clients clients at once. Every client loops over streamed chat
completions of its own question (so a conversation's prompt is served from the KV cache after its first
request) until the phase's time is up, and the phase waits for the answers in flight. Traffic stays on the
loopback address; request loops are bounded by the phase time and by --max-requests per client.

Printed per phase: requests/s, time to first token (mean and median, queue wait included), tokens/s per client
while its answer streams (first to last token), tokens/s per client over the phase, and the server's tokens/s
in all; then the ratios of the N-client phase to the 1-client phase. One core serves one request at a time, so
expect requests/s and the server's tokens/s to hold, the streaming speed of an answer to hold, and the time to
first token to grow with the queue.

The clients speak HTTP and server-sent events with the standard library (http.client), so the figures measure
the server rather than a client library.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUESTIONS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain what a CPU cache is.",
    "Give me three tips for learning to cook.",
    "Why is the sky blue?",
    "What does a compiler do?",
    "Describe a cat to someone who has never seen one.",
    "How do plants make food?",
]


@dataclass
class Request:
    started: float
    first_token: float | None = None
    finished: float | None = None
    tokens: int = 0
    status: int = 0


@dataclass
class Phase:
    clients: int
    seconds: float
    requests: list[list[Request]] = field(default_factory=list)
    wall: float = 0.0

    def summary(self) -> dict:
        done = [r for client in self.requests for r in client if r.status == 200 and r.finished]
        ttft = [r.first_token - r.started for r in done if r.first_token]
        streaming = [(r.tokens - 1) / (r.finished - r.first_token) for r in done
                     if r.first_token and r.tokens > 1 and r.finished > r.first_token]
        per_client = [sum(r.tokens for r in client if r.status == 200) / self.wall for client in self.requests]
        return {
            "clients": self.clients, "seconds": round(self.wall, 3), "requests": len(done),
            "rejected": sum(1 for client in self.requests for r in client if r.status == 503),
            "failed": sum(1 for client in self.requests for r in client if r.status not in (200, 503)),
            "requests_per_s": len(done) / self.wall,
            "ttft_mean_s": statistics.fmean(ttft) if ttft else None,
            "ttft_median_s": statistics.median(ttft) if ttft else None,
            "stream_tokens_per_s_per_client": statistics.fmean(streaming) if streaming else None,
            "tokens_per_s_per_client": statistics.fmean(per_client) if per_client else None,
            "server_tokens_per_s": sum(r.tokens for r in done) / self.wall,
            "tokens": sum(r.tokens for r in done),
        }


def stream_one(port: int, key: str, question: str, max_tokens: int, timeout: float) -> Request:
    """One streamed chat completion; tokens are counted from the usage chunk the server sends at the end."""
    req = Request(started=time.monotonic())
    body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": question}],
                       "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
        resp = conn.getresponse()
        req.status = resp.status
        if resp.status != 200:
            resp.read()
            return req
        for raw in resp:
            line = raw.strip()
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            if data == b"[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("choices") and chunk["choices"][0].get("delta", {}).get("content"):
                if req.first_token is None:
                    req.first_token = time.monotonic()
            if chunk.get("usage"):
                req.tokens = chunk["usage"]["completion_tokens"]
        req.finished = time.monotonic()
    except (OSError, http.client.HTTPException, ValueError):
        req.status = -1
    finally:
        conn.close()
    return req


def run_phase(port: int, key: str, clients: int, seconds: float, max_tokens: int, max_requests: int) -> Phase:
    phase = Phase(clients, seconds, [[] for _ in range(clients)])
    t0 = time.monotonic()
    stop_at = t0 + seconds

    def client(i: int) -> None:
        question = QUESTIONS[i % len(QUESTIONS)]
        while time.monotonic() < stop_at and len(phase.requests[i]) < max_requests:
            r = stream_one(port, key, question, max_tokens, timeout=seconds + 120)
            phase.requests[i].append(r)
            if r.status == 503:
                time.sleep(0.2)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 180)
    phase.wall = time.monotonic() - t0
    return phase


def start_server(args, key: str) -> tuple[subprocess.Popen, int, list[str]]:
    env = dict(os.environ, ROMA_API_KEY=key)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "host"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, "-m", "roma_runtime.cli", "serve", "--http", "--host", "127.0.0.1", "--port", "0",
           "--served-model-name", "bench", "--model", args.model, "--max-tokens", str(args.max_tokens),
           "--max-queue", str(max(args.clients, 1)), "--sessions", str(max(args.clients, 1)),
           "--context", str(args.context)]
    if args.backend:
        cmd += ["--backend", args.backend]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(l.decode("utf-8", "replace") for l in proc.stderr),
                     daemon=True).start()
    deadline = time.monotonic() + 600
    while True:
        for line in lines:
            m = re.match(r"serving .* on http://127\.0\.0\.1:(\d+)/v1", line)
            if m:
                return proc, int(m.group(1)), lines
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("the server did not start:\n" + "".join(lines))
        time.sleep(0.1)


def ratio(a, b):
    return a / b if a is not None and b else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients of the second phase (default 4)")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each phase (default 20)")
    ap.add_argument("--max-tokens", type=int, default=48, help="tokens per answer (default 48)")
    ap.add_argument("--max-requests", type=int, default=1000, help="bound on requests per client and phase")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--backend", default=None, help="ref, emu or board (default: the server's default)")
    ap.add_argument("--context", type=int, default=512, help="KV positions per cached session (default 512)")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = ap.parse_args()
    if args.clients < 2 or not 0 < args.seconds <= 600 or args.max_tokens < 1:
        ap.error("--clients must be at least 2, --seconds in (0, 600], --max-tokens at least 1")
    key = secrets.token_urlsafe(16)
    proc, port, logs = start_server(args, key)
    try:
        stream_one(port, key, QUESTIONS[0], 4, timeout=300)  # warm-up: the first call pays one-time costs
        one = run_phase(port, key, 1, args.seconds, args.max_tokens, args.max_requests).summary()
        many = run_phase(port, key, args.clients, args.seconds, args.max_tokens, args.max_requests).summary()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    keys = ("requests_per_s", "ttft_mean_s", "ttft_median_s", "stream_tokens_per_s_per_client",
            "tokens_per_s_per_client", "server_tokens_per_s")
    ratios = {k: ratio(many[k], one[k]) for k in keys}
    report = {"model": args.model, "backend": args.backend or "default", "max_tokens": args.max_tokens,
              "one_client": one, f"{args.clients}_clients": many, "ratios": ratios}
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    served = next((l.strip() for l in logs if l.startswith("serving")), "")
    print(f"{served}")
    print(f"{args.seconds:g} s per phase, {args.max_tokens} tokens per answer, streamed; "
          f"{one['requests']} + {many['requests']} requests, {many['rejected']} answered 503, "
          f"{one['failed'] + many['failed']} failed")
    print(f"| figure | 1 client | {args.clients} clients | ratio |")
    print("|---|---|---|---|")
    names = {"requests_per_s": "requests/s", "ttft_mean_s": "time to first token, mean (s)",
             "ttft_median_s": "time to first token, median (s)",
             "stream_tokens_per_s_per_client": "tokens/s per client while streaming",
             "tokens_per_s_per_client": "tokens/s per client over the phase",
             "server_tokens_per_s": "tokens/s of the server in all"}
    for k in keys:
        a, b, r = one[k], many[k], ratios[k]
        fmt = (lambda v: "n/a" if v is None else f"{v:.3f}" if v < 10 else f"{v:.1f}")
        print(f"| {names[k]} | {fmt(a)} | {fmt(b)} | {'n/a' if r is None else f'{r:.2f}'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
