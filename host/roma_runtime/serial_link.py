"""Chat with a board over a serial line (UART): the framed protocol, the server loop and the client.

`roma serve --serial PORT` runs `SerialChatServer` on the board; `roma chat --serial PORT` talks to it with
`SerialChatClient`, which has the shape of a local `Conversation` (send -> iterable of text pieces with
`.result`, reset, lora, `last` for `stats.last`) plus `stats()` (the board's `Conversation.summary()`) and
`close()`.

Frame format (all integers big-endian)::

    offset  size  field
    0       2     SYNC     A5 5A: the receiver hunts for these two bytes
    2       1     TYPE     HELLO 01, CHAT 02, TOKEN 03, DONE 04, ERROR 05, RESET 06, STATS 07, PING 08,
                           PONG 09, ACK 0A, NAK 0B, CANCEL 0C, LORA 0D, SAVE 0E, LOAD 0F
    3       2     SEQ      the sender's frame number, +1 per new frame, wrapping at 65536
                           (client requests skip 0; control frames that are not requests use 0)
    5       2     REF      in a reply: the SEQ of the request it answers; in CANCEL: the CHAT to stop; else 0
    7       2     LEN      payload length in bytes (0..MAX_PAYLOAD, 16384; a longer LEN is a bad header)
    9       2     HCRC     low 16 bits of CRC-32 of bytes 2..8: a corrupt header (a wrong LEN) is refused
                           at once instead of waiting for LEN bytes that are not coming
    11      LEN   PAYLOAD  UTF-8 JSON (HELLO, CHAT, DONE, ERROR, STATS, NAK), raw UTF-8 text (TOKEN), or empty
    11+LEN  4     CRC      CRC-32 (zlib) of bytes 2..11+LEN (everything after SYNC)

Noise: bytes before a SYNC are skipped; a frame whose type, header check, length or CRC is wrong is dropped
one byte at a time (the hunt for SYNC restarts one byte after the bad one, so a frame hidden behind a truncated
one is still found). A partial frame is given up as soon as a whole valid frame turns up inside the bytes it
claims (a false or cut header is not allowed to swallow the frames behind it), when no byte has come for
FRAME_GAP seconds, and at the latest when it is overdue at the line's speed.

Reliability:
  * client -> server: every request (HELLO, CHAT, RESET, STATS, PING, CANCEL, LORA, SAVE, LOAD) has a fresh
    SEQ and is sent again until a reply with REF = SEQ arrives (ACK, or the request's own answer: HELLO,
    STATS, PONG, LORA, SAVE, LOAD, ERROR). The server remembers the requests of the session it handled and
    answers a repeat without running it again, so a resent CHAT is not generated twice. A server that sees
    a corrupt frame sends NAK and the client resends what is unacknowledged at once.
  * server -> client: every server frame is numbered and kept (the last 4096, at most 4 MiB). The client
    takes them in order only (go-back-N): on a gap or a corrupt frame it sends NAK {"from": N} and the
    server sends frames N.. again. A lost last frame shows when the client's PING (sent after a quiet
    spell) is answered by a PONG whose SEQ leaves a gap.
  * the server's reader thread answers PING even while the model runs, so a long prefill is not taken for
    a dead board; the client gives up (RomaError) after `timeout` seconds without an in-order frame. No
    frame can stop the reader: one it cannot take is answered with an ERROR frame and dropped.

Sessions: the client's HELLO carries a random session id (and the system prompt). A HELLO with a new id
starts a fresh conversation (a new `roma chat`); the same id resumes it (the client reconnecting after a
timeout). One client at a time: while the current client has been heard from within the server's `lease`
(10 s; a client sends a PING at least every KEEPALIVE seconds while it waits for an answer), a HELLO with
another id is answered ERROR with code "busy" and the current answer goes on. After the lease lapses (the
client went away, or sits idle) a new HELLO ends whatever is left of the old session and starts its own.
Requests whose SEQ is far from the session's own numbering (a client whose session was taken over) are
answered ERROR code "hello": that client says HELLO again. The server process, the loaded model and its
weights stay; only the conversation changes.

Limits: the server's sampling options are its defaults and its limits: a CHAT may ask for fewer tokens than
the server's max_tokens, never more (HELLO's reply says the limit).

Payloads:
  HELLO  c->s {"version", "session", "system", "client"}
         s->c {"version", "session", "resumed", "model", "backend", "context", "capabilities", "server",
               "limits": {"max_tokens", "max_payload"}, "adapter"}
  CHAT   {"text", "params": SamplingParams fields}; answered by ACK (accepted) or ERROR (refused, nothing
         changed), then TOKEN* and DONE
  DONE   GenerationResult.to_dict() without prompt_ids, with "prompt_tokens" ("text" may be left out when
         the frame would be too long: the client rebuilds it from the TOKENs)
  ERROR  {"message", "hint", "code"}     STATS s->c {"context_tokens", "capacity", "messages", "turns", ...}
  NAK    {"from": SEQ}                   RESET, PING, PONG, ACK, CANCEL: empty
  LORA   c->s {"action": "list" | "use" | "load" | "unload", "name", "folder"} (the folder is on the board)
         s->c {"adapters": [{"name", "slot", "rank", "targets", "bytes"}], "active", "compensation_rank", "done"}
  SAVE   c->s {"name"}: a file name in the server's save folder (--save-dir); s->c {"name", "messages", "tokens"}
  LOAD   c->s {"name"}; s->c {"name", "messages", "tokens", "adapter"}
The HELLO reply's "capabilities" lists what the server does ("lora", "save", "load" among them).
"""

from __future__ import annotations

import json
import queue
import secrets
import struct
import sys
import threading
import time
import zlib
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath

from . import __version__
from .engine import Throughput
from .errors import RomaError
from .generate import SamplingParams

PROTOCOL_VERSION = 2  # 2: LEN bounded by MAX_PAYLOAD, LORA/SAVE/LOAD, "busy"
DEFAULT_BAUD = 115200
DEFAULT_TIMEOUT = 10.0
DEFAULT_LEASE = 10.0  # seconds a server keeps a silent client's claim on the line
KEEPALIVE = 1.0  # a client waiting for an answer writes at least this often (a PING if nothing else)
FRAME_GAP = 0.5  # seconds without a byte after which a partial frame is given up
OWNER_WINDOW = 1024  # how far a request's SEQ may be from the session's last one to count as its client's

SYNC = b"\xa5\x5a"
_HEAD = struct.Struct(">BHHH")  # type, seq, ref, len
HEADER_SIZE = 2 + _HEAD.size + 2
MAX_PAYLOAD = 16384  # the longest payload the protocol allows: 1.4 s of line at 115200 baud
OVERHEAD = HEADER_SIZE + 4

HELLO, CHAT, TOKEN, DONE, ERROR, RESET, STATS, PING, PONG, ACK, NAK, CANCEL, LORA, SAVE, LOAD = range(1, 16)
TYPE_NAMES = {HELLO: "HELLO", CHAT: "CHAT", TOKEN: "TOKEN", DONE: "DONE", ERROR: "ERROR", RESET: "RESET",
              STATS: "STATS", PING: "PING", PONG: "PONG", ACK: "ACK", NAK: "NAK", CANCEL: "CANCEL", LORA: "LORA",
              SAVE: "SAVE", LOAD: "LOAD"}
REQUESTS = (HELLO, CHAT, RESET, STATS, PING, CANCEL, LORA, SAVE, LOAD)
CAPABILITIES = ["chat", "stream", "reset", "stats", "cancel", "ping", "lora", "save", "load", "busy", "limits"]


def _crc(data) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def encode_frame(ftype: int, seq: int, ref: int = 0, payload: bytes = b"") -> bytes:
    if not 0 <= len(payload) <= MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes is over {MAX_PAYLOAD}")
    head = _HEAD.pack(ftype, seq & 0xFFFF, ref & 0xFFFF, len(payload))
    body = head + struct.pack(">H", _crc(head) & 0xFFFF) + payload
    return SYNC + body + struct.pack(">I", _crc(body))


@dataclass
class Frame:
    type: int
    seq: int
    ref: int
    payload: bytes

    @property
    def name(self) -> str:
        return TYPE_NAMES.get(self.type, str(self.type))

    def json(self) -> dict:
        """The payload as a JSON object; ValueError if it is not one."""
        value = json.loads(self.payload.decode("utf-8")) if self.payload else {}
        if not isinstance(value, dict):
            raise ValueError("payload is not a JSON object")
        return value


def _json(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class FrameParser:
    """Bytes in, whole verified frames out. Counts what it had to throw away."""

    def __init__(self, baud: int = DEFAULT_BAUD):
        self.buf = bytearray()
        self.byte_seconds = 10.0 / max(1, baud)  # 8N1: ten bit times per byte
        self.bad_frames = 0  # a SYNC was found but the frame around it was wrong
        self.skipped_bytes = 0  # bytes outside any frame
        self._pending_since: float | None = None  # when the partial frame at the front was first seen
        self._last_data: float | None = None  # when the last bytes came in

    def feed(self, data: bytes, now: float | None = None) -> list[Frame]:
        now = time.monotonic() if now is None else now
        if data:
            self.buf += data
            self._last_data = now
        out: list[Frame] = []
        while True:
            i = self.buf.find(SYNC)
            if i < 0:
                keep = 1 if self.buf[-1:] == SYNC[:1] else 0
                self.skipped_bytes += len(self.buf) - keep
                del self.buf[: len(self.buf) - keep]
                self._pending_since = None
                return out
            if i:
                self.skipped_bytes += i
                del self.buf[:i]
                self._pending_since = None
            if len(self.buf) < HEADER_SIZE:
                if self._overdue(now, HEADER_SIZE):
                    self._drop_one()
                    continue
                return self._wait(out, now)
            end = self._header_at(0)
            if end is None:
                self._drop_one()
                continue
            if len(self.buf) < end:
                # A frame the bytes it claims already hold a whole valid frame inside: its header was false or
                # it was cut short, and the frames behind it must not wait for it.
                if self._overdue(now, end) or self._holds_frame():
                    self._drop_one()
                    continue
                return self._wait(out, now)
            if not self._crc_ok(0, end):
                self._drop_one()
                continue
            ftype, seq, ref, _ = _HEAD.unpack_from(self.buf, 2)
            out.append(Frame(ftype, seq, ref, bytes(self.buf[HEADER_SIZE:end - 4])))
            del self.buf[:end]
            self._pending_since = None

    def expire(self, now: float | None = None) -> list[Frame]:
        """Gives up on a partial frame that is overdue (its sender stopped midway); returns frames behind it."""
        return self.feed(b"", now)

    def _header_at(self, j: int) -> int | None:
        """The end of the frame whose (whole) header starts at buf[j], or None when the header is not one."""
        ftype, _, _, length = _HEAD.unpack_from(self.buf, j + 2)
        (hcrc,) = struct.unpack_from(">H", self.buf, j + 2 + _HEAD.size)
        if ftype not in TYPE_NAMES or length > MAX_PAYLOAD or hcrc != _crc(self.buf[j + 2:j + 2 + _HEAD.size]) & 0xFFFF:
            return None
        return j + HEADER_SIZE + length + 4

    def _crc_ok(self, j: int, end: int) -> bool:
        (crc,) = struct.unpack_from(">I", self.buf, end - 4)
        return crc == _crc(self.buf[j + 2:end - 4])

    def _holds_frame(self) -> bool:
        """True when a whole frame with valid checks starts after the first byte of the buffer."""
        j = self.buf.find(SYNC, 1)
        while j >= 0 and len(self.buf) - j >= HEADER_SIZE:
            end = self._header_at(j)
            if end is not None and end <= len(self.buf) and self._crc_ok(j, end):
                return True
            j = self.buf.find(SYNC, j + 1)
        return False

    def _drop_one(self) -> None:
        self.bad_frames += 1
        self.skipped_bytes += 1
        del self.buf[:1]
        self._pending_since = None

    def _wait(self, out, now):
        if self._pending_since is None:
            self._pending_since = now
        return out

    def _overdue(self, now, end) -> bool:
        """A partial frame is given up when its bytes stopped coming (FRAME_GAP without one), or at the
        latest when twice its time on the line (plus FRAME_GAP) has passed since it began."""
        if self._pending_since is None:
            return False
        if self._last_data is not None and now - self._last_data > FRAME_GAP:
            return True
        return now - self._pending_since > FRAME_GAP + 2 * end * self.byte_seconds


def _seq_after(a: int, b: int) -> int:
    """How far SEQ a is ahead of b, modulo 65536, as -32768..32767."""
    d = (a - b) & 0xFFFF
    return d - 0x10000 if d >= 0x8000 else d


def open_port(port: str, baud: int, timeout: float = 0.05, write_timeout: float | None = 2.0):
    """A pyserial port (a device path or any pyserial URL such as socket://host:port); RomaError if it fails."""
    try:
        import serial
    except ImportError:
        raise RomaError("the serial link needs pyserial", hint="pip install pyserial") from None
    if not isinstance(baud, int) or baud <= 0:
        raise RomaError(f"--baud must be a positive number of bits per second (got {baud})")
    try:
        return serial.serial_for_url(port, baudrate=baud, timeout=timeout, write_timeout=write_timeout)
    except (serial.SerialException, OSError, ValueError) as e:
        raise RomaError(f"cannot open serial port {port}: {e}",
                        hint="check the device name (ls /dev/tty*), the cable, and that nothing else has "
                             "the port open (a login console, another roma)") from None


def _serial_errors():
    import serial

    return (serial.SerialException, OSError)


# --- results -------------------------------------------------------------------------------------------


@dataclass
class RemoteResult(Throughput):
    """A finished answer as the board reported it: GenerationResult's fields without the prompt's ids."""

    ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = ""
    reused_tokens: int = 0
    prefill_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_tokens: int = 0
    decode_seconds: float = 0.0
    prompt_tokens: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "RemoteResult":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def result_payload(result, limit: int = MAX_PAYLOAD) -> bytes:
    """DONE's payload for a GenerationResult, within `limit` bytes (the text goes first if it must)."""
    d = result.to_dict()
    d["prompt_tokens"] = len(d.pop("prompt_ids", []))
    data = _json(d)
    if len(data) > limit:
        d.pop("text")
        data = _json(d)
    if len(data) > limit:
        d["ids"] = d["ids"][: max(0, limit - 1024) // 8]
        data = _json(d)
    return data


def _split_text(text: str, limit: int = 4096) -> list[bytes]:
    """UTF-8 chunks of at most `limit` bytes, never splitting a character."""
    out, chunk, size = [], [], 0
    for ch in text:
        b = ch.encode("utf-8")
        if size + len(b) > limit:
            out.append(b"".join(chunk))
            chunk, size = [], 0
        chunk.append(b)
        size += len(b)
    if chunk:
        out.append(b"".join(chunk))
    return out


# --- server --------------------------------------------------------------------------------------------


class SerialChatServer:
    """Serves one conversation on a serial port: a reader thread takes frames in (answering PING and NAK
    itself), the calling thread runs the model. Survives noise, dropped clients and reconnects; serves one
    client at a time (see the module doc: `lease`). `params` are the defaults for a CHAT without options and
    its limits (max_tokens); `save_dir` is where SAVE and LOAD keep conversation files."""

    RETRANSMIT_FRAMES = 4096
    RETRANSMIT_BYTES = 4 << 20

    def __init__(self, engine, port, baud: int = DEFAULT_BAUD, *, context: int | None = None,
                 params=None, adapter: str | None = None, log=None, lease: float = DEFAULT_LEASE,
                 save_dir=None):
        self.engine = engine
        self.port_name = port if isinstance(port, str) else getattr(port, "port", "port")
        self.baud = baud
        self.ser = open_port(port, baud, write_timeout=0.5) if isinstance(port, str) else port
        self.context = context
        self.adapter = adapter  # the LoRA adapter new conversations start under (None: the base model)
        self.params = params or SamplingParams()
        self.lease = float(lease)
        self.save_dir = Path(save_dir if save_dir is not None else ".").expanduser()
        self.log = log or (lambda text: print(text, file=sys.stderr, flush=True))
        self.parser = FrameParser(baud)
        self.inbox: queue.Queue[Frame] = queue.Queue()
        self.stop_event = threading.Event()
        self._write_lock = threading.Lock()
        self._seq = secrets.randbelow(0x10000)
        self._sent: deque[tuple[int, bytes]] = deque(maxlen=self.RETRANSMIT_FRAMES)
        self._sent_bytes = 0
        self._last_nak = 0.0
        self._stalled = False  # a write timed out: nobody is reading; write again once a frame comes in
        self._reader: threading.Thread | None = None
        self.reader_errors = 0  # frames the reader could not take (answered with ERROR and dropped)
        # the session
        self.session_id: str | None = None
        self.conversation = None
        self.handled: OrderedDict[int, tuple[int, bytes]] = OrderedDict()
        self._hello_seq: int | None = None  # the HELLO that started or resumed the session
        self._owner_seq: int | None = None  # the newest request SEQ of the session's client
        self._heard = 0.0  # when the session's client last sent a request

    # --- the wire -------------------------------------------------------------------------------------------

    def _send(self, ftype: int, payload: bytes = b"", ref: int = 0) -> None:
        with self._write_lock:
            seq = self._seq
            self._seq = (self._seq + 1) & 0xFFFF
            data = encode_frame(ftype, seq, ref, payload)
            if len(self._sent) == self._sent.maxlen:
                self._sent_bytes -= len(self._sent[0][1])
            self._sent.append((seq, data))
            self._sent_bytes += len(data)
            while self._sent_bytes > self.RETRANSMIT_BYTES and len(self._sent) > 1:
                self._sent_bytes -= len(self._sent.popleft()[1])
            self._write(data)

    def _write(self, data: bytes) -> None:
        if self._stalled:
            return
        try:
            self.ser.write(data)
        except _serial_errors():
            # Nobody is reading (a USB gadget port without a host) or the port is gone: the frame stays in the
            # retransmit buffer, and writing waits for the next frame from a client instead of blocking the model.
            self._stalled = True

    def _resend_from(self, start: int) -> None:
        with self._write_lock:
            frames = [d for s, d in self._sent if 0 <= _seq_after(s, start) and _seq_after(self._seq, s) > 0]
            for data in frames:
                self._write(data)

    def _read_loop(self) -> None:
        errors = _serial_errors()
        while not self.stop_event.is_set():
            try:
                data = self.ser.read(max(1, self.ser.in_waiting))
            except errors as e:
                self.log(f"serial port error: {e}")
                self.stop_event.wait(0.5)
                continue
            except Exception as e:  # a closed port object and the like: never end the reader
                self.log(f"serial port error: {type(e).__name__}: {e}")
                self.stop_event.wait(0.5)
                continue
            try:
                bad = self.parser.bad_frames
                frames = self.parser.feed(data)
            except Exception as e:  # a parser bug: forget what is buffered, keep listening
                self.log(f"frame parser error ({type(e).__name__}: {e}); {len(self.parser.buf)} bytes dropped")
                self.parser = FrameParser(self.baud)
                continue
            for frame in frames:
                try:
                    self._receive(frame)
                except Exception as e:  # one bad frame: answer it with an error and drop it
                    self.reader_errors += 1
                    self.log(f"dropped a {frame.name} frame: {type(e).__name__}: {e}")
                    try:
                        self._send(ERROR, _json({"message": f"the board could not take a {frame.name} frame "
                                                            f"({type(e).__name__})", "hint": None,
                                                 "code": "protocol"}), ref=frame.seq)
                    except Exception:
                        pass
            if self.parser.bad_frames != bad and time.monotonic() - self._last_nak > 0.2:
                self._last_nak = time.monotonic()
                self._send(NAK)  # "something of yours was lost": the client resends what is unacknowledged

    def _receive(self, frame: Frame) -> None:
        self._stalled = False
        if frame.type in REQUESTS and frame.type != HELLO:
            self._note_request(frame.seq)
        if frame.type == PING:
            self._send(PONG, ref=frame.seq)
        elif frame.type == NAK:
            start = frame.json().get("from")  # ValueError on a payload that is not an object
            if not isinstance(start, int) or isinstance(start, bool) or not 0 <= start <= 0xFFFF:
                raise ValueError(f"NAK 'from' must be a frame number 0..65535, not {str(start)[:40]}")
            self._resend_from(start)
        elif frame.type in REQUESTS:
            self.inbox.put(frame)

    # --- who is talking -----------------------------------------------------------------------------------

    def _is_owner(self, seq: int) -> bool:
        """True when a request's SEQ belongs to the numbering of the session's client."""
        owner = self._owner_seq
        return owner is not None and abs(_seq_after(seq, owner)) <= OWNER_WINDOW

    def _note_request(self, seq: int) -> None:
        owner = self._owner_seq
        if owner is not None and self._is_owner(seq):
            self._heard = time.monotonic()
            if _seq_after(seq, owner) > 0:
                self._owner_seq = seq

    def owner_live(self) -> bool:
        """True while the session's client has been heard from within the lease."""
        return self.session_id is not None and time.monotonic() - self._heard < self.lease

    # --- running ------------------------------------------------------------------------------------------

    def start_reader(self) -> None:
        if self._reader is None:
            self._reader = threading.Thread(target=self._read_loop, name="roma-serial-reader", daemon=True)
            self._reader.start()

    def serve_forever(self) -> None:
        """Until stop() (or KeyboardInterrupt, which propagates after closing the port)."""
        self.start_reader()
        try:
            while not self.stop_event.is_set():
                try:
                    frame = self.inbox.get(timeout=0.2)
                except queue.Empty:
                    continue
                self._handle(frame)
        finally:
            self.close()

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        self.stop_event.set()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=2)
        self._end_session()
        try:
            self.ser.close()
        except _serial_errors():
            pass

    # --- requests -----------------------------------------------------------------------------------------

    def _remember(self, seq: int, ftype: int, payload: bytes = b"") -> None:
        self.handled[seq] = (ftype, payload)
        while len(self.handled) > 256:
            self.handled.popitem(last=False)

    def _error(self, seq: int, e: RomaError, code: str = "error") -> None:
        hint = e.hint[:2000] if isinstance(e.hint, str) else None
        payload = _json({"message": str(e.message)[:4000], "hint": hint, "code": code})
        self._remember(seq, ERROR, payload)
        self._send(ERROR, payload, ref=seq)

    def _reply(self, frame: Frame, ftype: int, payload: bytes = b"") -> None:
        self._remember(frame.seq, ftype, payload)
        self._send(ftype, payload, ref=frame.seq)

    def _handle(self, frame: Frame) -> None:
        try:
            if frame.type == HELLO:
                self._hello(frame)
                return
            if self.session_id is None or not self._is_owner(frame.seq):
                message = ("no session on the board" if self.session_id is None else
                           "the board is serving another client's conversation now")
                self._send(ERROR, _json({"message": message, "hint": "connect again", "code": "hello"}),
                           ref=frame.seq)
                return
            if frame.seq in self.handled:  # a resent request: answer again, never run it twice
                ftype, payload = self.handled[frame.seq]
                self._send(ftype, payload, ref=frame.seq)
                return
            if frame.type == CHAT:
                self._chat(frame)
            elif frame.type == RESET:
                self.conversation.reset()
                self._reply(frame, ACK)
            elif frame.type == STATS:
                self._reply(frame, STATS, self._stats_payload())
            elif frame.type == CANCEL:  # the answer it names is over already
                self._reply(frame, ACK)
            elif frame.type == LORA:
                self._reply(frame, LORA, _json(self._lora(_payload(frame))))
            elif frame.type in (SAVE, LOAD):
                self._reply(frame, frame.type, _json(self._save_or_load(frame.type, _payload(frame))))
        except RomaError as e:
            self._error(frame.seq, e)
        except Exception as e:  # a bug must not take the board off the line: report it and go on
            import traceback

            self.log("internal error:\n" + traceback.format_exc().rstrip())
            self._error(frame.seq, RomaError(f"internal error on the board: {type(e).__name__}: {e}",
                                             hint="see the board's log"), code="internal")

    def _hello(self, frame: Frame) -> None:
        try:
            d = frame.json()
            version, session = d.get("version"), d.get("session")
            system = d.get("system")
            if not isinstance(session, str) or not session or not (system is None or isinstance(system, str)):
                raise ValueError
        except (ValueError, UnicodeDecodeError):
            self._send(ERROR, _json({"message": "malformed HELLO", "hint": None, "code": "protocol"}), ref=frame.seq)
            return
        if version != PROTOCOL_VERSION:
            self._send(ERROR, _json({"message": f"the board speaks protocol {PROTOCOL_VERSION}, "
                                                f"the client {str(version)[:20]}",
                                     "hint": "run the same roma version on both sides", "code": "version"}),
                       ref=frame.seq)
            return
        resumed = session == self.session_id and self.conversation is not None
        if not resumed and self.owner_live():
            idle = time.monotonic() - self._heard
            self._send(ERROR, _json({"message": "the board is busy with another client",
                                     "hint": f"try again when it is done (a silent client's claim lapses after "
                                             f"{self.lease:g} s; it was last heard {idle:.0f} s ago)",
                                     "code": "busy"}), ref=frame.seq)
            self.log(f"refused a second client (session {session[:8]}): busy")
            return
        if not resumed:
            self._end_session()  # gives its KV back to the engine's pool first
            try:
                conversation = self.engine.chat(system, self.context, self.adapter)
            except RomaError as e:
                self._send(ERROR, _json({"message": e.message, "hint": e.hint, "code": "error"}), ref=frame.seq)
                return
            self.session_id, self.conversation = session, conversation
            self.handled.clear()
            self.log(f"client connected (session {session[:8]})")
        elif frame.seq != self._hello_seq:  # not just a resend of the same HELLO
            self.log(f"client reconnected (session {session[:8]} resumed)")
        self._hello_seq = frame.seq
        self._owner_seq = frame.seq
        self._heard = time.monotonic()
        cfg = self.engine.config
        info = {"version": PROTOCOL_VERSION, "session": session, "resumed": resumed,
                "model": cfg.name, "backend": self.engine.backend.name,
                "context": self.conversation.session.capacity, "capabilities": CAPABILITIES,
                "limits": {"max_tokens": self.params.max_tokens, "max_payload": MAX_PAYLOAD},
                "adapter": self.conversation.adapter, "server": "roma " + _version()}
        self._send(HELLO, _json(info), ref=frame.seq)

    def _end_session(self) -> None:
        if self.conversation is not None:
            self.conversation.session.close()  # its KV positions go back to the engine's pool
        self.session_id = self.conversation = None
        self._owner_seq = None

    def stats(self) -> dict:
        """STATS: the conversation's summary (Conversation.summary), the answers' limit and the last answer."""
        last = self.conversation.stats.last
        return {**self.conversation.summary(), "max_tokens": self.params.max_tokens,
                "last": None if last is None else json.loads(result_payload(last, MAX_PAYLOAD // 2))}

    def _stats_payload(self) -> bytes:
        d = self.stats()
        data = _json(d)
        if len(data) > MAX_PAYLOAD and d["last"] is not None:
            d["last"].pop("text", None)
            d["last"]["ids"] = []
            data = _json(d)
        return data

    # --- LoRA and conversation files ----------------------------------------------------------------------

    def _lora(self, d: dict) -> dict:
        """LORA: the conversation's /lora (Conversation.lora); the folder of "load" is on the board."""
        reply = self.conversation.lora(d.get("action", "list"), d.get("name"), d.get("folder"))
        if d.get("action") == "unload" and self.adapter == d.get("name"):
            self.adapter = None  # new conversations start without it
        return reply

    def _file(self, name) -> Path:
        """A conversation file in the save folder; names that would leave it are refused."""
        if not isinstance(name, str) or not name.strip() or "\x00" in name:
            raise RomaError("give a file name", hint="/save NAME, /load NAME")
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if PurePosixPath(name).is_absolute() or Path(name).is_absolute() or ".." in parts or name.startswith("~"):
            raise RomaError(f"'{name[:200]}' is outside the board's save folder",
                            hint=f"give a plain name: files live in {self.save_dir} (roma serve --save-dir)")
        root = self.save_dir.resolve()
        path = (root / name).resolve()
        if path != root and root not in path.parents:
            raise RomaError(f"'{name[:200]}' is outside the board's save folder",
                            hint=f"give a plain name: files live in {self.save_dir} (roma serve --save-dir)")
        return path

    def _save_or_load(self, ftype: int, d: dict) -> dict:
        conv = self.conversation
        path = self._file(d.get("name"))
        if ftype == SAVE:
            if not path.parent.is_dir():
                raise RomaError(f"no folder for '{d.get('name')}' in the board's save folder")
            kept = conv.session.saved_length
            conv.save(path)
        else:
            conv.load(path)  # checked first: a refusal leaves the conversation as it was
            kept = conv.session.length
        self.log(f"conversation {'saved to' if ftype == SAVE else 'loaded from'} {path}")
        return {"name": d.get("name"), "messages": len(conv.messages), "tokens": kept, "adapter": conv.adapter}

    # --- chat ---------------------------------------------------------------------------------------------

    def _chat(self, frame: Frame) -> None:
        try:
            d = frame.json()
            text = d.get("text")
            if not isinstance(text, str):
                raise ValueError
        except (ValueError, UnicodeDecodeError):
            raise RomaError("malformed CHAT request") from None
        params = self.params
        if d.get("params") is not None:  # the client's options; it may ask for fewer tokens, never more
            params = SamplingParams.from_dict(d["params"])
            params.max_tokens = min(params.max_tokens, self.params.max_tokens)
        generation = self.conversation.send(text, params)  # RomaError: refused, nothing changed
        self._remember(frame.seq, ACK)
        self._send(ACK, ref=frame.seq)
        pieces = iter(generation)
        later: list[Frame] = []
        try:
            for piece in pieces:
                for chunk in _split_text(piece):
                    self._send(TOKEN, chunk, ref=frame.seq)
                if self._interrupted(frame.seq, later):
                    pieces.close()
                    break
        except RomaError as e:
            pieces.close()
            self.log(f"error during an answer: {e}")
        finally:
            for f in later:
                self.inbox.put(f)
        result = generation.result  # the conversation's statistics hold it too
        self._send(DONE, result_payload(result), ref=frame.seq)
        self.log(result.speed_line())

    def _interrupted(self, chat_seq: int, later: list[Frame]) -> bool:
        """Looks at requests that came in during the answer: CANCEL ends it, and so does a HELLO of this
        client's session (it reconnects) or of a new one once this client's lease has lapsed; another client's
        HELLO while this one is live is told the board is busy."""
        stop = False
        while True:
            try:
                f = self.inbox.get_nowait()
            except queue.Empty:
                return stop
            if f.type == HELLO:
                try:
                    session = f.json().get("session")
                except (ValueError, UnicodeDecodeError):
                    session = None
                if session != self.session_id and self.owner_live():
                    self._hello(f)  # answers "busy"; the answer goes on
                    continue
                later.append(f)
                stop = True
            elif not self._is_owner(f.seq):
                later.append(f)  # a stranger's request: answered after this answer
            elif f.type == CANCEL and f.ref == chat_seq:
                self._remember(f.seq, ACK)
                self._send(ACK, ref=f.seq)
                stop = True
            elif f.type == CHAT and f.seq == chat_seq:
                self._send(ACK, ref=f.seq)  # the resent request we are answering
            elif f.seq in self.handled:
                ftype, payload = self.handled[f.seq]
                self._send(ftype, payload, ref=f.seq)
            else:
                later.append(f)


def _payload(frame: Frame) -> dict:
    try:
        return frame.json()
    except (ValueError, UnicodeDecodeError):
        raise RomaError(f"malformed {frame.name} request") from None


# --- client --------------------------------------------------------------------------------------------


class SerialChatClient:
    """A conversation on a board over a serial line, used like a local one:

        client = SerialChatClient("/dev/ttyUSB0")
        answer = client.send("Hello!", SamplingParams(max_tokens=64))
        for piece in answer: print(piece, end="")
        answer.result  # RemoteResult: text, ids, finish_reason, reused_tokens, prefill/decode tokens/s...

    Every wait is bounded by `timeout` seconds without an in-order frame from the board: then RomaError, and
    the next call reconnects with a HELLO that resumes the same conversation.
    """

    def __init__(self, port, baud: int = DEFAULT_BAUD, timeout: float = DEFAULT_TIMEOUT,
                 system: str | None = None, connect: bool = True):
        if not timeout > 0:
            raise RomaError(f"the serial timeout must be > 0 seconds (got {timeout})")
        self.port_name = port if isinstance(port, str) else getattr(port, "port", "port")
        self.baud = baud
        self.timeout = float(timeout)
        self.system = system
        self.ser = open_port(port, baud) if isinstance(port, str) else port
        self.parser = FrameParser(baud)
        self.session_id = secrets.token_hex(8)
        self.info: dict = {}
        self.last: RemoteResult | None = None  # the last answer, as Conversation.stats.last; None after a reset
        self._seq = 1 + secrets.randbelow(0xFFFF)
        self._expected: int | None = None  # next server SEQ; None until a HELLO reply sets it
        self._unacked: dict[int, list] = {}  # seq -> [frame bytes, last sent time]
        self._hello_seq: int | None = None
        self._frames: deque[Frame] = deque()  # parsed, not yet looked at
        self._last_nak = 0.0
        self._last_nak_from: int | None = None
        self._closed = False
        self._last_write = 0.0
        self.resend_after = 0.4
        if connect:
            try:
                self.connect()
            except BaseException:
                self.close()
                raise

    # --- public API --------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._expected is not None

    def connect(self) -> dict:
        """HELLO: starts a conversation on the board, or resumes this client's one. Returns the board's info."""
        self._check_open()
        self._expected = None
        self._unacked.clear()
        self._frames.clear()
        hello = {"version": PROTOCOL_VERSION, "session": self.session_id, "system": self.system,
                 "client": "roma " + _version()}
        payload = _json(hello)
        if len(payload) > MAX_PAYLOAD:
            raise RomaError(f"the system prompt is {len(payload)} bytes, over the serial link's {MAX_PAYLOAD}",
                            hint="give a shorter --system")
        self._hello_seq = self._request(HELLO, payload)
        try:
            frame = self._wait({self._hello_seq}, {HELLO, ERROR})
        finally:
            self._hello_seq = None
        if frame.type == ERROR:
            self._expected = None  # not connected: the next call says HELLO again
            self._unacked.clear()
            raise self._error_of(frame)
        self.info = frame.json()
        return self.info

    def send(self, text: str, params=None) -> "RemoteGeneration":
        """Sends a message; RomaError if the board refuses it (nothing changes then). Iterate the answer.
        `params` (SamplingParams) None means the board's defaults."""
        if not isinstance(text, str):
            raise RomaError("the message must be text")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise RomaError("the message contains a lone surrogate, which is not valid Unicode text") from None
        request = {"text": text}
        if params is not None:  # None: the board's defaults (`roma serve`'s sampling options)
            request["params"] = asdict(params.validate())
        payload = _json(request)
        if len(payload) > MAX_PAYLOAD:
            raise RomaError(f"the message is {len(payload)} bytes, over the serial link's {MAX_PAYLOAD}",
                            hint="send a shorter message")
        self._ensure_connected()
        seq = self._request(CHAT, payload)
        frame = self._wait({seq}, {ACK, ERROR})
        if frame.type == ERROR:
            raise self._error_of(frame)
        return RemoteGeneration(self, seq)

    def reset(self) -> None:
        """Forgets the conversation on the board (its system prompt stays)."""
        self._ensure_connected()
        seq = self._request(RESET)
        frame = self._wait({seq}, {ACK, ERROR})
        if frame.type == ERROR:
            raise self._error_of(frame)
        self.last = None

    def stats(self) -> dict:
        """The board's view: context_tokens, capacity, messages, turns, total_reused, last (a result dict)."""
        self._ensure_connected()
        seq = self._request(STATS)
        frame = self._wait({seq}, {STATS, ERROR})
        if frame.type == ERROR:
            raise self._error_of(frame)
        return frame.json()

    def ping(self) -> float:
        """Round trip time in seconds."""
        self._ensure_connected()
        t0 = time.monotonic()
        seq = self._request(PING)
        self._wait({seq}, {PONG})
        return time.monotonic() - t0

    def lora(self, action: str = "list", name: str | None = None, folder: str | None = None) -> dict:
        """The board's LoRA adapters: action "list", "use" (name, or None for the base model), "load" (a
        folder on the board, under `name` or the folder's name) or "unload". Returns {"adapters": [{name,
        slot, rank, targets, bytes}], "active", "done", "compensation_rank"}; RomaError when refused."""
        return self._call(LORA, {"action": action, "name": name, "folder": folder})

    def save(self, name: str) -> dict:
        """Saves the board's conversation as `name` in the board's save folder: {name, messages, tokens}."""
        return self._call(SAVE, {"name": name})

    def load(self, name: str) -> dict:
        """Continues a conversation saved on the board: {name, messages, tokens, adapter}."""
        loaded = self._call(LOAD, {"name": name})
        self.last = None
        return loaded

    def _call(self, ftype: int, request: dict) -> dict:
        payload = _json(request)
        if len(payload) > MAX_PAYLOAD:
            raise RomaError(f"the request is {len(payload)} bytes, over the serial link's {MAX_PAYLOAD}")
        self._ensure_connected()
        seq = self._request(ftype, payload)
        frame = self._wait({seq}, {ftype, ERROR})
        if frame.type == ERROR:
            raise self._error_of(frame)
        return frame.json()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self.ser.close()
            except _serial_errors():
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- internals ---------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RomaError("the serial connection is closed")

    def _ensure_connected(self) -> None:
        self._check_open()
        if self._expected is None:
            self.connect()

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (self._seq + 1) & 0xFFFF or 1
        return seq

    def _request(self, ftype: int, payload: bytes = b"", ref: int = 0) -> int:
        seq = self._next_seq()
        data = encode_frame(ftype, seq, ref, payload)
        self._unacked[seq] = [data, time.monotonic()]
        self._write(data)
        return seq

    def _write(self, data: bytes) -> None:
        self._last_write = time.monotonic()
        try:
            self.ser.write(data)
        except _serial_errors() as e:
            self._expected = None
            raise RomaError(f"cannot write to {self.port_name}: {e}", hint="check the cable and the port") from None

    def _resend_due(self, now: float, force: bool = False) -> None:
        for entry in list(self._unacked.values()):
            if force or now - entry[1] > self.resend_after + len(entry[0]) * self.parser.byte_seconds * 2:
                entry[1] = now
                self._write(entry[0])

    def _nak(self, now: float) -> None:
        """Asks the board to send again from the frame we expect: at once for a new loss, then at most
        every `resend_after` seconds while the retransmission is on its way."""
        if self._expected is None:
            return
        if self._expected != self._last_nak_from or now - self._last_nak > self.resend_after:
            self._last_nak, self._last_nak_from = now, self._expected
            self._write(encode_frame(NAK, 0, 0, _json({"from": self._expected})))

    def _error_of(self, frame: Frame) -> RomaError:
        try:
            d = frame.json()
            return RomaError(str(d.get("message", "the board reported an error")), d.get("hint"))
        except (ValueError, UnicodeDecodeError):
            return RomaError("the board reported an error")

    def _timeout_error(self) -> RomaError:
        self._expected = None  # the next call says HELLO again
        self._unacked.clear()
        return RomaError(f"no answer from the board on {self.port_name} within {self.timeout:g} s; "
                         "is `roma serve --serial` running?",
                         hint=f"start `roma serve --serial PORT` on the board, check the cable and that both "
                              f"sides use the same --baud (here {self.baud})")

    def _wait(self, refs: set[int], types: set[int]) -> Frame:
        """The next in-order frame answering one of `refs` with one of `types`; the rest is bookkeeping."""
        errors = _serial_errors()
        last_progress = time.monotonic()
        ping_seq = None
        while True:
            now = time.monotonic()
            if now - last_progress > self.timeout:
                raise self._timeout_error()
            self._resend_due(now)
            if not self._unacked and self._expected is not None and (
                    now - last_progress > self.resend_after or now - self._last_write > KEEPALIVE):
                # a quiet line: is the board alive, did we miss a frame? And the board hears this client is
                # still here (its claim on the line: the server's lease)
                ping_seq = self._request(PING)
            if not self._frames:
                try:
                    data = self.ser.read(max(1, self.ser.in_waiting))
                except errors as e:
                    self._expected = None
                    raise RomaError(f"cannot read from {self.port_name}: {e}",
                                    hint="check the cable and the port") from None
                bad = self.parser.bad_frames
                self._frames.extend(self.parser.feed(data))
                if self.parser.bad_frames != bad:
                    self._nak(time.monotonic())
            while self._frames:
                frame = self._frames.popleft()
                if frame.type == ERROR and frame.ref in self._unacked and self._code(frame) == "hello":
                    self._expected = None  # a board that restarted numbers its frames anew: say HELLO again
                    self._unacked.clear()
                    said = self._error_of(frame).message
                    raise RomaError(f"the board does not know this conversation ({said}; did it restart, or "
                                    "did another client take the line?)",
                                    hint="send again: the client reconnects and starts a new conversation")
                if not self._in_order(frame):
                    continue
                last_progress = time.monotonic()
                if frame.type == NAK:
                    self._resend_due(last_progress, force=True)
                    continue
                if frame.ref in self._unacked and frame.type != NAK:
                    del self._unacked[frame.ref]
                if frame.ref == ping_seq:
                    ping_seq = None
                if frame.ref in refs and frame.type in types:
                    return frame
                if frame.type == ERROR and frame.ref in refs:
                    raise self._error_of(frame)

    @staticmethod
    def _code(frame: Frame):
        try:
            return frame.json().get("code")
        except (ValueError, UnicodeDecodeError):
            return None

    def _in_order(self, frame: Frame) -> bool:
        if self._expected is None:  # connecting: only our HELLO's answer counts, and it sets the numbering
            if frame.ref == self._hello_seq and frame.type in (HELLO, ERROR):
                if frame.type == HELLO:
                    try:
                        if frame.json().get("session") != self.session_id:
                            return False
                    except ValueError:
                        return False
                self._expected = (frame.seq + 1) & 0xFFFF
                return True
            return False
        d = _seq_after(frame.seq, self._expected)
        if d == 0:
            self._expected = (self._expected + 1) & 0xFFFF
            return True
        if d > 0:  # a gap: something was lost; ask for it again
            self._nak(time.monotonic())
        return False


def _version() -> str:
    return __version__


class RemoteGeneration:
    """One answer from the board: iterate for the text pieces; `.result` (a RemoteResult) once it ends.

    Closing the iteration early (or Ctrl-C) asks the board to stop; the partial answer stays in the
    conversation, as with a local one."""

    def __init__(self, client: SerialChatClient, seq: int):
        self.client, self.seq = client, seq
        self.result: RemoteResult | None = None
        self._text: list[str] = []
        self._started = False

    def __iter__(self):
        if self._started:
            raise RuntimeError("a generation runs once")
        self._started = True
        return self._run()

    def _run(self):
        client = self.client
        try:
            while True:
                frame = client._wait({self.seq}, {TOKEN, DONE})
                if frame.type == TOKEN:
                    piece = frame.payload.decode("utf-8", errors="replace")
                    self._text.append(piece)
                    yield piece
                else:
                    self._finish(frame)
                    return
        except (GeneratorExit, KeyboardInterrupt):
            self._cancel()
            raise

    def _finish(self, frame: Frame) -> None:
        d = frame.json()
        if "text" not in d:
            d["text"] = "".join(self._text)
        self.result = self.client.last = RemoteResult.from_dict(d)

    def _cancel(self) -> None:
        """Stops the answer on the board and waits (within the timeout) for its DONE."""
        client = self.client
        if self.result is not None or client._expected is None or client._closed:
            return
        try:
            client._request(CANCEL, ref=self.seq)
            while True:
                frame = client._wait({self.seq}, {TOKEN, DONE})
                if frame.type == TOKEN:
                    self._text.append(frame.payload.decode("utf-8", errors="replace"))
                else:
                    self._finish(frame)
                    return
        except RomaError:
            self.result = self.client.last = RemoteResult(text="".join(self._text), finish_reason="interrupted")

    def run(self) -> RemoteResult:
        for _ in self:
            pass
        return self.result
