"""`roma serve --serial` and SerialChatClient over real pseudo-terminals.

Two pty pairs joined by a relay thread stand for the cable: the server opens one slave with pyserial, the
client the other, and the relay copies bytes between the masters. The relay can tamper with the frames it
carries (garbage, flipped bits, truncation, blackouts) or drop everything, as a noisy or cut line would. The
server runs the real Engine on a tiny random model (SmolLM2's tokenizer); one subprocess test runs the real
`roma serve` on SmolLM2-135M.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HOST = REPO / "host"
if str(HOST) not in sys.path:
    sys.path.insert(0, str(HOST))

pytest.importorskip("serial")

from roma_runtime import serial_link as sl  # noqa: E402
from roma_runtime.errors import RomaError  # noqa: E402
from roma_runtime.generate import SamplingParams  # noqa: E402


# --- the cable ---------------------------------------------------------------------------------------------


class Tamper:
    """Cuts one direction's byte stream into the frames a clean sender wrote and passes each through
    `mutate(index, type, frame) -> bytes` (b"" drops it). `drop_all` silences the direction."""

    def __init__(self):
        self.buf = bytearray()
        self.index = 0
        self.mutate = None
        self.drop_all = False
        self.seen: list[int] = []  # frame types, in order

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out = bytearray()
        while self.buf:
            if not self.buf.startswith(sl.SYNC):
                j = self.buf.find(sl.SYNC, 1)
                j = len(self.buf) if j < 0 else j
                out += self.buf[:j]
                del self.buf[:j]
                continue
            if len(self.buf) < sl.HEADER_SIZE:
                break
            ftype, _, _, length = struct.unpack_from(">BHHH", self.buf, 2)
            end = sl.HEADER_SIZE + length + 4
            if len(self.buf) < end:
                break
            frame = bytes(self.buf[:end])
            del self.buf[:end]
            self.seen.append(ftype)
            if self.mutate is not None:
                frame = self.mutate(self.index, ftype, frame)
            self.index += 1
            out += frame
        return b"" if self.drop_all else bytes(out)


class PtyLink:
    """Two real pty pairs and a relay between their masters: `server_port` and `client_port` are tty paths."""

    def __init__(self):
        self.m_server, self.s_server = os.openpty()
        self.m_client, self.s_client = os.openpty()
        for fd in (self.s_server, self.s_client):
            tty.setraw(fd)  # no echo, no line editing, before anyone opens them
        for fd in (self.m_server, self.m_client):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        self.server_port = os.ttyname(self.s_server)
        self.client_port = os.ttyname(self.s_client)
        self.s2c, self.c2s = Tamper(), Tamper()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        route = {self.m_server: (self.m_client, self.s2c), self.m_client: (self.m_server, self.c2s)}
        while not self.stop.is_set():
            ready, _, _ = select.select(list(route), [], [], 0.05)
            for fd in ready:
                try:
                    data = os.read(fd, 65536)
                except (BlockingIOError, OSError):
                    continue
                target, tamper = route[fd]
                out = tamper.feed(data)
                while out:
                    try:
                        n = os.write(target, out)
                    except (BlockingIOError, OSError):
                        break  # nobody reads that end: the bytes fall off the line, as on a real UART
                    out = out[n:]

    def close(self):
        self.stop.set()
        self.thread.join(timeout=2)
        for fd in (self.m_server, self.s_server, self.m_client, self.s_client):
            os.close(fd)


# --- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_models):
    from roma_runtime.engine import Engine

    return Engine(str(tiny_models["q4_1"]))


class Board:
    """A SerialChatServer on the tiny model, in a thread, at the far end of a PtyLink."""

    def __init__(self, engine, context=None, params=None):
        self.link = PtyLink()
        self.logs: list[str] = []
        self.server = sl.SerialChatServer(engine, self.link.server_port, context=context,
                                          params=params, log=self.logs.append)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.clients: list[sl.SerialChatClient] = []

    def client(self, **kw) -> sl.SerialChatClient:
        kw.setdefault("timeout", 5.0)
        c = sl.SerialChatClient(self.link.client_port, **kw)
        self.clients.append(c)
        return c

    def close(self):
        for c in self.clients:
            c.close()
        self.server.stop()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive()
        self.link.close()


@pytest.fixture
def board(engine):
    b = Board(engine)
    yield b
    b.close()


def P(n=6, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=n, **kw)


def chat(client, text, params=None):
    g = client.send(text, params or P())
    pieces = list(g)
    return pieces, g.result


# --- the frame format --------------------------------------------------------------------------------------


def test_frames_survive_noise_between_and_inside():
    frames = [sl.encode_frame(sl.TOKEN, 7 + i, 3, f"piece {i} é".encode()) for i in range(4)]
    bad = bytearray(frames[1])
    bad[sl.HEADER_SIZE + 2] ^= 0x10  # a flipped payload bit
    stream = (b"\x00garbage\xa5\xa5Z" + frames[0] + bytes(bad) + b"\xa5\x5a\x03" + frames[2][:9]
              + frames[3])  # a false start marker, then a truncated frame right before a good one
    p = sl.FrameParser()
    got = []
    for i in range(0, len(stream), 5):  # arrives in small pieces
        got += p.feed(stream[i:i + 5])
    assert [f.seq for f in got] == [7, 10]
    assert got[0].payload.decode() == "piece 0 é" and got[0].ref == 3 and got[0].type == sl.TOKEN
    assert p.bad_frames >= 2


def test_a_partial_frame_that_stops_arriving_is_dropped_in_time():
    p = sl.FrameParser(baud=115200)
    good = sl.encode_frame(sl.PONG, 1, 1)
    assert p.feed(sl.encode_frame(sl.DONE, 0, 0, b"x" * 100)[:20], now=0.0) == []
    assert p.feed(b"", now=0.5) == []  # still within its time
    assert p.feed(good[:3], now=5.0) == [] and p.bad_frames == 1
    assert [f.type for f in p.feed(good[3:], now=5.1)] == [sl.PONG]


# --- chat over the link ------------------------------------------------------------------------------------


def test_a_turn_streams_pieces_that_make_the_done_text_and_the_kv_cache_is_reused(board, engine):
    client = board.client()
    assert client.info["version"] == sl.PROTOCOL_VERSION and client.info["resumed"] is False
    assert "chat" in client.info["capabilities"] and client.info["context"] >= 64
    pieces1, r1 = chat(client, "Hello there!")
    assert len(pieces1) >= 1 and "".join(pieces1) == r1.text
    assert r1.finish_reason in ("length", "stop") and len(r1.ids) >= 1 and r1.reused_tokens == 0
    # the same turn on a local conversation gives the same answer (greedy)
    conv = engine.chat()
    local = conv.send("Hello there!", P()).run()
    getattr(conv.session, "close", lambda: None)()
    assert r1.text == local.text and r1.ids == local.ids and r1.prompt_tokens == len(local.prompt_ids)
    pieces2, r2 = chat(client, "And again?")
    assert "".join(pieces2) == r2.text
    assert r2.reused_tokens > 0  # the first turn's KV stayed on the board
    assert r2.prefill_tokens_per_s > 0 and r2.to_dict()["decode_tokens_per_s"] >= 0
    s = client.stats()
    assert s["turns"] == 2 and s["messages"] == 4 and s["total_reused"] == r2.reused_tokens
    assert s["last"]["text"] == r2.text and 0 < s["context_tokens"] <= s["capacity"]
    client.reset()
    s = client.stats()
    assert s["messages"] == 0 and s["context_tokens"] == 0
    assert client.ping() < 2.0


def test_corrupted_frames_both_ways_are_skipped_and_the_exchange_completes(board):
    link = board.link
    client = board.client()
    _, clean = chat(client, "Tell me a story.", P(12))
    client.reset()

    def first_time(frame, seen):
        seq = struct.unpack_from(">H", frame, 3)[0]
        if seq in seen:
            return False  # a retransmission goes through clean
        seen.add(seq)
        return True

    def s2c(i, ftype, frame):
        if ftype != sl.TOKEN or not first_time(frame, s2c.seen):
            return frame
        n = len(s2c.seen)
        if n == 1:
            return os.urandom(40).replace(b"\xa5", b"") + frame  # garbage between frames
        if n == 2:
            bad = bytearray(frame)
            bad[-5] ^= 0x04  # a flipped bit in the payload
            return bytes(bad)
        if n == 4:
            return frame[: len(frame) // 2]  # a truncated frame
        return frame
    s2c.seen = set()

    def c2s(i, ftype, frame):
        if ftype == sl.CHAT:
            c2s.chats += 1
            if c2s.chats == 1:
                bad = bytearray(frame)
                bad[sl.HEADER_SIZE + 3] ^= 0x80
                return bytes(bad)  # the request arrives corrupted: the board NAKs, the client resends
            if c2s.chats == 2:
                return frame[:15]  # and the resend arrives truncated
        return frame
    c2s.chats = 0

    link.s2c.mutate, link.c2s.mutate = s2c, c2s
    pieces, r = chat(client, "Tell me a story.", P(12))
    assert "".join(pieces) == r.text == clean.text and r.ids == clean.ids
    assert c2s.chats >= 3 and len(s2c.seen) >= 4
    assert client.parser.bad_frames >= 2 and board.server.parser.bad_frames >= 1
    assert client.stats()["turns"] == 2  # the clean turn and this one: the resent CHAT ran once


def test_a_resent_chat_is_not_run_twice(board):
    link = board.link
    client = board.client()
    blackout = {"until": 0.0}

    def c2s(i, ftype, frame):
        if ftype == sl.CHAT and not blackout["until"]:
            blackout["until"] = time.monotonic() + 1.3  # the board's answers are lost for a while
        return frame

    def s2c(i, ftype, frame):
        return b"" if time.monotonic() < blackout["until"] else frame

    link.c2s.mutate, link.s2c.mutate = c2s, s2c
    pieces, r = chat(client, "Hi!")
    assert link.c2s.seen.count(sl.CHAT) >= 2  # the client sent it again, unacknowledged
    assert "".join(pieces) == r.text
    s = client.stats()
    assert s["turns"] == 1 and s["messages"] == 2


def test_a_client_that_drops_mid_answer_and_a_new_one_chats_without_a_restart(board):
    first = board.client()
    g = first.send("Write a long poem.", P(200))
    it = iter(g)
    next(it)
    first.ser.close()  # the cable is pulled: no CANCEL, no goodbye
    second = board.client()
    assert second.info["resumed"] is False and second.session_id != first.session_id
    pieces, r = chat(second, "Hello!")
    assert "".join(pieces) == r.text and r.reused_tokens == 0
    s = second.stats()
    assert s["turns"] == 1 and s["messages"] == 2  # a fresh conversation for the new client
    assert board.thread.is_alive()


def test_cancel_stops_the_answer_and_keeps_the_partial_answer(board):
    client = board.client()
    g = client.send("Write a long poem.", P(200))
    it = iter(g)
    got = [next(it)]
    it.close()  # what the chat REPL does on Ctrl-C
    assert g.result is not None and g.result.finish_reason in ("interrupted", "length", "stop")
    assert g.result.text.startswith(got[0])
    s = client.stats()
    assert s["messages"] == 2 and s["last"]["text"] == g.result.text
    pieces, r = chat(client, "Thanks.")
    assert r.reused_tokens > 0 and "".join(pieces) == r.text


def test_no_board_times_out_with_a_clear_error():
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        port = os.ttyname(slave)
        t0 = time.monotonic()
        with pytest.raises(RomaError) as e:
            sl.SerialChatClient(port, timeout=1.0)
        assert 0.9 < time.monotonic() - t0 < 4
        assert f"no answer from the board on {port} within 1 s" in str(e.value)
        assert "roma serve --serial" in str(e.value)
    finally:
        os.close(master)
        os.close(slave)


def test_a_board_that_goes_quiet_times_out_then_the_client_reconnects_and_resumes(board):
    client = board.client(timeout=1.0)
    _, r1 = chat(client, "Hello!")
    board.link.s2c.drop_all = True
    t0 = time.monotonic()
    with pytest.raises(RomaError) as e:
        client.stats()
    assert time.monotonic() - t0 < 4 and "no answer from the board" in str(e.value)
    board.link.s2c.drop_all = False
    _, r2 = chat(client, "More?")  # a HELLO first, with the same session: the conversation goes on
    assert client.info["resumed"] is True and r2.reused_tokens > 0
    assert client.stats()["turns"] == 2


def test_an_error_frame_is_a_roma_error_and_the_conversation_stays(engine):
    b = Board(engine, context=64)
    try:
        client = b.client()
        _, r1 = chat(client, "Hi!", P(4))
        before = client.stats()
        with pytest.raises(RomaError) as e:
            client.send("word " * 200, P(4))
        assert "context holds 64" in str(e.value) and e.value.hint
        assert client.stats()["messages"] == before["messages"] == 2
        pieces, r2 = chat(client, "Ok.", P(4))
        assert "".join(pieces) == r2.text and r2.reused_tokens > 0
        with pytest.raises(RomaError, match="temperature"):
            client.send("x", SamplingParams(temperature=-1))  # refused before it leaves the PC
    finally:
        b.close()


def test_the_server_refuses_malformed_sampling_options_with_an_error(board):
    client = board.client()
    seq = client._request(sl.CHAT, sl._json({"text": "hi", "params": {"max_tokens": "many"}}))
    with pytest.raises(RomaError, match="max_tokens"):
        client._wait({seq}, {sl.ACK})
    assert client.stats()["messages"] == 0


# --- the command, end to end on SmolLM2 ---------------------------------------------------------------------


def test_roma_serve_and_roma_chat_serial_on_smollm2_then_sigint_stops_cleanly():
    """Both ends are the real commands: `roma serve --serial` and `roma chat --serial` over a pty pair."""
    link = PtyLink()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HOST), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.Popen([sys.executable, "-m", "roma_runtime.cli", "serve", "--serial", link.server_port,
                             "--model", "smollm2-135m", "--max-tokens", "8"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd=str(REPO))
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(l.decode("utf-8", "replace") for l in proc.stderr),
                              daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any(l.startswith("serving") for l in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.1)
        chat = subprocess.run([sys.executable, "-m", "roma_runtime.cli", "chat", "--serial", link.client_port],
                              input=b"What is the capital of France?\n/stats\n/lora\n/quit\n",
                              capture_output=True, env=env, cwd=str(REPO), timeout=120)
        out, err = chat.stdout.decode(), chat.stderr.decode()
        assert chat.returncode == 0, err
        answer = out.splitlines()[0]
        assert answer.strip() and "Traceback" not in err
        assert "in the board's cache" in out and "1 turns" in out  # /stats came from the board
        assert "/lora is not available over the serial link" in err
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=20)
        reader.join(timeout=5)
        err = "".join(lines)
        assert rc in (0, 130), err
        assert "Traceback" not in err and "client connected" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        link.close()
