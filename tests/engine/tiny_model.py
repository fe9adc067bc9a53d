"""A tiny random-weight llama GGUF, written by the test suite itself (nothing is downloaded).

The model is a 2-block llama with 64-dim embeddings, 4 heads and a 259-token vocabulary:
`<unk>`, `<s>`, `</s>` and the 256 byte tokens `<0x00>`..`<0xFF>` (token type BYTE). The
llama (SentencePiece) tokenizer falls back to byte tokens for every character, so any text
tokenizes, one token per UTF-8 byte (plus BOS; a space is escaped to U+2581, three bytes).
The metadata carries a ChatML-style `tokenizer.chat_template` and mean pooling (so that
/v1/embeddings returns one vector per input). The file is ~0.5 MB, all F32.

The weights are random (seeded numpy: the file is byte-for-byte deterministic per seed) with
two deliberate structures, so that what the model says is usable in tests:

* Printable output. Embedding dimension 0 is a constant channel: every token embeds a large
  constant there and no attention or FFN output writes to it, so after the final RMS norm it
  is a positive value of about the same size at every position. The `output` weights'
  column 0 turns it into a per-token logit bias: printable ASCII bytes (0x20..0x7E) are
  strongly favoured and every other byte strongly disfavoured, so the model writes printable
  ASCII, one character per token (no broken UTF-8, len(text) == completion tokens).
* It stops by itself, never at once. Dimension 1 is a second clean channel that only the
  full stop "." embeds, and only `</s>` reads it: `</s>` is likely right after a "." and
  practically impossible anywhere else. So a chat reply is never empty (the generation
  prompt ends in a newline; only a raw /v1/completions prompt ending in "." can get an empty
  completion), and at ordinary temperatures it usually ends with "." after a few to some
  tens of tokens (median ~20; at temperature 0 it often falls into a repeating loop and
  runs to max_tokens). Banning "." (`NO_STOP_LOGIT_BIAS`) makes the model run until
  max_tokens: that is how tests get a long stream of a known length.

`can_stop=False` cuts `</s>` off from the "." channel and buries its logit: the model never
ends a reply, so every answer runs to max_tokens, whatever the API lets a client ask for
(fault tests that must kill an engine mid-stream through Anthropic's API, which has no
logit_bias).
`printable_bias=False` drops both structures' output weights and gives a model whose output
is random bytes (invalid UTF-8 included), for tests of how a client or Gate copes with that.
"""

from __future__ import annotations

from pathlib import Path

N_VOCAB = 259
N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 4
N_BLOCK = 2
N_FF = 128
N_CTX_TRAIN = 2048

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
BYTE_BASE = 3  # token id of <0x00>
FULL_STOP_ID = BYTE_BASE + ord(".")
# OpenAI `logit_bias` (token ids as strings) that keeps the model from ever ending by itself.
NO_STOP_LOGIT_BIAS = {str(FULL_STOP_ID): -100}

# Chat template (Jinja, HF style) stored as `tokenizer.chat_template`. ChatML-like; renders
# the tools and assistant tool calls too so that prompts with tools have realistic lengths.
# llama-cpp-python's default chat handler renders it (with its own Jinja2, not llama.cpp's)
# and tokenizes the result without adding BOS, hence the leading `bos_token`.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
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

# Residual-stream channels that no attention or FFN output writes to (see the module doc).
_CONST_DIM = 0  # every token embeds _CONST_CHANNEL here
_STOP_DIM = 1  # only "." embeds _STOP_CHANNEL here: it lets `</s>` follow a full stop
_CONST_CHANNEL = 8.0
_STOP_CHANNEL = 8.0
# Output weights on those channels, i.e. logit biases in units of the normalised channel.
_PRINTABLE_BIAS = 1.0
_OTHER_BYTE_BIAS = -1.5
_FULL_STOP_BIAS = 1.2
_EOS_BIAS = -1.0
_EOS_AFTER_FULL_STOP = 3.2
_EOS_NEVER = -30.0  # with can_stop=False: `</s>` never wins, every reply runs to max_tokens


# gguf.TokenType values (kept here so that importing this module needs neither gguf nor numpy)
TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_CONTROL, TOKEN_TYPE_BYTE = 2, 3, 6


def _vocab() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    scores = [0.0] * len(tokens)
    types = [TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_CONTROL, TOKEN_TYPE_CONTROL]
    types += [TOKEN_TYPE_BYTE] * 256
    return tokens, scores, types


def write_tiny_gguf(
    path: Path, *, seed: int = 0, printable_bias: bool = True, can_stop: bool = True
) -> Path:
    """Write the tiny llama GGUF to `path` (deterministic for a given seed); return `path`."""
    import gguf
    import numpy as np

    assert int(gguf.TokenType.BYTE) == TOKEN_TYPE_BYTE
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
        writer.add_pooling_type(gguf.PoolingType.MEAN)

        # Embeddings: random, plus the constant channel in dimension 0.
        token_embd = normal(N_VOCAB, N_EMBD, std=1.0)
        token_embd[:, _CONST_DIM] = _CONST_CHANNEL
        token_embd[:, _STOP_DIM] = 0.0
        token_embd[FULL_STOP_ID, _STOP_DIM] = _STOP_CHANNEL
        writer.add_tensor("token_embd.weight", token_embd)

        for i in range(N_BLOCK):
            writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
            # numpy shape is (out, in); gguf stores the reverse, as llama.cpp expects.
            writer.add_tensor(f"blk.{i}.attn_q.weight", normal(N_EMBD, N_EMBD, std=0.1))
            writer.add_tensor(f"blk.{i}.attn_k.weight", normal(N_EMBD, N_EMBD, std=0.1))
            writer.add_tensor(f"blk.{i}.attn_v.weight", normal(N_EMBD, N_EMBD, std=0.1))
            attn_output = normal(N_EMBD, N_EMBD, std=0.1)
            attn_output[[_CONST_DIM, _STOP_DIM], :] = 0.0  # keep the channels clean
            writer.add_tensor(f"blk.{i}.attn_output.weight", attn_output)
            writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
            writer.add_tensor(f"blk.{i}.ffn_gate.weight", normal(N_FF, N_EMBD, std=0.1))
            writer.add_tensor(f"blk.{i}.ffn_up.weight", normal(N_FF, N_EMBD, std=0.1))
            ffn_down = normal(N_EMBD, N_FF, std=0.1)
            ffn_down[[_CONST_DIM, _STOP_DIM], :] = 0.0
            writer.add_tensor(f"blk.{i}.ffn_down.weight", ffn_down)

        writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        output = normal(N_VOCAB, N_EMBD, std=0.15)
        bias = np.full(N_VOCAB, _OTHER_BYTE_BIAS, dtype=np.float32)
        bias[BYTE_BASE + 0x20 : BYTE_BASE + 0x7F] = _PRINTABLE_BIAS
        bias[FULL_STOP_ID] = _FULL_STOP_BIAS
        bias[EOS_ID] = _EOS_BIAS
        bias[UNK_ID] = bias[BOS_ID] = -4.0
        output[EOS_ID, :] = 0.0  # `</s>` logit: from the two channels alone
        output[:, _STOP_DIM] = 0.0
        if not can_stop:  # fault tests need a stream that outlasts the fault
            bias[EOS_ID] = _EOS_NEVER
        if printable_bias:
            output[:, _CONST_DIM] = bias
            if can_stop:
                output[EOS_ID, _STOP_DIM] = _EOS_AFTER_FULL_STOP
        else:
            output[:, _CONST_DIM] = 0.0
        writer.add_tensor("output.weight", output)

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path
