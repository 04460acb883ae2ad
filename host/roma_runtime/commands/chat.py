"""`roma chat`: an interactive conversation, streamed, with the KV cache of earlier turns kept.

Reads one message per line from stdin. At a terminal it shows a "you> " prompt (with line editing); from a
pipe it reads the lines as they come and prints only the answers on stdout, so scripts and tests can read
them. Timings and errors go to stderr. A bad line (too long for the context, not UTF-8, an unknown command)
prints one error and the conversation goes on; Ctrl-C during an answer stops that answer.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager

from ..errors import RomaError
from ..kv import kv_token_bytes
from . import common

HELP = "chat with the model (streamed; the conversation's KV cache is kept between turns)"

COMMAND_HELP = """\
commands:
  /reset   forget the conversation (keeps the system prompt)
  /stats   tokens in the context, last turn's speed and reused tokens, KV memory
  /lora    list the resident LoRA adapters (* = active)
  /lora NAME          continue the conversation under adapter NAME
  /lora off           continue with the base model
  /lora load [NAME=]DIR    load a PEFT adapter folder (needs a free slot, --lora-slots)
  /lora unload NAME   free its slot
  /save FILE  save the conversation (messages and KV cache) to FILE
  /load FILE  continue a conversation saved with /save (same model, numerics and adapter)
  /help    this list
  /quit    leave (Ctrl-D too)
  //text   send a message that starts with '/'
Ctrl-C during an answer stops the answer. Over --serial, /lora load and /save, /load use folders and files
on the board (/save and /load in the folder of its `roma serve --save-dir`)."""


def add_arguments(parser) -> None:
    link = parser.add_argument_group("serial link (talk to `roma serve --serial` on a board)")
    link.add_argument("--serial", metavar="PORT", default=None,
                      help="chat with the model on a board over this serial port instead of running it here")
    link.add_argument("--baud", type=int, default=None, help="serial speed (default: the link's, 115200)")
    common.add_engine_arguments(parser)
    common.add_lora_arguments(parser)
    common.add_threads_argument(parser)
    parser.add_argument("--system", default=None, metavar="TEXT",
                        help="system prompt (default: the chat template's own, if it has one)")
    # Greedy answers of a small model loop easily; a mild penalty keeps a chat readable (generate stays at 1).
    common.add_sampling_arguments(parser, repeat_penalty=1.1)


class _Reader:
    """Lines of stdin as text: `readline` from a terminal (with editing), raw bytes from a pipe."""

    def __init__(self, interactive: bool):
        self.interactive = interactive
        if interactive:
            try:
                import readline  # noqa: F401  (line editing and history for input())
            except ImportError:
                pass

    def read(self) -> str | None:
        """The next line without its newline; None at end of input. RomaError for a line that is not text."""
        if self.interactive:
            try:
                line = input("you> ")
            except EOFError:
                return None
            except UnicodeDecodeError as e:
                raise RomaError(f"that line is not valid UTF-8: byte {e.start} {e.reason}",
                                hint="type or paste UTF-8 text") from None
            return common.check_text(line, "that line")
        raw = sys.stdin.buffer.readline()
        if not raw:
            return None
        raw = raw.rstrip(b"\n").rstrip(b"\r")
        return common.decode_utf8(raw, "that line")


class ChatSession:
    """The REPL over a local Conversation, or over a SerialChatClient (engine None) talking to a board."""

    def __init__(self, engine, args, params, out=None, err=None, remote=None):
        self.engine = engine
        self.params = params
        self.on_chip = bool(getattr(args, "on_chip", False))
        self.remote = remote
        if remote is not None:
            self.conversation = remote
        else:
            specs = getattr(args, "lora_specs", None) or []
            self.conversation = engine.chat(args.system, args.context, specs[0][0] if specs else None)
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    # --- output helpers -------------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        self.err.write(common.dim(text, self.err) + "\n")
        self.err.flush()

    def error(self, e: RomaError | str) -> None:
        self.err.write(f"error: {e}\n")
        self.err.flush()

    # --- commands -------------------------------------------------------------------------------------------

    def remote_stats(self) -> str:
        st = self.remote.stats()  # the board's Conversation.summary()
        board = f"board: {self.remote.info.get('model')} on {self.remote.info.get('backend')}"
        if st.get("max_tokens"):
            board += f", answers of at most {st['max_tokens']} tokens"
        lines = [f"context: {st['context_tokens']} / {st['capacity']} tokens in the board's cache, "
                 f"{st['messages']} messages, {st['turns']} turns, {st['total_reused']} tokens reused in all",
                 board, f"adapter: {st.get('adapter') or 'none (base model)'}"]
        if self.remote.last is not None:
            lines.append("last turn: " + self.remote.last.speed_line())
        return "\n".join(lines)

    def stats(self) -> str:
        if self.remote is not None:
            return self.remote_stats()
        st = self.conversation.summary()
        lines = [f"context: {st['context_tokens']} / {st['capacity']} tokens in the cache, "
                 f"{st['messages']} messages, {st['turns']} turns"]
        r = self.conversation.stats.last
        if r is None:
            lines.append("last turn: none yet")
        else:
            lines.append(
                f"last turn: reused {r.reused_tokens} tokens, prefill {r.prefill_tokens} tokens at "
                f"{r.prefill_tokens_per_s:.1f} tok/s, decode {r.decode_tokens} tokens at "
                f"{r.decode_tokens_per_s:.1f} tok/s, {len(r.ids)} generated ({r.finish_reason})")
            lines.append(f"total reused: {st['total_reused']} tokens")
        e = self.engine
        lines.append(f"adapter: {st['adapter'] or 'none (base model)'}")
        kv_line = f"KV cache: {kv_token_bytes(e.config, e.kv_dtype)} bytes/token ({e.kv_dtype})"
        if e.kv_budget is not None:
            kv_line += f"; {e.kv_budget.describe()}"
        lines.append(kv_line)
        return "\n".join(lines)

    def remote_file_command(self, name: str, arg: str) -> None:
        """/save and /load on the board (the files are in its save folder)."""
        if not arg:
            raise RomaError(f"{name} needs a file name", hint=f"{name} NAME (a file in the board's save folder)")
        if name == "/save":
            d = self.remote.save(arg)
            self.say(f"(conversation saved on the board as {d['name']}: {d['messages']} messages, "
                     f"{d['tokens']} tokens of KV cache)")
        else:
            d = self.remote.load(arg)
            self.say(f"(conversation loaded on the board from {d['name']}: {d['messages']} messages, "
                     f"{d['tokens']} tokens, adapter {d['adapter'] or 'none'})")

    def lora_command(self, arg: str) -> None:
        """/lora [NAME | off | load [NAME=]DIR | unload NAME], here or on the board (Conversation.lora)."""
        words = arg.split(None, 1)
        command = words[0].lower() if words else ""
        if not words:
            request = ("list",)
        elif command == "off" and len(words) == 1:
            request = ("use", None)
        elif command == "load" and len(words) == 2:
            spec, adapter = words[1].strip(), None
            if "=" in spec:
                left, right = spec.split("=", 1)
                if left and "/" not in left:
                    adapter, spec = left, right
            request = ("load", adapter, spec)
        elif command == "unload" and len(words) == 2:
            request = ("unload", words[1].strip())
        elif len(words) > 1:
            raise RomaError(f"/lora {arg}: expected one adapter name",
                            hint="/lora lists them; /lora NAME, /lora off, /lora load [NAME=]DIR")
        else:
            request = ("use", words[0])
        d = self.conversation.lora(*request)  # the conversation here, or the board's (SerialChatClient)
        if d.get("done"):
            self.say(f"({d['done']})")
            return
        lines = [f"{'*' if row['name'] == d.get('active') else ' '} {row['name']}  slot {row['slot']}, rank "
                 f"{row['rank']}, {', '.join(row['targets'])}, {row['bytes'] / 1024:.0f} KiB"
                 for row in d.get("adapters", [])]
        if not lines:
            lines = ["no LoRA adapters loaded on the board (/lora load [NAME=]DIR, a folder on the board)"
                     if self.remote is not None else "no LoRA adapters loaded (start with --lora DIR)"]
        elif d.get("active") is None:
            lines.append("* off (base model)")
        if d.get("compensation_rank"):
            lines.append(f"(the build's compensating LoRA, rank {d['compensation_rank']}, is always on)")
        self.say("\n".join(lines))

    def command(self, line: str) -> bool:
        """Runs a /command; False means quit."""
        name = line.split()[0].lower()
        arg = line[len(name):].strip()
        if name in ("/quit", "/exit", "/q"):
            return False
        try:
            self._command(name, arg)
        except RomaError as e:  # a refused command changes nothing
            self.error(e)
        except Exception as e:  # noqa: BLE001 -- no file a /load or /lora reads may end the chat
            # The readers refuse bad files with RomaError; anything else is a fault of ours. Conversation.load and
            # Engine.load_lora check everything before they change anything, so the conversation and the active
            # adapter are as they were: say so, and go on.
            self.error(f"{name} failed ({type(e).__name__}: {e}); the conversation and the active adapter are "
                       "unchanged")
        return True

    def _command(self, name: str, arg: str) -> None:
        if name == "/lora":
            self.lora_command(arg)
        elif name in ("/save", "/load") and self.remote is not None:
            self.remote_file_command(name, arg)
        elif name in ("/save", "/load"):
            if not arg:
                raise RomaError(f"{name} needs a file name", hint=f"{name} FILE")
            if name == "/save":
                kept = self.conversation.session.saved_length
                path = self.conversation.save(arg)
                self.say(f"(conversation saved to {path}: {len(self.conversation.messages)} messages, "
                         f"{kept} tokens of KV cache)")
            else:
                self.conversation.load(arg)
                self.say(f"(conversation loaded from {arg}: {len(self.conversation.messages)} messages, "
                         f"{self.conversation.session.length} tokens, adapter "
                         f"{self.conversation.adapter or 'none'})")
        elif name == "/reset":
            self.conversation.reset()
            self.say("(conversation cleared)")
        elif name == "/stats":
            self.say(self.stats())
        elif name in ("/help", "/?"):
            self.say(COMMAND_HELP)
        else:
            raise RomaError(f"unknown command {name}", hint="/help lists the commands; //text sends '/text'")

    # --- one turn -------------------------------------------------------------------------------------------

    def answer(self, text: str) -> None:
        extra = {"on_chip": True} if self.on_chip else {}  # autonomous decode (--on-chip)
        generation = self.conversation.send(text, self.params, **extra)  # RomaError here changes nothing
        pieces = iter(generation)
        interrupted = False
        try:
            for piece in pieces:
                self.out.write(piece)
                self.out.flush()
        except KeyboardInterrupt:
            interrupted = True
            pieces.close()  # ends the generation: the partial answer joins the conversation
        self.out.write("\n")
        self.out.flush()
        result = generation.result  # the conversation's statistics hold it too
        self.note(result.speed_line())
        if interrupted:
            self.note("(answer stopped)")
        elif result.finish_reason == "context":
            self.note("(the context is full: /reset to start over, or a larger --context)")

    def loop(self, reader: _Reader) -> int:
        if reader.interactive:
            self.note("type a message, /help for commands, Ctrl-D to leave")
        ctrl_c = False
        while True:
            try:
                line = reader.read()
            except RomaError as e:
                self.error(e)
                continue
            except KeyboardInterrupt:
                if ctrl_c or not reader.interactive:
                    self.err.write("\n")
                    return 0
                ctrl_c = True
                self.err.write("\n(Ctrl-C again or Ctrl-D to leave)\n")
                continue
            ctrl_c = False
            if line is None:
                if reader.interactive:
                    self.err.write("\n")
                return 0
            if not line.strip():
                continue
            if line.startswith("/") and not line.startswith("//"):
                if not self.command(line.strip()):
                    return 0
                continue
            if line.startswith("//"):
                line = line[1:]
            try:
                self.answer(line)
            except RomaError as e:
                self.error(e)
            except KeyboardInterrupt:  # between the refusal checks and the first token
                self.err.write("\n(answer stopped)\n")


@contextmanager
def _own_ctrl_c(interactive: bool):
    """Ctrl-C at a terminal signals its whole foreground process group: under `make chat`, make as well, which
    then dies of SIGINT when the chat ends, however it ends (after /quit too). Like a shell starting a job, the
    chat takes the terminal in a process group of its own, so that Ctrl-C reaches it alone, and gives the
    terminal back when it ends."""
    fd = sys.stdin.fileno() if interactive else -1
    try:
        foreground = interactive and os.getpgrp() != os.getpid() and os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        foreground = False
    if not foreground:  # a group of its own already (a shell's job), or no terminal to take
        yield
        return
    previous = os.getpgrp()
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # tcsetpgrp from a background group would stop us
    # Ctrl-Z would stop the chat alone and leave its parent waiting on a terminal no one reads
    signal.signal(signal.SIGTSTP, signal.SIG_IGN)
    os.setpgid(0, 0)
    os.tcsetpgrp(fd, os.getpgrp())
    try:
        yield
    finally:
        try:
            os.tcsetpgrp(fd, previous)
        except OSError:  # the parent's group is gone: nobody to give the terminal back to
            pass


def run(args) -> int:
    params = common.sampling_params(args)
    common.check_context(args)
    system = common.check_text(args.system, "--system") if args.system is not None else None
    args.system = system
    if args.serial is not None:
        from ..serial_link import DEFAULT_BAUD, SerialChatClient

        client = SerialChatClient(args.serial, baud=args.baud or DEFAULT_BAUD, system=system)
        reader = _Reader(sys.stdin.isatty())
        try:
            with _own_ctrl_c(reader.interactive):
                return ChatSession(None, args, params, remote=client).loop(reader)
        finally:
            client.close()
    common.apply_threads(args)
    engine = common.load_engine(args)
    engine.warm_up()  # so that the first prompt's prefill figure is its own, not the backend's first call
    session = ChatSession(engine, args, params)
    reader = _Reader(sys.stdin.isatty())
    with _own_ctrl_c(reader.interactive):
        return session.loop(reader)
