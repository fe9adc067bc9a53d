"""A tiny random-weight llama GGUF, written by the test suite itself (nothing is downloaded).

The model is a 2-block llama with 64-dim embeddings, 4 heads and a 259-token vocabulary:
`<unk>`, `<s>`, `</s>` and the 256 byte tokens `<0x00>`..`<0xFF>` (token type BYTE). The
llama (SentencePiece) tokenizer falls back to byte tokens for every character, so any text
tokenizes, one token per UTF-8 byte (a space is escaped to U+2581, three bytes).

The weights are random (seeded numpy, so the file is byte-for-byte deterministic) with one
deliberate structure so that what the model says is usable in tests:

* embedding dimension 0 is a constant channel: every token embeds a large constant there and
  no attention or FFN output writes to it, so after the final RMS norm it is a positive value
  of roughly the same size at every position;
* the `output` weights' column 0 turns that channel into a per-token logit bias: printable
  ASCII bytes (0x20..0x7E) are strongly favoured, every other byte is strongly disfavoured
  (so sampled text is almost always valid printable ASCII, not broken UTF-8), and `</s>` sits
  just below the printable bytes so that generation ends by itself after some tens of tokens
  at ordinary temperatures (tests still bound every request with `max_tokens`).

`printable_bias=False` drops the bias and gives a model whose output is random bytes (invalid
UTF-8 included), for tests of how a client or Gate copes with that.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

N_VOCAB = 259
N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 4
N_BLOCK = 2
N_FF = 128
N_CTX_TRAIN = 2048

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
BYTE_BASE = 3  # token id of <0x00>

# Chat template (Jinja, HF style) stored as `tokenizer.chat_template`. ChatML-like; renders
# the tools and assistant tool calls too so that prompts with tools have realistic lengths.
# llama-cpp-python's default chat handler renders it; it also ends on `</s>` (eos_token).
CHAT_TEMPLATE = (
    "{% if tools %}"
    "{{ '<|im_start|>system\\nTools: ' }}{{ tools | tojson }}{{ '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% elif message['content'] %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{% if message['tool_calls'] %}"
    "{% for call in message['tool_calls'] %}"
    "{{ '\\n<tool_call>' + call['function']['name'] + ' ' + call['function']['arguments'] }}"
    "{{ '</tool_call>' }}"
    "{% endfor %}"
    "{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Logit bias (in units of the normalised constant channel, ~5.6) per token class.
_PRINTABLE_BIAS = 1.0
_OTHER_BYTE_BIAS = -1.5
_EOS_BIAS = 0.55
_CONST_CHANNEL = 8.0


def _vocab() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    scores = [0.0] * len(tokens)
    types = [int(gguf.TokenType.UNKNOWN), int(gguf.TokenType.CONTROL), int(gguf.TokenType.CONTROL)]
    types += [int(gguf.TokenType.BYTE)] * 256
    return tokens, scores, types


def write_tiny_gguf(path: Path, *, seed: int = 0, printable_bias: bool = True) -> Path:
    """Write the tiny llama GGUF to `path` (deterministic for a given seed); return `path`."""
    path = Path(path)
    rng = np.random.default_rng(seed)

    def normal(*shape: int, std: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    tokens, scores, types = _vocab()
    assert len(tokens) == N_VOCAB

    writer = gguf.GGUFWriter(path, "llama")
    try:
        writer.add_name("gate-tiny-llama")
        writer.add_context_length(N_CTX_TRAIN)
        writer.add_embedding_length(N_EMBD)
        writer.add_block_count(N_BLOCK)
        writer.add_feed_forward_length(N_FF)
        writer.add_head_count(N_HEAD)
        writer.add_head_count_kv(N_HEAD_KV)
        writer.add_rope_dimension_count(N_EMBD // N_HEAD)
        writer.add_rope_freq_base(10000.0)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
        writer.add_vocab_size(N_VOCAB)

        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_bos_token_id(BOS_ID)
        writer.add_eos_token_id(EOS_ID)
        writer.add_unk_token_id(UNK_ID)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        writer.add_add_space_prefix(False)
        writer.add_chat_template(CHAT_TEMPLATE)

        # Embeddings: random, plus the constant channel in dimension 0.
        token_embd = normal(N_VOCAB, N_EMBD, std=1.0)
        token_embd[:, 0] = _CONST_CHANNEL
        writer.add_tensor("token_embd.weight", token_embd)

        for i in range(N_BLOCK):
            writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
            # numpy shape is (out, in); gguf stores the reverse, as llama.cpp expects.
            writer.add_tensor(f"blk.{i}.attn_q.weight", normal(N_EMBD, N_EMBD, std=0.1))
            writer.add_tensor(f"blk.{i}.attn_k.weight", normal(N_EMBD, N_EMBD, std=0.1))
            writer.add_tensor(f"blk.{i}.attn_v.weight", normal(N_EMBD, N_EMBD, std=0.1))
            attn_output = normal(N_EMBD, N_EMBD, std=0.1)
            attn_output[0, :] = 0.0  # keep the constant channel constant
            writer.add_tensor(f"blk.{i}.attn_output.weight", attn_output)
            writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
            writer.add_tensor(f"blk.{i}.ffn_gate.weight", normal(N_FF, N_EMBD, std=0.1))
            writer.add_tensor(f"blk.{i}.ffn_up.weight", normal(N_FF, N_EMBD, std=0.1))
            ffn_down = normal(N_EMBD, N_FF, std=0.1)
            ffn_down[0, :] = 0.0
            writer.add_tensor(f"blk.{i}.ffn_down.weight", ffn_down)

        writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        output = normal(N_VOCAB, N_EMBD, std=0.15)
        bias = np.full(N_VOCAB, _OTHER_BYTE_BIAS, dtype=np.float32)
        bias[BYTE_BASE + 0x20 : BYTE_BASE + 0x7F] = _PRINTABLE_BIAS
        bias[EOS_ID] = _EOS_BIAS
        bias[UNK_ID] = bias[BOS_ID] = -4.0
        output[:, 0] = bias if printable_bias else 0.0
        writer.add_tensor("output.weight", output)

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path
