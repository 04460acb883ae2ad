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
import re
import select
import struct
import subprocess
import sys
import threading
import time
import tty
import zlib
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
        self.passthrough = False  # pass the bytes as they come (a frame with a false length is not waited for)
        self.seen: list[int] = []  # frame types, in order

    def feed(self, data: bytes) -> bytes:
        if self.passthrough:
            return b"" if self.drop_all else data
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
    """Two real pty pairs and a relay between their masters: `server_port` and `client_port` are tty paths.
    With second_client, a third pty (`client2_port`) hangs on the same line, as a Y cable would: it hears
    everything the server sends and the server hears both clients."""

    def __init__(self, second_client: bool = False):
        self.m_server, self.s_server = os.openpty()
        self.m_client, self.s_client = os.openpty()
        pairs = [(self.m_server, self.s_server), (self.m_client, self.s_client)]
        if second_client:
            self.m_client2, self.s_client2 = os.openpty()
            pairs.append((self.m_client2, self.s_client2))
        for _, fd in pairs:
            tty.setraw(fd)  # no echo, no line editing, before anyone opens them
        for fd, _ in pairs:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        self.fds = [fd for pair in pairs for fd in pair]
        self.server_port = os.ttyname(self.s_server)
        self.client_port = os.ttyname(self.s_client)
        self.s2c, self.c2s = Tamper(), Tamper()
        self.route = {self.m_server: ([self.m_client], self.s2c), self.m_client: ([self.m_server], self.c2s)}
        if second_client:
            self.client2_port = os.ttyname(self.s_client2)
            self.c2s_b, self.s2c_b = Tamper(), Tamper()
            self.route[self.m_server] = ([self.m_client, self.m_client2], self.s2c)
            self.route[self.m_client2] = ([self.m_server], self.c2s_b)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        route = self.route
        while not self.stop.is_set():
            ready, _, _ = select.select(list(route), [], [], 0.05)
            for fd in ready:
                try:
                    data = os.read(fd, 65536)
                except (BlockingIOError, OSError):
                    continue
                targets, tamper = route[fd]
                out = tamper.feed(data)
                for target in targets:
                    rest = out
                    while rest:
                        try:
                            n = os.write(target, rest)
                        except (BlockingIOError, OSError):
                            break  # nobody reads that end: the bytes fall off the line, as on a real UART
                        rest = rest[n:]

    def close(self):
        self.stop.set()
        self.thread.join(timeout=2)
        for fd in self.fds:
            os.close(fd)


# --- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_models, tiny_build):
    from roma_runtime.engine import Engine

    return Engine(str(tiny_models["q4_1"]), build=tiny_build)


class Board:
    """A SerialChatServer on the tiny model, in a thread, at the far end of a PtyLink."""

    def __init__(self, engine, context=None, params=None, second_client=False, **server_options):
        self.link = PtyLink(second_client)
        self.logs: list[str] = []
        self.server = sl.SerialChatServer(engine, self.link.server_port, context=context,
                                          params=params, log=self.logs.append, **server_options)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.clients: list[sl.SerialChatClient] = []

    def client(self, port=None, **kw) -> sl.SerialChatClient:
        kw.setdefault("timeout", 5.0)
        c = sl.SerialChatClient(port or self.link.client_port, **kw)
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
    assert client.stats()["turns"] == 1  # counted since the reset: the resent CHAT ran once


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


def test_a_client_that_drops_mid_answer_and_a_new_one_chats_without_a_restart(engine):
    b = Board(engine, lease=1.0)
    try:
        first = b.client()
        g = first.send("Write a long poem.", P(200))
        it = iter(g)
        next(it)
        first.ser.close()  # the cable is pulled: no CANCEL, no goodbye
        t0 = time.monotonic()
        with pytest.raises(RomaError, match="busy with another client") as e:
            b.client()  # within the first client's lease: refused, the line is not snatched
        assert "lapses after 1 s" in str(e.value)
        time.sleep(max(0.0, 1.1 - (time.monotonic() - t0)))
        second = b.client()  # the lease has lapsed: the new client takes the line
        assert second.info["resumed"] is False and second.session_id != first.session_id
        pieces, r = chat(second, "Hello!")
        assert "".join(pieces) == r.text and r.reused_tokens == 0
        s = second.stats()
        assert s["turns"] == 1 and s["messages"] == 2  # a fresh conversation for the new client
        assert b.thread.is_alive()
    finally:
        b.close()


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


# --- hostile frames, one client at a time, the server's limits (issues 21 and 22) ---------------------------


def false_header(ftype: int, length: int) -> bytes:
    """A header whose own check is right but whose LEN promises a payload that never comes."""
    head = struct.pack(">BHHH", ftype, 77, 0, length)
    return sl.SYNC + head + struct.pack(">H", zlib.crc32(head) & 0xFFFF)


def test_a_false_length_is_refused_or_given_up_without_stalling_the_parser():
    good = sl.encode_frame(sl.PONG, 1, 1)
    p = sl.FrameParser(baud=9600)  # a slow line, where a 16 KB frame takes 17 s: none of this may wait that long
    # LEN above the protocol's maximum (65535 used to stall a server for 18 s): a bad header at once
    assert [f.type for f in p.feed(false_header(sl.TOKEN, 0xFFFF) + good, now=0.0)] == [sl.PONG]
    # a LEN within the maximum whose bytes hold a whole valid frame: the frame comes out as soon as it is in
    assert p.feed(false_header(sl.TOKEN, sl.MAX_PAYLOAD), now=1.0) == []
    assert [f.type for f in p.feed(good, now=1.01)] == [sl.PONG]
    # a LEN whose payload stops coming: given up after FRAME_GAP without a byte
    assert p.feed(false_header(sl.TOKEN, 4000), now=2.0) == []
    assert p.feed(b"", now=2.0 + 0.8 * sl.FRAME_GAP) == [] and len(p.buf) == sl.HEADER_SIZE  # still waiting
    assert p.expire(now=2.0 + 1.2 * sl.FRAME_GAP) == [] and len(p.buf) < sl.HEADER_SIZE
    assert [f.type for f in p.feed(good, now=3.0)] == [sl.PONG]
    assert p.bad_frames >= 3
    with pytest.raises(ValueError):
        sl.encode_frame(sl.TOKEN, 1, 0, b"x" * (sl.MAX_PAYLOAD + 1))


def test_false_headers_on_the_line_do_not_make_the_server_deaf(board):
    board.link.c2s.passthrough = True
    client = board.client()
    for length in (0xFFFF, sl.MAX_PAYLOAD, 3000):
        client.ser.write(false_header(sl.CHAT, length))
        t0 = time.monotonic()
        pieces, r = chat(client, "Hi!", P(3))
        assert time.monotonic() - t0 < 3.0  # not the 18 s the stalled parser took
        assert "".join(pieces) == r.text and r.ids
    assert board.server.parser.bad_frames >= 3


def test_no_frame_kills_the_reader_thread(board):
    client = board.client()
    bad_naks = [b'{"from": 1e400}', b'{"from": "x"}', b'{"from": -5}', b'{"from": true}', b"[1, 2]", b"\xff\xfe"]
    for payload in bad_naks:  # {"from": 1e400} raised OverflowError in the reader and left the server deaf
        client._write(sl.encode_frame(sl.NAK, 0, 0, payload))
    deadline = time.monotonic() + 5
    while board.server.reader_errors < len(bad_naks) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert board.server.reader_errors == len(bad_naks)
    assert board.server._reader.is_alive()
    assert sum("dropped a NAK frame" in line for line in board.logs) == len(bad_naks)
    pieces, r = chat(client, "Hello there!")  # and the server answers as before
    assert "".join(pieces) == r.text and r.ids
    assert client.stats()["turns"] == 1


def test_a_bad_seed_is_a_clear_error_and_the_conversation_goes_on(board):
    client = board.client()
    for seed in (-1, 1 << 70):
        seq = client._request(sl.CHAT, sl._json({"text": "hi", "params": {"seed": seed}}))
        with pytest.raises(RomaError) as e:
            client._wait({seq}, {sl.ACK})
        assert "seed must be a whole number" in str(e.value) and "internal" not in str(e.value)
    _, r = chat(client, "Hi!", P(3, seed=7, temperature=0.8))
    assert client.stats()["messages"] == 2


def test_the_server_max_tokens_is_a_limit_a_client_may_lower_but_not_raise(engine):
    conv = engine.chat()
    local = conv.send("Write a long poem.", P(5)).run()
    local_short = conv.send("Again.", P(3)).run()
    conv.session.close()
    b = Board(engine, params=SamplingParams(max_tokens=5))
    try:
        client = b.client()
        assert client.info["limits"]["max_tokens"] == 5
        _, r = chat(client, "Write a long poem.", P(200))  # asks for 200: the board gives at most its 5
        assert r.ids == local.ids and len(r.ids) <= 5
        _, r2 = chat(client, "Again.", P(3))  # fewer is the client's to choose
        assert r2.ids == local_short.ids and len(r2.ids) <= 3
        assert client.stats()["max_tokens"] == 5
    finally:
        b.close()


def test_one_client_at_a_time_a_second_is_told_busy_and_the_first_answer_goes_on(engine, monkeypatch):
    conv = engine.chat()
    local = conv.send("Write a long poem.", P(80)).run()
    conv.session.close()
    forward = engine.backend.forward

    def slow_forward(ids, cache):  # about 2 s for the answer: time for a second client to knock
        time.sleep(0.025)
        return forward(ids, cache)

    monkeypatch.setattr(engine.backend, "forward", slow_forward)
    b = Board(engine, second_client=True, lease=1.5)
    try:
        first = b.client()
        got = {}

        def first_answer():
            g = first.send("Write a long poem.", P(80))
            got["pieces"] = list(g)
            got["result"] = g.result

        t = threading.Thread(target=first_answer, daemon=True)
        t.start()
        deadline = time.monotonic() + 10
        while b.link.s2c.seen.count(sl.TOKEN) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(RomaError, match="busy with another client"):  # on the same line, mid-answer
            b.client(b.link.client2_port)
        t.join(30)
        r = got["result"]
        assert r.finish_reason == local.finish_reason and r.ids == local.ids  # the first answer was not ended
        assert "".join(got["pieces"]) == r.text == local.text
        assert any("refused a second client" in line for line in b.logs)
        # the first client is silent now: once its lease lapses, the second one may have the line
        time.sleep(1.6)
        second = b.client(b.link.client2_port)
        _, r2 = chat(second, "Hello!", P(3))
        assert r2.reused_tokens == 0 and second.stats()["turns"] == 1
        # the first client's next request is refused with a clear error; its next call reconnects
        first._seq = (second._seq + 0x8000) & 0xFFFF or 1  # numbered far from the second client's requests
        with pytest.raises(RomaError, match="does not know this conversation"):
            first.stats()
    finally:
        b.close()


@pytest.fixture(scope="module")
def adapters(tiny_models, tmp_path_factory):
    pytest.importorskip("peft")
    pytest.importorskip("torch")
    from tiny_models import write_peft_adapter

    root = tmp_path_factory.mktemp("serial-lora")
    a1 = write_peft_adapter(tiny_models["hf"], root / "a1", 1, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    a2 = write_peft_adapter(tiny_models["hf"], root / "a2", 2, r=8, lora_alpha=16,
                            target_modules=["o_proj", "down_proj"])
    return a1, a2


def test_lora_save_and_load_over_the_line_as_in_the_local_chat(engine, adapters, tmp_path):
    import argparse
    import io

    from roma_runtime.commands.chat import ChatSession

    a1, a2 = adapters
    engine.load_lora("a1", str(a1))
    engine.load_lora("a2", str(a2))
    expected = {}
    for name in ("a1", "a2"):
        conv = engine.chat(adapter=name)
        expected[name] = conv.send("Hello there!", P(6)).run()
        conv.session.close()
    engine.unload_lora("a2")  # the client loads it again, from its folder on the board
    b = Board(engine, save_dir=tmp_path)
    try:
        client = b.client()
        assert {"lora", "save", "load"} <= set(client.info["capabilities"])
        d = client.lora()
        assert [row["name"] for row in d["adapters"]] == ["a1"] and d["active"] is None
        assert client.lora("use", "a1")["active"] == "a1"
        _, r = chat(client, "Hello there!")
        assert r.ids == expected["a1"].ids  # the answer under a1, as a local conversation gives it
        d = client.lora("load", "a2", str(a2))
        assert {row["name"] for row in d["adapters"]} == {"a1", "a2"} and "loaded adapter a2" in d["done"]
        client.reset()
        client.lora("use", "a2")
        _, r = chat(client, "Hello there!")
        assert r.ids == expected["a2"].ids
        with pytest.raises(RomaError, match="no LoRA adapter named 'nope'"):
            client.lora("use", "nope")
        with pytest.raises(RomaError, match="no adapter folder"):
            client.lora("load", "x", str(tmp_path / "missing"))
        assert client.lora()["active"] == "a2"  # a refusal changes nothing
        saved = client.save("conv.npz")
        assert saved["messages"] == 2 and saved["tokens"] > 0 and (tmp_path / "conv.npz").is_file()
        client.reset()
        loaded = client.load("conv.npz")
        assert loaded["messages"] == 2 and loaded["adapter"] == "a2" and loaded["tokens"] == saved["tokens"]
        _, r = chat(client, "More?")
        assert r.reused_tokens > 0  # the loaded KV cache is used
        for bad in ("../escape.npz", "/tmp/escape.npz", "~/escape.npz", "sub/../../escape.npz"):
            with pytest.raises(RomaError, match="outside the board's save folder"):
                client.save(bad)
        with pytest.raises(RomaError, match="no session file"):
            client.load("missing.npz")
        assert client.lora("unload", "a2")["active"] is None

        # the same through the chat REPL's commands (what `roma chat --serial` runs)
        out, err = io.StringIO(), io.StringIO()
        repl = ChatSession(None, argparse.Namespace(on_chip=False), P(4), out=out, err=err, remote=client)
        for line in ("/lora", "/lora a1", "/save repl.npz", "/reset", "/load repl.npz", "/lora off",
                     "/save ../x.npz", "/lora nope", "/stats"):
            assert repl.command(line)
        text = out.getvalue()
        assert "* off (base model)" in text and "  a1  slot" in text
        assert "(adapter a1 active" in text and "saved on the board as repl.npz" in text
        assert "loaded on the board from repl.npz" in text and "adapter a1)" in text
        assert "(LoRA off: the base model continues the conversation)" in text
        assert "answers of at most" in text
        assert err.getvalue().count("error:") == 2  # the escape and the unknown adapter, each one line
        assert "outside the board's save folder" in err.getvalue() and "no LoRA adapter named 'nope'" in err.getvalue()
    finally:
        b.close()
        for name in engine.lora_names():
            engine.unload_lora(name)


# --- the command, end to end on SmolLM2 ---------------------------------------------------------------------


def test_roma_serve_and_roma_chat_serial_on_smollm2_then_sigint_stops_cleanly():
    """Both ends are the real commands: `roma serve --serial` and `roma chat --serial` over a pty pair."""
    from conftest import ServerProcess, cli_env

    link = PtyLink()
    env = cli_env()
    try:
        with ServerProcess(["serve", "--serial", link.server_port, "--model", "smollm2-135m", "--max-tokens", "8"],
                           env) as server:
            chat = subprocess.run([sys.executable, "-m", "roma_runtime.cli", "chat", "--serial", link.client_port],
                                  input=b"What is the capital of France?\n/stats\n/lora\n/quit\n",
                                  capture_output=True, env=env, cwd=str(REPO), timeout=120)
            out, err = chat.stdout.decode(), chat.stderr.decode()
            assert chat.returncode == 0, err
            answer = out.splitlines()[0]
            assert answer.strip() and "Traceback" not in err
            tokens = int(re.search(r"\[(\d+) tokens", err).group(1))
            assert 1 <= tokens <= 8  # the board's --max-tokens 8 bounds the chat's default of 256
            assert "answers of at most 8 tokens" in out
            assert "in the board's cache" in out and "1 turns" in out  # /stats came from the board
            assert "no LoRA adapters loaded on the board" in out  # /lora asks the board
            rc, err = server.interrupt(timeout=20)
            assert rc in (0, 130), err
            assert "Traceback" not in err and "client connected" in err
    finally:
        link.close()
