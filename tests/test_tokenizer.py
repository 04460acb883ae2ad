"""Tokenizer tests against independent references, on the real SmolLM2 GGUF.

References:
- transformers' own GGUF tokenizer conversion (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`): it reads
  the same vocabulary and merges but is an independent implementation of the file -> tokenizer mapping
  (byte-level respelling, special tokens, BOS policy, decode, chat template rendering).
- llama.cpp (llama-cpp-python 0.3.36, `Llama(vocab_only=True).tokenize(text, add_bos=True, special=True)`),
  whose ids for a few telling strings are pinned below as literals (llama.cpp is not a test dependency).

The one difference found, and why
---------------------------------
The file says `tokenizer.ggml.pre = "smollm"`. llama.cpp (llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_SMOLLM, grouped
with STARCODER/REFACT/CODESHELL/...) splits text with two regexes in turn: first `\\p{N}` (every numeric
character on its own), then the GPT-2 regex on what is between. SmolLM2's tokenizer.json says the same thing as
`Sequence[Digits(individual_digits=True), ByteLevel(use_regex=True)]`. transformers 5.x's GGUF conversion has
no entry for "smollm" in its pre-tokenizer table and keeps GPT2Tokenizer's plain `ByteLevel` regex, so it does
not isolate digits. The vocabulary has no merge involving a digit (the only digit tokens are '0'..'9'), so most
text with digits still comes out the same; it differs where the isolation changes how the text *around* a
numeric character is split:
- a whitespace run before a digit: "a  1" -> GPT-2 regex gives " " + " 1" (ids 216 216 33), isolation gives
  "  " + "1" ("ĠĠ" = 256, 33). Same for "\\n\\n1" (198 198 33 vs "ĊĊ" 1116 33), i.e. indented numbered lists;
- a space before a non-ASCII numeric character whose first UTF-8 byte merges with "Ġ": " ١" (Arabic-Indic
  one) gives "ĠÙ"+... in transformers but "Ġ" "Ù" ... with isolation; "½ ²" likewise.
We follow llama.cpp (and SmolLM2's tokenizer.json), since llama.cpp is what the GGUF is made for, and its ids
are pinned in `LLAMA_CPP_IDS`. The comparison with transformers is therefore made two ways: (1) directly,
where the corpus entries tagged `digits` (and only those) xfail after checking that the difference is exactly
this one; (2) against transformers
applied to the text cut at every numeric character, which must equal ours on every text. A third check builds
our tokenizer with `tokenizer.ggml.pre = "gpt2"` (no isolation) and requires it to equal transformers
everywhere, so nothing else differs.

Other known (shared) behaviour: bytes the vocabulary lacks a token for (U+0004, U+0006, U+0013, U+0014, U+0016,
U+001D, and the lead bytes 0xF1/0xF2 of code points U+40000..U+BFFFF) are dropped by all three
implementations; round trips are tested on text without them.
"""

from __future__ import annotations

import collections
import functools
import inspect
import json
import random
import unicodedata

import pytest

from roma_runtime.errors import RomaError
from roma_runtime.tokenizer import IncrementalDecoder, Tokenizer

# --- corpus --------------------------------------------------------------------------------------------------

# (id, text, tags). Tag "digits": transformers' GGUF conversion differs from llama.cpp here (see above).
CORPUS = [
    ("english", "The quick brown fox jumps over the lazy dog. It's 'quoted', isn't it? We'll see; they'd've.", ()),
    ("leading_space", " Hello world", ()),
    ("leading_spaces", "   three leading spaces", ()),
    ("trailing_spaces", "trailing spaces   ", ()),
    ("only_spaces", "     ", ()),
    ("empty", "", ()),
    ("whitespace_runs", "a  b   c    d\t\te \t f\n\n\ng\r\nh", ()),
    ("newlines_tabs", "line one\nline two\n\tindented\n\t\tdeeper\n", ()),
    ("accents", "Café naïve résumé façade Ångström Ærøskøbing crème brûlée", ()),
    ("combining", "e\u0301 a\u0308 n\u0303 (combining marks)", ()),
    ("cjk", "你好，世界！这是一个测试。日本語のテキストとカタカナ。한국어 텍스트입니다", ()),
    ("arabic", "مرحبا بالعالم، كيف حالك؟", ()),
    ("hebrew_cyrillic_greek", "שלום עולם. Привет, мир! Γειά σου Κόσμε", ()),
    ("emoji", "I ❤️ 🍕 and 🚀🚀🚀!", ()),
    ("emoji_zwj", "family 👨‍👩‍👧‍👦, flags 🇺🇸🇯🇵, skin 👍🏽, rainbow 🏳️‍🌈, 🧑🏿‍💻", ()),
    ("math_symbols", "∀x ∈ ℝ: x² ≥ 0 → √x² = |x|; ∑ᵢ aᵢ ≈ π", ()),
    ("code_python",
     "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n", ()),
    ("code_c", "int main(void) {\n\tfor (int i = 0; i < 10; ++i) printf(\"%d\\n\", i);\n\treturn 0;\n}", ()),
    ("code_json", '{"key": [1, 2.5, -3e10], "nested": {"a": null, "b": true}}', ()),
    ("code_html", '<div class="x">&amp; <a href="https://example.com/?q=1&r=2">link</a></div>', ()),
    ("contractions", "I'm you're he's we've they'll she'd IT'S DON'T", ()),
    ("long_digits", "12345678901234567890123456789012345678901234567890", ()),
    ("numbers_in_text", "In 2024, 3.14159 and 1,000,000 and 0x1F and v1.2.3 and 42nd", ()),
    ("digits_after_space_run", "x =  12\ny =   345", ("digits",)),
    ("numbered_list", "Steps:\n\n1. one\n2. two\n    10. indented ten", ("digits",)),
    ("unicode_digits", "٣ ١٢٣ ۴۵ १२३ ½ ² ³ Ⅻ ①", ("digits",)),
    ("special_chat", "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", ()),
    ("special_inline", "text<|endoftext|>more text <|im_end|> spaced <file_sep>x", ()),
    ("special_like_not_special", "<|im_start |> <im_start> <|unknown|> |im_end|", ()),
    ("punctuation", "Punctuation!!! ??? ... --- (parens) [brackets] {braces} «guillemets» „quotes“", ()),
    ("urls_paths", "See https://huggingface.co/HuggingFaceTB/SmolLM2-135M and /usr/local/bin/python3", ()),
    ("nbsp_zero_width", "non\u00a0breaking and zero\u200bwidth and \u3000 ideographic space", ()),
    ("mixed", "Mixed: English, français, 中文, русский, العربية, and emoji 😀 in one line.", ()),
]
CORPUS_IDS = [c[0] for c in CORPUS]

# ids from llama.cpp (llama-cpp-python 0.3.36, vocab_only, add_bos=True, special=True) for this GGUF
LLAMA_CPP_IDS = {
    "a  1": [81, 256, 33],
    "\n\n1": [1116, 33],
    "x =  12": [104, 446, 256, 33, 34],
    " ١٢٣": [216, 164, 111, 164, 112, 164, 113],
    "½ ²": [16738, 216, 19133],
    "hello world": [28120, 905],
    "<|im_start|>user\nhi<|im_end|>": [1, 4093, 198, 6004, 2],
    "\x04a\x06": [81],
}


def _docstrings(limit: int = 400) -> list[str]:
    """A few hundred stdlib docstrings (deterministic order)."""
    seen: set[str] = set()
    out: list[str] = []
    for module in (inspect, json, collections, functools, random, unicodedata):
        for name, obj in sorted(vars(module).items()):
            members = [v for _, v in sorted(vars(obj).items())] if inspect.isclass(obj) else []
            for o in (obj, *members):
                doc = getattr(o, "__doc__", None)
                if isinstance(doc, str) and doc.strip() and doc not in seen:
                    seen.add(doc)
                    out.append(doc)
    return out[:limit]


DOCSTRINGS = _docstrings()


# --- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(smollm2):  # the session-wide SmolLM2 LoadedModel from conftest.py
    return smollm2


@pytest.fixture(scope="module")
def tok(model):
    return Tokenizer.from_model(model)


@pytest.fixture(scope="module")
def meta(model):
    return model.metadata


@pytest.fixture(scope="module")
def hf(smollm2_hf_tokenizer):
    """The reference: transformers' tokenizer of the same GGUF."""
    return smollm2_hf_tokenizer


@pytest.fixture(scope="module")
def hf_isolates_digits(hf):
    """True if this transformers version splits 'smollm' text like llama.cpp (5.x does not)."""
    return _hf_ids(hf, "a  1") == LLAMA_CPP_IDS["a  1"]


@pytest.fixture(scope="module")
def tok_gpt2_split(meta):
    """Our tokenizer with plain GPT-2 pre-tokenization (what transformers does for this file)."""
    return Tokenizer.from_gguf_metadata({**meta, "tokenizer.ggml.pre": "gpt2"})


def _hf_ids(hf, text: str) -> list[int]:
    return hf.encode(text, add_special_tokens=True)


def _hf_ids_digits_isolated(hf, text: str) -> list[int]:
    """transformers' tokenizer applied to the text cut before and after every numeric character."""
    pieces, cur = [], []
    for ch in text:
        if unicodedata.category(ch).startswith("N"):
            pieces += ["".join(cur), ch]
            cur = []
        else:
            cur.append(ch)
    pieces.append("".join(cur))
    return [i for p in pieces if p for i in hf.encode(p, add_special_tokens=False)]


# --- encoding against transformers and llama.cpp -------------------------------------------------------------


@pytest.mark.parametrize("text, tags", [(t, tags) for _, t, tags in CORPUS], ids=CORPUS_IDS)
def test_encode_equals_transformers_gguf(tok, hf, hf_isolates_digits, text, tags):
    ours, ref = tok.encode(text), _hf_ids(hf, text)
    if "digits" in tags and not hf_isolates_digits:
        # the documented difference, and only it: equal once transformers' input is cut at numeric characters
        assert ours != ref and ours == _hf_ids_digits_isolated(hf, text)
        pytest.xfail("transformers' GGUF conversion has no 'smollm' pre-tokenizer and does not isolate numeric "
                     "characters as llama.cpp and SmolLM2's tokenizer.json do (see the module docstring)")
    assert ours == ref


@pytest.mark.parametrize("text", [t for _, t, _ in CORPUS], ids=CORPUS_IDS)
def test_encode_equals_transformers_with_digits_isolated(tok, hf, text):
    assert tok.encode(text) == _hf_ids_digits_isolated(hf, text)


def test_gpt2_split_variant_equals_transformers_everywhere(tok_gpt2_split, hf, hf_isolates_digits):
    """Without digit isolation we match transformers on every text, digits included: the pre-tokenizer is
    the only difference."""
    if hf_isolates_digits:
        pytest.skip("this transformers version isolates digits for 'smollm' like llama.cpp")
    texts = [t for _, t, _ in CORPUS] + DOCSTRINGS
    bad = [t for t in texts if tok_gpt2_split.encode(t) != _hf_ids(hf, t)]
    assert not bad, f"{len(bad)} texts differ, first: {bad[0][:200]!r}"


def test_docstrings_corpus(tok, hf):
    assert len(DOCSTRINGS) >= 200
    bad = [d for d in DOCSTRINGS if tok.encode(d) != _hf_ids_digits_isolated(hf, d)]
    assert not bad, f"{len(bad)} docstrings differ, first: {bad[0][:200]!r}"
    # The direct comparison differs only where a numeric character follows whitespace (indented numbers in
    # docstrings: "\n    33" is "ĊĠĠĠĠ" "3" "3" for llama.cpp and us, "ĊĠĠĠ" "Ġ" "3" "3" for transformers).
    direct = [d for d in DOCSTRINGS if tok.encode(d) != _hf_ids(hf, d)]
    assert len(direct) < len(DOCSTRINGS) // 10
    for d in direct:
        assert any(d[k - 1].isspace() and unicodedata.category(d[k]).startswith("N") for k in range(1, len(d)))


@pytest.mark.parametrize("text", list(LLAMA_CPP_IDS), ids=range(len(LLAMA_CPP_IDS)))
def test_encode_equals_llama_cpp(tok, text):
    assert tok.encode(text) == LLAMA_CPP_IDS[text]


def test_digits_are_split_individually(tok):
    ids = tok.encode("31415926535")
    assert [tok.token_text(i) for i in ids] == list("31415926535")


def test_special_tokens_parsed_from_text(tok):
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == tok.token_id("<|im_start|>") == 1
    assert ids[-1] == tok.token_id("<|im_end|>") == 2
    # parse_special=False: control-token text is ordinary characters (for untrusted input)
    plain = tok.encode("<|im_start|>user", parse_special=False)
    assert 1 not in plain and tok.decode(plain) == "<|im_start|>user"
    assert tok.encode("<|im_start|>user") == [1, *tok.encode("user")]


def test_parse_special_false_equals_transformers_split_special_tokens(tok, hf):
    text = "<|im_start|>user\nhi<|im_end|> <file_sep>x <|endoftext|>"
    assert tok.encode(text, parse_special=False) == hf.encode(text, split_special_tokens=True)
    assert tok.encode(text) == hf.encode(text)


def test_no_bos_unless_file_says_so(tok, meta):
    assert meta["tokenizer.ggml.add_bos_token"] is False and not tok.add_bos
    assert tok.encode("hi") == tok.encode("hi", add_special=False)
    with_bos = Tokenizer.from_gguf_metadata({**meta, "tokenizer.ggml.add_bos_token": True})
    assert with_bos.add_bos
    assert with_bos.encode("hi") == [tok.bos_id, *tok.encode("hi")]
    assert with_bos.encode("hi", add_special=False) == tok.encode("hi")


def test_bytes_input(tok):
    assert tok.encode("héllo 世界".encode()) == tok.encode("héllo 世界")


def test_missing_byte_tokens_are_dropped_like_the_references(tok, hf):
    # the vocabulary has no token for byte 0x04 (nor 0x06, 0x13, 0x14, 0x16, 0x1d): all three drop it
    assert tok.encode("\x04a\x06") == _hf_ids(hf, "\x04a\x06") == [tok.token_id("a")]


# --- special ids and metadata ----------------------------------------------------------------------------


def test_special_ids(tok, meta):
    assert tok.vocab_size == len(meta["tokenizer.ggml.tokens"]) == 49152
    assert tok.bos_id == 1 and tok.token_text(1) == "<|im_start|>"
    assert tok.eos_id == 2 and tok.token_text(2) == "<|im_end|>"
    # eos, and <|im_end|> because the template closes assistant turns with it (same id here)
    assert tok.eos_ids == {2}
    assert tok.special_ids == {i for i, t in enumerate(meta["tokenizer.ggml.token_type"]) if t == 3}
    assert tok.token_text(905) == "Ġworld" and tok.token_bytes(905) == b" world"


def test_eos_ids_follow_the_file_and_template(meta):
    extra = Tokenizer.from_gguf_metadata({**meta, "tokenizer.ggml.eot_token_id": 0})
    assert extra.eos_ids == {0, 2}
    # a template closing assistant turns with <|endoftext|> makes that an end token too
    tmpl = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
            "{% if m['role'] == 'assistant' %}<|endoftext|>{% endif %}\n{% endfor %}")
    other = Tokenizer.from_gguf_metadata({**meta, "tokenizer.chat_template": tmpl})
    assert other.eos_ids == {0, 2}
    # a template that does not close turns with a control token adds nothing
    plain = Tokenizer.from_gguf_metadata({**meta, "tokenizer.chat_template": "{{ messages[0]['content'] }}"})
    assert plain.eos_ids == {2}


# --- decoding --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [t for _, t, _ in CORPUS], ids=CORPUS_IDS)
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_round_trip_docstrings(tok):
    bad = [d for d in DOCSTRINGS if tok.decode(tok.encode(d)) != d]
    assert not bad


def test_decode_equals_transformers(tok, hf):
    rng = random.Random(1234)
    seqs = [tok.encode(t) for _, t, _ in CORPUS]
    # random ids, including ones that cut UTF-8 characters (decoded with U+FFFD by both)
    seqs += [[rng.randrange(tok.vocab_size) for _ in range(rng.randrange(1, 40))] for _ in range(300)]
    byte_ids = [tok.token_id(tok.token_text(i)) for i in tok.encode("😀世é")]
    seqs += [byte_ids[:k] for k in range(len(byte_ids))] + [byte_ids[1:], byte_ids[::-1]]
    for ids in seqs:
        assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        assert tok.decode(ids, skip_special=True) == hf.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


STREAM_TEXTS = [
    "👨‍👩‍👧‍👦🇺🇸👍🏽🏳️‍🌈🧑🏿‍💻😀",
    "你好，世界！这是一个测试。日本語のテキスト。한국어 텍스트",
    "mixed 中文 and emoji 🚀 with accents éàü and Arabic مرحبا and math ∑ √ ≈",
    "<|im_start|>assistant\nSure! 🍕🍕 costs 12€.<|im_end|>",
]


@pytest.mark.parametrize("text", STREAM_TEXTS, ids=range(len(STREAM_TEXTS)))
def test_incremental_decoder_matches_full_decode(tok, text):
    ids = tok.encode(text)
    dec = tok.stream_decoder()
    pieces = []
    for i in ids:
        piece = dec.feed(i)
        assert "\ufffd" not in piece
        assert dec.pending_bytes <= 3
        pieces.append(piece)
    pieces.append(dec.flush())
    assert "".join(pieces) == tok.decode(ids) == text
    # the stream actually had to hold bytes back somewhere for this to be a test of it
    if any(ord(c) > 0x7FF for c in text):
        assert any(len(tok.token_bytes(i).decode("utf-8", "ignore")) < len(tok.token_bytes(i)) for i in ids)


def test_incremental_decoder_invalid_utf8_and_skip_special(tok):
    rng = random.Random(7)
    for _ in range(200):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randrange(1, 30))]
        dec = IncrementalDecoder(tok)
        assert dec.feed_many(ids) + dec.flush() == tok.decode(ids)
        dec2 = tok.stream_decoder(skip_special=True)
        assert "".join(dec2.feed(i) for i in ids) + dec2.flush() == tok.decode(ids, skip_special=True)
    # a character cut off at the end becomes one U+FFFD at flush, as in the full decode
    cut = tok.encode("😀")[:-1]
    dec = tok.stream_decoder()
    assert dec.feed_many(cut) == "" and dec.pending_bytes > 0
    assert dec.flush() == tok.decode(cut) == "\ufffd"
    assert dec.pending_bytes == 0  # flush resets for a new stream


# --- chat template ---------------------------------------------------------------------------------------

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke about 🐍 and 中文."}],
    [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "a"},
     {"role": "assistant", "content": "b"}, {"role": "user", "content": "  spaced\n\nlines  "}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=range(len(CONVERSATIONS)))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_equals_transformers(tok, hf, messages, add_generation_prompt):
    ours = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    ref = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert ours == ref
    assert tok.encode_chat(messages, add_generation_prompt) == _hf_ids_digits_isolated(hf, ref)


def test_chat_template_default_system_prompt(tok):
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


# --- Hugging Face folder -------------------------------------------------------------------------------------


def test_hf_folder_tokenizer_equals_gguf(tok, tmp_path):
    """A folder with tokenizer.json + tokenizer_config.json (as SmolLM2's HF repo ships them) gives the same
    tokenizer as the GGUF."""
    tok._backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>", "special": True},
        "chat_template": tok.chat_template, "add_bos_token": False}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 2, "bos_token_id": 1}))
    hf_tok = Tokenizer.from_hf_folder(tmp_path)
    assert hf_tok.vocab_size == tok.vocab_size and hf_tok.eos_ids == tok.eos_ids
    assert (hf_tok.bos_id, hf_tok.eos_id, hf_tok.add_bos) == (tok.bos_id, tok.eos_id, tok.add_bos)
    for _, text, _ in CORPUS:
        assert hf_tok.encode(text) == tok.encode(text)
        assert hf_tok.decode(tok.encode(text)) == text
    conv = CONVERSATIONS[2]
    assert hf_tok.apply_chat_template(conv) == tok.apply_chat_template(conv)


def test_hf_folder_chat_template_file(tok, tmp_path):
    tok._backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}")
    hf_tok = Tokenizer.from_hf_folder(tmp_path)
    assert hf_tok.apply_chat_template([{"role": "user", "content": "x"}]) == "[user] x\n"


def test_hf_folder_sentencepiece_byte_fallback(tmp_path):
    """A Llama-2 style tokenizer.json (Metaspace-like normalizer, byte fallback, Strip decoder): decode and
    streaming equal the tokenizers library's own decode."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, normalizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece in ["\u2581", "h", "i", "\u2581h", "\u2581hi", "o", "\u2581o"]:
        vocab[piece] = len(vocab)
    merges = [("\u2581", "h"), ("\u2581h", "i"), ("\u2581", "o")]
    backend = Backend(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    backend.add_special_tokens(["<s>", "</s>"])
    backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    t = Tokenizer.from_hf_folder(tmp_path)
    for text in ["hi", "hi 世界 😀 oh", " leading", "ho hi"]:
        ids = t.encode(text)
        assert any(3 <= i < 259 for i in ids) or text.isascii()
        assert t.decode(ids) == backend.decode(ids, skip_special_tokens=False)
        dec = t.stream_decoder()
        pieces = [dec.feed(i) for i in ids]
        assert all("\ufffd" not in p for p in pieces)
        assert "".join(pieces) + dec.flush() == backend.decode(ids, skip_special_tokens=False)


# --- errors ----------------------------------------------------------------------------------------------


def test_from_model_dispatch(model, tok):
    assert Tokenizer.from_model(model).encode("hello world") == tok.encode("hello world")


def test_error_hf_folder_without_tokenizer_json(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(RomaError, match="no tokenizer.json") as e:
        Tokenizer.from_hf_folder(tmp_path)
    assert e.value.hint and "tokenizer.json" in e.value.hint


def test_error_no_tokenizer_data(meta):
    stripped = {k: v for k, v in meta.items() if not k.startswith("tokenizer.")}
    with pytest.raises(RomaError, match="no tokenizer data"):
        Tokenizer.from_gguf_metadata(stripped)


def test_error_unsupported_tokenizer_model(meta):
    with pytest.raises(RomaError, match=r"'llama' \(SentencePiece\); only 'gpt2' \(byte-level BPE\)"):
        Tokenizer.from_gguf_metadata({**meta, "tokenizer.ggml.model": "llama"})


def test_error_unsupported_pre_tokenizer(meta):
    with pytest.raises(RomaError, match="tokenizer.ggml.pre='qwen2' is not supported") as e:
        Tokenizer.from_gguf_metadata({**meta, "tokenizer.ggml.pre": "qwen2"})
    assert "smollm" in e.value.hint


def test_error_missing_merges(meta):
    with pytest.raises(RomaError, match="merges"):
        Tokenizer.from_gguf_metadata({k: v for k, v in meta.items() if k != "tokenizer.ggml.merges"})


def test_error_merges_not_in_vocabulary(meta):
    bad = {**meta, "tokenizer.ggml.merges": [*meta["tokenizer.ggml.merges"], "zzqq xxyy"]}
    with pytest.raises(RomaError, match="vocabulary and merges do not fit together.*zzqq"):
        Tokenizer.from_gguf_metadata(bad)


def test_error_not_a_gguf(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"not a gguf file")
    with pytest.raises(RomaError, match="is not a GGUF file"):
        Tokenizer.from_gguf(path)


def test_error_bad_text(tok):
    with pytest.raises(RomaError, match="not valid UTF-8: byte 1"):
        tok.encode(b"a\xff")
    with pytest.raises(RomaError, match="must be str or UTF-8 bytes, not int"):
        tok.encode(123)
    with pytest.raises(RomaError, match="lone surrogate U\\+D800"):
        tok.encode("a\ud800")


def test_error_bad_ids(tok):
    with pytest.raises(RomaError, match="outside the vocabulary"):
        tok.decode([1, tok.vocab_size])
    with pytest.raises(RomaError, match="outside the vocabulary"):
        tok.stream_decoder().feed(-1)
    with pytest.raises(RomaError, match="must be an int"):
        tok.decode(["a"])
    with pytest.raises(RomaError, match="outside the vocabulary"):
        tok.token_text(10**9)


@pytest.mark.parametrize("messages, match", [
    ([], "non-empty list"),
    ("hello", "non-empty list"),
    ([{"role": "robot", "content": "x"}], "role 'robot'.*system, user, assistant"),
    ([{"role": "user", "content": 5}], "message 0 \\(user\\) needs 'content' as a str"),
    ([{"role": "user"}], "needs 'content' as a str, not NoneType"),
    ([{"role": "user", "content": "ok"}, ("user", "x")], "message 1 must be a dict"),
])
def test_error_bad_messages(tok, messages, match):
    with pytest.raises(RomaError, match=match):
        tok.apply_chat_template(messages)


def test_error_no_chat_template(meta):
    bare = Tokenizer.from_gguf_metadata({k: v for k, v in meta.items() if k != "tokenizer.chat_template"})
    with pytest.raises(RomaError, match="has no chat template"):
        bare.apply_chat_template([{"role": "user", "content": "hi"}])


def test_error_template_raises(meta):
    tmpl = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be user') }}{% endif %}ok"
    t = Tokenizer.from_gguf_metadata({**meta, "tokenizer.chat_template": tmpl})
    assert t.apply_chat_template([{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(RomaError, match="rejected the conversation: first message must be user"):
        t.apply_chat_template([{"role": "system", "content": "x"}])
