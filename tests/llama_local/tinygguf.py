"""Build a tiny random-weight llama GGUF model that llama.cpp loads in a blink.

``build_tiny_gguf(path)`` writes a ~0.3 MB file in a few tens of milliseconds
(it needs ``numpy`` and the ``gguf`` package, test-only dependencies). The model:

* is a 2-layer, 64-wide llama with a byte-level GPT-2 style vocabulary: the 256
  byte tokens (ids 0-255), a few merged tokens, then the control tokens
  ``<|endoftext|>`` (256 + len(merges)), ``<|im_start|>`` (BOS) and
  ``<|im_end|>`` (EOS);
* carries a ChatML ``tokenizer.chat_template`` and ``llama.context_length = n_ctx``;
* only ever generates printable ASCII, exactly one character per token, and
  never generates EOS or any other control token: a completion runs until
  ``max_tokens`` (``finish_reason == "length"``) or a stop string. That makes
  streaming, cancellation and token-count tests deterministic in length. The
  text itself is noise.

The weights are drawn from ``numpy.random.default_rng(seed)``, so the same seed
gives a byte-identical file.

``build_scripted_gguf(path, script)`` writes a model with the same vocabulary (plus a token
for each multi-byte piece of the script) that always answers with ``script``, one piece per
token, then EOS: the byte tokens of an emoji one by one, a 64-byte token... Its layers add
nothing, so the next token depends only on the last one (a chain through the script).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import gguf
import numpy as np

__all__ = ["CHAT_TEMPLATE", "TOKENS", "build_scripted_gguf", "build_tiny_gguf"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_N_EMBD, _N_LAYER, _N_HEAD, _N_HEAD_KV, _N_FF = 64, 2, 4, 2, 128
_MERGES = ["Ġ t", "h e", "i n", "e r", "a n"]
_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _byte_tokens() -> list[str]:
    """GPT-2's byte-to-unicode table: the text of the token for each byte 0..255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


#: The vocabulary, in id order.
TOKENS: list[str] = [*_byte_tokens(), *(m.replace(" ", "") for m in _MERGES), *_SPECIALS]


def _writer(path: Path, tokens: list[str], n_ctx: int) -> gguf.GGUFWriter:
    """A writer with the model's header and vocabulary (``tokens``) filled in."""
    n_vocab = len(tokens)
    bos, eos = tokens.index("<|im_start|>"), tokens.index("<|im_end|>")

    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny-random-llama")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(n_ctx)
    w.add_embedding_length(_N_EMBD)
    w.add_block_count(_N_LAYER)
    w.add_feed_forward_length(_N_FF)
    w.add_head_count(_N_HEAD)
    w.add_head_count_kv(_N_HEAD_KV)
    w.add_rope_dimension_count(_N_EMBD // _N_HEAD)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in _SPECIALS else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges(_MERGES)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_pad_token_id(tokens.index("<|endoftext|>"))
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    return w


def _finish(w: gguf.GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def build_tiny_gguf(path: Path, *, n_ctx: int = 256, seed: int = 0) -> Path:
    """Write the tiny model to ``path`` (parent folder must exist) and return ``path``."""
    rng = np.random.default_rng(seed)
    n_vocab = len(TOKENS)
    w = _writer(path, TOKENS, n_ctx)

    def rand(*shape: int, scale: float = 0.1) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    # Channel 0 of the residual stream is a constant 8.0 that no layer writes to,
    # so after the final norm it dominates (about 6.9). Output rows weigh it +16 for
    # printable ASCII bytes and -16 for every other token: a logit gap of about
    # 220, which even sampling at temperature 10 does not bridge in practice.
    embd = rand(n_vocab, _N_EMBD)
    embd[:, 0] = 8.0
    out = rand(n_vocab, _N_EMBD)
    allowed = np.zeros(n_vocab, dtype=bool)
    allowed[0x20:0x7F] = True
    out[:, 0] = np.where(allowed, 16.0, -16.0)
    head_dim = _N_EMBD // _N_HEAD
    w.add_tensor("token_embd.weight", embd)
    w.add_tensor("output_norm.weight", np.ones(_N_EMBD, dtype=np.float32))
    w.add_tensor("output.weight", out)
    for i in range(_N_LAYER):
        attn_out, ffn_down = rand(_N_EMBD, _N_EMBD), rand(_N_EMBD, _N_FF)
        attn_out[0], ffn_down[0] = 0.0, 0.0  # keep channel 0 constant
        # numpy shapes are (out, in): the reverse of ggml's dimension order
        for name, tensor in {
            "attn_norm.weight": np.ones(_N_EMBD, dtype=np.float32),
            "attn_q.weight": rand(_N_EMBD, _N_EMBD),
            "attn_k.weight": rand(_N_HEAD_KV * head_dim, _N_EMBD),
            "attn_v.weight": rand(_N_HEAD_KV * head_dim, _N_EMBD),
            "attn_output.weight": attn_out,
            "ffn_norm.weight": np.ones(_N_EMBD, dtype=np.float32),
            "ffn_gate.weight": rand(_N_FF, _N_EMBD),
            "ffn_up.weight": rand(_N_FF, _N_EMBD),
            "ffn_down.weight": ffn_down,
        }.items():
            w.add_tensor(f"blk.{i}.{name}", tensor)
    _finish(w)
    return path


def build_scripted_gguf(path: Path, script: list[bytes], *, n_ctx: int = 256) -> Path:
    """Write a model that answers every chat prompt with ``script`` (one token per piece,
    then EOS) to ``path`` and return ``path``.

    A one-byte piece is that byte's token; a longer piece gets a token of its own. The
    pieces must differ from each other and from ``b"\\n"`` (the prompt's last token, which
    leads to the first piece); at most 62. Each token's embedding is one channel of its own;
    the output row of its successor reads that channel (a logit gap of 256)."""
    byte_text = _byte_tokens()
    extra = [p for p in script if len(p) > 1]
    tokens = [*TOKENS[:-len(_SPECIALS)], *("".join(byte_text[b] for b in p) for p in extra), *_SPECIALS]
    ids = {**{bytes([b]): b for b in range(256)}, **{p: 256 + len(_MERGES) + i for i, p in enumerate(extra)}}
    chain = [ids[b"\n"], *(ids[p] for p in script), tokens.index("<|im_end|>")]
    if len(set(chain)) != len(chain) or len(chain) > _N_EMBD:
        raise ValueError("the script's pieces must differ (from each other and from b'\\n'), at most 62")
    n_vocab = len(tokens)
    w = _writer(path, tokens, n_ctx)
    embd = np.zeros((n_vocab, _N_EMBD), dtype=np.float32)
    out = np.zeros((n_vocab, _N_EMBD), dtype=np.float32)
    for channel, (token, successor) in enumerate(itertools.pairwise(chain)):
        embd[token, channel] = 1.0  # after the norm: 8.0
        out[successor, channel] = 32.0
    w.add_tensor("token_embd.weight", embd)
    w.add_tensor("output_norm.weight", np.ones(_N_EMBD, dtype=np.float32))
    w.add_tensor("output.weight", out)
    kv = _N_HEAD_KV * (_N_EMBD // _N_HEAD)
    for i in range(_N_LAYER):  # layers that add nothing to the residual stream
        for name, shape in {"attn_norm.weight": (_N_EMBD,), "attn_q.weight": (_N_EMBD, _N_EMBD),
                            "attn_k.weight": (kv, _N_EMBD), "attn_v.weight": (kv, _N_EMBD),
                            "attn_output.weight": (_N_EMBD, _N_EMBD), "ffn_norm.weight": (_N_EMBD,),
                            "ffn_gate.weight": (_N_FF, _N_EMBD), "ffn_up.weight": (_N_FF, _N_EMBD),
                            "ffn_down.weight": (_N_EMBD, _N_FF)}.items():
            filler = np.ones if name.endswith("norm.weight") else np.zeros
            w.add_tensor(f"blk.{i}.{name}", filler(shape, dtype=np.float32))
    _finish(w)
    return path
