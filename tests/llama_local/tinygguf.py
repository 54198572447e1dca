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
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

__all__ = ["CHAT_TEMPLATE", "TOKENS", "build_tiny_gguf"]

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


def build_tiny_gguf(path: Path, *, n_ctx: int = 256, seed: int = 0) -> Path:
    """Write the tiny model to ``path`` (parent folder must exist) and return ``path``."""
    rng = np.random.default_rng(seed)
    n_vocab = len(TOKENS)
    bos, eos = TOKENS.index("<|im_start|>"), TOKENS.index("<|im_end|>")

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
    w.add_token_list(TOKENS)
    w.add_token_types([gguf.TokenType.CONTROL if t in _SPECIALS else gguf.TokenType.NORMAL for t in TOKENS])
    w.add_token_merges(_MERGES)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_pad_token_id(TOKENS.index("<|endoftext|>"))
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

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

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
