"""Text <-> token ids, chat templates and streaming detokenization for the models ROMA runs.

A GGUF file carries its tokenizer as metadata (vocabulary, merges, token types, special ids, chat template);
a Hugging Face folder carries `tokenizer.json` and `tokenizer_config.json`. Both become one `Tokenizer`:

    tok = Tokenizer.from_model(load_model("smollm2-135m"))
    ids = tok.encode_chat([{"role": "user", "content": "Hi"}])
    stream = tok.stream_decoder()
    text = "".join(stream.feed(i) for i in generated_ids) + stream.flush()

Encoding runs on the `tokenizers` library. From a GGUF it is built the way llama.cpp reads the file:

- `tokenizer.ggml.model == "gpt2"`: byte-level BPE with the file's merges (the only kind supported now);
- `tokenizer.ggml.pre` picks the pre-tokenizer split (see `_PRE_TOKENIZERS`). For "smollm" llama.cpp
  (LLAMA_VOCAB_PRE_TYPE_SMOLLM, with starcoder/refact/codeshell/...) first isolates every `\\p{N}`
  character and then applies the GPT-2 regex; SmolLM2's own tokenizer.json says the same with
  `Sequence[Digits(individual_digits=True), ByteLevel(use_regex=True)]`, which is what we build;
- CONTROL (token_type 3) and UNKNOWN (2) tokens are special tokens, USER_DEFINED (4) are added tokens: all
  are matched whole in text, as llama.cpp's special-token partition does (`parse_special=False` leaves
  special tokens as plain text, for untrusted input; user-defined ones are still matched, as in llama.cpp);
- BOS/EOS are added only when `tokenizer.ggml.add_bos_token` / `add_eos_token` say so.

Decoding does not go through `tokenizers`: every id has a fixed byte string (a byte-level token maps its
characters back to bytes; a control or user-defined token is its own UTF-8 text, as llama.cpp renders it),
and text is those bytes decoded as UTF-8. That makes streaming exact and cheap: `IncrementalDecoder` holds
back at most the 3 bytes of an unfinished character and never re-decodes history. Invalid UTF-8 (ids that cut
a character) becomes one U+FFFD per maximal invalid subsequence, as in llama.cpp's and tokenizers' ByteLevel
decoding. (For a sentencepiece tokenizer.json with byte fallback, tokenizers writes one U+FFFD per invalid
byte token instead; valid text decodes the same.)

Bytes for which a vocabulary has no token at all are dropped when encoding, as llama.cpp and transformers do
(SmolLM2 lacks 0x04, 0x06, 0x13, 0x14, 0x16, 0x1d and the lead bytes 0xF1/0xF2).
"""

from __future__ import annotations

import codecs
import json
import operator
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import RomaError
from .model.loader import read_gguf_metadata, resolve_model_path

__all__ = ["Tokenizer", "IncrementalDecoder", "SUPPORTED_PRE_TOKENIZERS"]

# llama.cpp token types (llama_token_type / gguf.TokenType)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

_CHAT_ROLES = ("system", "user", "assistant")

# tokenizer.ggml.pre -> the pre-tokenizer llama.cpp applies for it (names grouped as llama-vocab.cpp groups
# them). "digits+gpt2": each \p{N} character isolated, then the GPT-2 regex on the rest. "gpt2": the GPT-2
# regex alone. Others are refused rather than guessed: a wrong split gives valid-looking but different ids.
_PRE_TOKENIZERS = {
    "smollm": "digits+gpt2",
    "starcoder": "digits+gpt2",
    "refact": "digits+gpt2",
    "codeshell": "digits+gpt2",
    "command-r": "digits+gpt2",
    "exaone": "digits+gpt2",
    "minerva-7b": "digits+gpt2",
    "gpt-2": "gpt2",
    "gpt2": "gpt2",
    "mpt": "gpt2",
    "olmo": "gpt2",
    "jais": "gpt2",
}
SUPPORTED_PRE_TOKENIZERS = tuple(sorted(_PRE_TOKENIZERS))


@lru_cache(maxsize=1)
def _byte_level_alphabet() -> tuple[dict[int, str], dict[str, int]]:
    """GPT-2's reversible byte <-> printable character map (bytes that print as themselves keep their code
    point; the other 68 move to U+0100 onwards, in byte order)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    byte_to_char: dict[int, str] = {}
    moved = 0
    for b in range(256):
        if b in keep:
            byte_to_char[b] = chr(b)
        else:
            byte_to_char[b] = chr(256 + moved)
            moved += 1
    return byte_to_char, {c: b for b, c in byte_to_char.items()}


def _byte_level_spelling(text: str) -> str:
    byte_to_char, _ = _byte_level_alphabet()
    return "".join(byte_to_char[b] for b in text.encode("utf-8"))


def _byte_level_bytes(token: str) -> bytes | None:
    """The bytes a byte-level token stands for, or None if it uses a character outside the alphabet."""
    _, char_to_byte = _byte_level_alphabet()
    try:
        return bytes(char_to_byte[c] for c in token)
    except KeyError:
        return None


def _check_text(text: Any) -> str:
    if isinstance(text, (bytes, bytearray, memoryview)):
        raw = bytes(text)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RomaError(
                f"input bytes are not valid UTF-8: byte {e.start} ({raw[e.start:e.start + 1]!r}) {e.reason}",
                hint="pass a str, or bytes encoded as UTF-8",
            ) from None
    if not isinstance(text, str):
        raise RomaError(f"text to encode must be str or UTF-8 bytes, not {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RomaError(
            f"text contains a lone surrogate U+{ord(text[e.start]):04X} at character {e.start}, "
            "which is not valid Unicode text",
            hint="this usually comes from decoding bytes with errors='surrogateescape'; decode them as UTF-8",
        ) from None
    return text


# --- chat templates ----------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _compile_chat_template(source: str):
    """A Hugging Face style chat template: sandboxed jinja2 with trim_blocks/lstrip_blocks, loop controls,
    `raise_exception`, a `tojson` that keeps non-ASCII text, `strftime_now`, and `{% generation %}` blocks
    (rendered as their plain content)."""
    import datetime

    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _GenerationBlock(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise RomaError(f"the model's chat template is not valid jinja: {e.message} (line {e.lineno})") from None


def _validate_messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise RomaError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts",
                        hint=f"got {type(messages).__name__}" + (" (empty)" if not messages else ""))
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RomaError(f"message {i} must be a dict with 'role' and 'content', not {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in _CHAT_ROLES:
            raise RomaError(f"message {i} has role {role!r}; the role must be one of {', '.join(_CHAT_ROLES)}")
        if not isinstance(content, str):
            raise RomaError(f"message {i} ({role}) needs 'content' as a str, not {type(content).__name__}")
        _check_text(content)
        out.append({"role": role, "content": content})
    return out


# --- the tokenizer -----------------------------------------------------------------------------------------


class Tokenizer:
    """Encode/decode, special ids, chat template and streaming decode for one model's vocabulary.

    Build it with `from_model`, `from_gguf_metadata` or `from_hf_folder`, not with the constructor.
    """

    def __init__(
        self,
        *,
        backend,
        token_strings: list[str],
        token_bytes: list[bytes],
        special_ids: set[int],
        bos_id: int | None,
        eos_id: int | None,
        add_bos: bool,
        add_eos: bool,
        chat_template: str | None,
        extra_eos_ids: Iterable[int] = (),
        use_post_processor: bool = False,
        strip_leading_space: bool = False,
        source: str = "",
    ):
        self._backend = backend  # tokenizers.Tokenizer
        self._backend_plain = None  # a copy that does not parse special tokens (made on first use)
        self._strings = token_strings
        self._bytes = token_bytes
        self._special = frozenset(special_ids)
        self._bos_id = bos_id
        self._eos_id = eos_id
        self._add_bos = add_bos
        self._add_eos = add_eos
        self._use_post_processor = use_post_processor  # HF folders: tokenizer.json's post-processor adds BOS/EOS
        self._strip_leading_space = strip_leading_space  # sentencepiece decoders drop the first space
        self.chat_template = chat_template
        self.source = source
        eos = {i for i in (eos_id, *extra_eos_ids) if i is not None}
        eos |= self._template_turn_end_ids()
        self._eos_ids = frozenset(eos)

    # --- construction -------------------------------------------------------------------------------------

    @classmethod
    def from_model(cls, model) -> Tokenizer:
        """The tokenizer of a `LoadedModel` (GGUF metadata, or the Hugging Face folder it came from)."""
        fmt = getattr(model, "format", None)
        if fmt == "gguf":
            return cls.from_gguf_metadata(model.metadata, source=str(model.source))
        if fmt == "hf":
            return cls.from_hf_folder(model.source)
        raise RomaError(f"cannot build a tokenizer for a model of format {fmt!r}", hint="expected 'gguf' or 'hf'")

    @classmethod
    def from_gguf(cls, path: str | Path) -> Tokenizer:
        """Read only a GGUF file's metadata (no weights) and build its tokenizer."""

        path = resolve_model_path(path)
        _, metadata = read_gguf_metadata(path)
        return cls.from_gguf_metadata(metadata, source=str(path))

    @classmethod
    def from_gguf_metadata(cls, metadata: dict[str, Any], source: str = "GGUF metadata") -> Tokenizer:
        """From GGUF key/values (`LoadedModel.metadata`, or `read_gguf_metadata`'s dict); `source` names the
        file in error messages."""
        from tokenizers import AddedToken, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as Backend

        where = source
        tokens = metadata.get("tokenizer.ggml.tokens")
        kind = metadata.get("tokenizer.ggml.model")
        if not tokens or kind is None:
            missing = "tokenizer.ggml.tokens" if not tokens else "tokenizer.ggml.model"
            raise RomaError(f"{where} has no tokenizer data ({missing} is missing)",
                            hint="use a GGUF converted with its tokenizer, or the model's Hugging Face folder")
        if kind != "gpt2":
            what = {"llama": "SentencePiece", "bert": "WordPiece", "t5": "Unigram"}.get(kind, "")
            raise RomaError(
                f"{where}: tokenizer.ggml.model is '{kind}'" + (f" ({what})" if what else "")
                + "; only 'gpt2' (byte-level BPE) tokenizers are supported now",
                hint="SmolLM2, Llama 3 and Qwen-style GGUFs use 'gpt2'")
        pre = metadata.get("tokenizer.ggml.pre")
        if pre not in _PRE_TOKENIZERS:
            raise RomaError(
                f"{where}: pre-tokenizer tokenizer.ggml.pre={pre!r} is not supported",
                hint="supported: " + ", ".join(SUPPORTED_PRE_TOKENIZERS))
        merges_raw = metadata.get("tokenizer.ggml.merges")
        if not merges_raw:
            raise RomaError(f"{where}: a byte-level BPE tokenizer needs tokenizer.ggml.merges, which is missing")
        n = len(tokens)
        types = list(metadata.get("tokenizer.ggml.token_type") or [_NORMAL] * n)
        if len(types) != n:
            raise RomaError(f"{where}: tokenizer.ggml.token_type has {len(types)} entries for {n} tokens")

        # Vocabulary: every token keyed by its stored text. A NORMAL token written outside the byte-level
        # alphabet (some converters store raw text) is respelled from its UTF-8 bytes, as transformers does.
        vocab: dict[str, int] = {}
        token_bytes: list[bytes] = []
        strings: list[str] = []
        special_ids: set[int] = set()
        added = []
        for i, (tok, typ) in enumerate(zip(tokens, types)):
            tok = str(tok)
            typ = int(typ)
            strings.append(tok)
            key = tok
            if typ in (_CONTROL, _UNKNOWN, _USER_DEFINED):
                # Matched whole in text and rendered as their own text, as llama.cpp does.
                token_bytes.append(tok.encode("utf-8"))
                added.append((i, AddedToken(tok, special=typ != _USER_DEFINED, normalized=False)))
                if typ != _USER_DEFINED:
                    special_ids.add(i)
            elif typ == _UNUSED:
                token_bytes.append(b"")
            else:
                raw = _byte_level_bytes(tok)
                if raw is None:
                    raw = tok.encode("utf-8")
                    key = _byte_level_spelling(tok)
                token_bytes.append(raw)
            if key not in vocab:  # a duplicate can't share the BPE vocabulary; the first id is the one encoded
                vocab[key] = i

        merges = []
        for k, line in enumerate(merges_raw):
            parts = str(line).split(" ")
            if len(parts) != 2:
                raise RomaError(f"{where}: merge {k} ({line!r}) is not two tokens separated by one space")
            merges.append((parts[0], parts[1]))
        try:
            backend = Backend(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
        except Exception as e:  # tokenizers raises on merges naming tokens that are not in the vocabulary
            raise RomaError(f"{where}: the BPE vocabulary and merges do not fit together ({e})") from None

        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
        if _PRE_TOKENIZERS[pre] == "digits+gpt2":
            backend.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Digits(individual_digits=True), byte_level])
        else:
            backend.pre_tokenizer = byte_level
        backend.decoder = decoders.ByteLevel()
        backend.add_special_tokens([t for _, t in added if t.special])
        backend.add_tokens([t for _, t in added if not t.special])
        for i, t in added:  # each added token's text is in the vocabulary already, so no id may move
            if backend.token_to_id(t.content) != i and vocab.get(t.content) == i:
                raise RomaError(f"{where}: special token {t.content!r} did not keep its id {i}")

        def special(key):
            v = metadata.get(f"tokenizer.ggml.{key}")
            if v is None:
                return None
            v = int(v)
            if not 0 <= v < n:
                raise RomaError(f"{where}: tokenizer.ggml.{key} = {v} is outside the vocabulary (0..{n - 1})")
            return v

        bos, eos = special("bos_token_id"), special("eos_token_id")
        extra = [special("eot_token_id"), special("eom_token_id")]
        return cls(
            backend=backend,
            token_strings=strings,
            token_bytes=token_bytes,
            special_ids=special_ids,
            bos_id=bos,
            eos_id=eos,
            add_bos=bool(metadata.get("tokenizer.ggml.add_bos_token", False)) and bos is not None,
            add_eos=bool(metadata.get("tokenizer.ggml.add_eos_token", False)) and eos is not None,
            chat_template=metadata.get("tokenizer.chat_template"),
            extra_eos_ids=[i for i in extra if i is not None],
            source=where,
        )

    @classmethod
    def from_hf_folder(cls, folder: str | Path) -> Tokenizer:
        """A Hugging Face model folder: tokenizer.json (+ tokenizer_config.json, chat_template.jinja,
        generation_config.json when present)."""
        from tokenizers import Tokenizer as Backend

        folder = Path(folder)
        tj = folder / "tokenizer.json"
        if not tj.is_file():
            raise RomaError(
                f"{folder} has no tokenizer.json, so ROMA cannot tokenize for this model",
                hint="copy tokenizer.json (and tokenizer_config.json) from the model's Hugging Face repo into it, "
                     "or use the model's GGUF file")
        try:
            spec = json.loads(tj.read_text(encoding="utf-8"))
            backend = Backend.from_str(json.dumps(spec))
        except Exception as e:
            raise RomaError(f"{tj} is not a readable tokenizers file ({type(e).__name__}: {e})") from None
        config = _read_json(folder / "tokenizer_config.json")
        gen_config = _read_json(folder / "generation_config.json")

        size = backend.get_vocab_size(with_added_tokens=True)
        id_to_string: list[str] = []
        for i in range(size):
            s = backend.id_to_token(i)
            id_to_string.append(s if s is not None else "")
        added = {int(t["id"]): t for t in spec.get("added_tokens", [])}
        special_ids = {i for i, t in added.items() if t.get("special")}

        decoder_kind = _hf_decoder_kind(spec.get("decoder"))
        if decoder_kind is None:
            raise RomaError(f"{tj}: its decoder {json.dumps(spec.get('decoder'))[:200]} is not supported",
                            hint="supported: ByteLevel, or sentencepiece-style Replace/ByteFallback/Fuse/Strip")
        token_bytes = []
        for i, s in enumerate(id_to_string):
            if i in added:
                token_bytes.append(added[i]["content"].encode("utf-8"))
            elif decoder_kind == "byte_level":
                raw = _byte_level_bytes(s)
                token_bytes.append(raw if raw is not None else s.encode("utf-8"))
            else:  # sentencepiece: <0xNN> byte tokens, U+2581 is a space
                byte = _sentencepiece_byte(s)
                token_bytes.append(bytes([byte]) if byte is not None else s.replace("\u2581", " ").encode("utf-8"))

        def token_id(value):
            if isinstance(value, dict):
                value = value.get("content")
            return backend.token_to_id(value) if isinstance(value, str) else None

        bos, eos = token_id(config.get("bos_token")), token_id(config.get("eos_token"))
        gen_eos = gen_config.get("eos_token_id")
        extra = gen_eos if isinstance(gen_eos, list) else [gen_eos]
        extra = [int(i) for i in extra if isinstance(i, int) and 0 <= i < size]
        probe = backend.encode("", add_special_tokens=True).ids
        return cls(
            backend=backend,
            token_strings=id_to_string,
            token_bytes=token_bytes,
            special_ids=special_ids,
            bos_id=bos,
            eos_id=eos,
            add_bos=bos is not None and probe[:1] == [bos],
            add_eos=eos is not None and probe[-1:] == [eos],
            chat_template=_hf_chat_template(folder, config),
            extra_eos_ids=extra,
            use_post_processor=True,
            strip_leading_space=decoder_kind == "sentencepiece_strip",
            source=str(folder),
        )

    # --- properties ---------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self._strings)

    @property
    def bos_id(self) -> int | None:
        return self._bos_id

    @property
    def eos_id(self) -> int | None:
        return self._eos_id

    @property
    def eos_ids(self) -> frozenset[int]:
        """Ids that end generation: eos, the file's end-of-turn/end-of-message ids, and the control token that
        the chat template closes an assistant turn with (`<|im_end|>` for ChatML templates)."""
        return self._eos_ids

    @property
    def add_bos(self) -> bool:
        """Whether `encode(text)` starts with BOS (the model file says so)."""
        return self._add_bos

    @property
    def special_ids(self) -> frozenset[int]:
        """Control tokens (GGUF token_type CONTROL; special added tokens of a tokenizer.json)."""
        return self._special

    def token_text(self, token_id: int) -> str:
        """The token as the vocabulary stores it (byte-level spelling, e.g. 'Ġworld', or '<|im_end|>')."""
        return self._strings[self._check_id(token_id)]

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes the token stands for in decoded text (may be part of a UTF-8 character)."""
        return self._bytes[self._check_id(token_id)]

    def token_id(self, text: str) -> int | None:
        """The id of a token given as the vocabulary spells it, or None."""
        return self._backend.token_to_id(text)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special

    # --- encode / decode ----------------------------------------------------------------------------------

    def encode(self, text: str | bytes, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of `text`. `add_special` adds BOS (and EOS) only where the model file asks for it.
        Control tokens written in the text (e.g. '<|im_start|>') become their ids unless `parse_special` is
        False, which tokenizes them as plain characters (use it for untrusted input)."""
        text = _check_text(text)
        backend = self._backend if parse_special else self._plain_backend()
        try:
            ids = backend.encode(text, add_special_tokens=add_special and self._use_post_processor).ids
        except Exception as e:
            raise RomaError(f"tokenizing failed: {type(e).__name__}: {e}") from None
        if add_special and not self._use_post_processor:
            if self._add_bos:
                ids.insert(0, self._bos_id)
            if self._add_eos:
                ids.append(self._eos_id)
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of a token id sequence. Bytes that are not valid UTF-8 (a sequence cut mid-character) become
        U+FFFD. `skip_special` leaves out control tokens such as '<|im_end|>'."""
        table, special = self._bytes, self._special
        parts = []
        for i in ids:
            i = self._check_id(i)
            if skip_special and i in special:
                continue
            parts.append(table[i])
        text = b"".join(parts).decode("utf-8", errors="replace")
        if self._strip_leading_space and text.startswith(" "):
            text = text[1:]
        return text

    def stream_decoder(self, skip_special: bool = False) -> IncrementalDecoder:
        return IncrementalDecoder(self, skip_special=skip_special)

    # --- chat ---------------------------------------------------------------------------------------------

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text for a conversation, rendered by the model's own chat template."""
        if not self.chat_template:
            raise RomaError(f"model {self.source} has no chat template",
                            hint="encode plain text with encode(), or use an instruction-tuned model's file")
        msgs = _validate_messages(messages)
        return self._render(msgs, add_generation_prompt)

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """apply_chat_template + encode. Like transformers, no BOS/EOS is added on top: the template writes
        whatever special tokens the model wants."""
        return self.encode(self.apply_chat_template(messages, add_generation_prompt), add_special=False)

    def _render(self, messages, add_generation_prompt) -> str:
        import jinja2

        template = _compile_chat_template(self.chat_template)
        context = {
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self._text_of(self._bos_id),
            "eos_token": self._text_of(self._eos_id),
        }
        try:
            return template.render(**context)
        except jinja2.exceptions.TemplateError as e:
            raise RomaError(f"the model's chat template rejected the conversation: {e}") from None
        except Exception as e:  # a template can fail in arbitrary ways on unexpected input
            raise RomaError(f"rendering the chat template failed: {type(e).__name__}: {e}") from None

    def _template_turn_end_ids(self) -> set[int]:
        """The control token right after an assistant message's content in the rendered template."""
        if not self.chat_template:
            return set()
        probe = "\u2063ROMA-PROBE\u2063"
        try:
            text = self._render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": probe},
                                 {"role": "user", "content": "Bye"}], False)
        except RomaError:
            return set()
        at = text.find(probe)
        if at < 0:
            return set()
        tail = text[at + len(probe):].lstrip(" \t\r\n")
        best = None
        for i in self._special:
            s = self._bytes[i].decode("utf-8", errors="replace")
            if s and tail.startswith(s) and (best is None or len(s) > len(self._bytes[best])):
                best = i
        return {best} if best is not None else set()

    # --- helpers ------------------------------------------------------------------------------------------

    def _text_of(self, token_id: int | None) -> str:
        return "" if token_id is None else self._bytes[token_id].decode("utf-8", errors="replace")

    def _check_id(self, token_id) -> int:
        try:
            i = operator.index(token_id)
        except TypeError:
            raise RomaError(f"token id must be an int, not {type(token_id).__name__} ({token_id!r})") from None
        if not 0 <= i < len(self._bytes):
            raise RomaError(f"token id {i} is outside the vocabulary (0..{len(self._bytes) - 1})")
        return i

    def _plain_backend(self):
        if self._backend_plain is None:
            from tokenizers import Tokenizer as Backend

            plain = Backend.from_str(self._backend.to_str())
            plain.encode_special_tokens = True
            self._backend_plain = plain
        return self._backend_plain

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, bos_id={self._bos_id}, eos_ids={sorted(self._eos_ids)}, "
                f"source={self.source!r})")


class IncrementalDecoder:
    """Streaming detokenizer: `feed(id)` returns the text that is complete so far; `flush()` the rest.

    The pieces concatenate to exactly `tokenizer.decode(ids)`. Bytes of a character that is not finished yet
    (a multi-byte character split over byte-level tokens) are held back, at most 3 bytes, so a valid text
    never shows U+FFFD on the way; invalid bytes become U+FFFD exactly where the full decode puts them.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False):
        self._tok = tokenizer
        self._skip_special = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._strip = tokenizer._strip_leading_space
        self._started = False  # any text emitted yet (for sentencepiece's leading-space strip)

    def feed(self, token_id: int) -> str:
        tok = self._tok
        i = tok._check_id(token_id)
        if self._skip_special and i in tok._special:
            return ""
        return self._emit(self._utf8.decode(tok._bytes[i]))

    def feed_many(self, ids: Iterable[int]) -> str:
        return "".join(self.feed(i) for i in ids)

    def flush(self) -> str:
        """The held-back bytes of an unfinished character (as U+FFFD), and reset for a new stream."""
        out = self._emit(self._utf8.decode(b"", final=True))
        self.reset()
        return out

    def reset(self) -> None:
        self._utf8.reset()
        self._started = False

    @property
    def pending_bytes(self) -> int:
        """How many bytes are held back waiting for the rest of a character."""
        return len(self._utf8.getstate()[0])

    def _emit(self, text: str) -> str:
        if text and not self._started:
            self._started = True
            if self._strip and text.startswith(" "):
                text = text[1:]
        return text


# --- Hugging Face folder helpers ---------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RomaError(f"{path} is not valid JSON ({e})") from None
    return data if isinstance(data, dict) else {}


def _hf_chat_template(folder: Path, config: dict) -> str | None:
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": "..."}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template else None


def _sentencepiece_byte(piece: str) -> int | None:
    """The byte of a byte-fallback token '<0xNN>', else None."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return int(piece[3:5], 16)
        except ValueError:
            return None
    return None


def _hf_decoder_kind(decoder: dict | None) -> str | None:
    """'byte_level', 'sentencepiece' or 'sentencepiece_strip' for the decoders whose output is a fixed byte
    string per token; None for anything else."""
    if not decoder:
        return None
    if decoder.get("type") == "ByteLevel":
        return "byte_level"
    if decoder.get("type") != "Sequence":
        return None
    steps = decoder.get("decoders") or []
    kinds = [d.get("type") for d in steps]
    if kinds == ["ByteLevel"]:
        return "byte_level"
    replace_ok = any(d.get("type") == "Replace" and d.get("pattern", {}).get("String") == "\u2581"
                     and d.get("content") == " " for d in steps)
    if not replace_ok or "ByteFallback" not in kinds or not set(kinds) <= {"Replace", "ByteFallback", "Fuse", "Strip"}:
        return None
    strips = [d for d in steps if d.get("type") == "Strip"]
    if not strips:
        return "sentencepiece"
    if len(strips) == 1 and strips[0].get("content") == " " and strips[0].get("start") == 1 \
            and strips[0].get("stop") == 0 and kinds[-1] == "Strip":
        return "sentencepiece_strip"
    return None
