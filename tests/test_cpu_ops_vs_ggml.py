"""ladle's CPU layer ops against ggml's own (llama-cpp-python's libraries), bit for bit: each op alone, the
attention as llama.cpp builds it (f16 mul_mat, soft_max_ext, f16 mul_mat), and Gemma 3 end to end with
ggml's matmuls swapped in, whose logits must then equal llama.cpp's exactly (decode and prefill)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ladle.kernels.cpu_ops import cpu_ops

pytest.importorskip("llama_cpp")
ggml_ops_reference = pytest.importorskip("ggml_ops_reference")

ops = cpu_ops()
g = ggml_ops_reference.ggml_ops()
pytestmark = pytest.mark.skipif(
    ops is None or g is None, reason="needs the native kernels and ggml's libraries"
)
F32 = np.float32
rng = np.random.default_rng(0)


def test_rms_norm_times_weight_is_ggmls():
    x = (rng.standard_normal((5, 640)) * 30).astype(F32)
    w = (rng.random(640) + 0.5).astype(F32)
    ref = g.run(lambda o, c, a, b: o.mul(c, o.rms_norm(c, a, 1e-6), b), [x, w], x.shape)
    np.testing.assert_array_equal(ops.rms_norm(torch.from_numpy(x), torch.from_numpy(w), 1e-6).numpy(), ref)


def test_residual_sandwich_norm_is_ggmls():
    x, d = (rng.standard_normal((2, 3, 640)) * 20).astype(F32)
    w1, w2 = (rng.random((2, 640)) + 0.5).astype(F32)

    def build(o, c, xt, dt, a, b):
        return o.mul(c, o.rms_norm(c, o.add(c, o.mul(c, o.rms_norm(c, dt, 1e-6), a), xt), 1e-6), b)

    ref = g.run(build, [x, d, w1, w2], x.shape)
    got = ops.residual_rms_norm(
        torch.from_numpy(x.copy()), torch.from_numpy(d), torch.from_numpy(w1), torch.from_numpy(w2), 1e-6
    )
    np.testing.assert_array_equal(got.numpy(), ref)


def test_geglu_is_ggmls_for_every_f16_input():
    x = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(F32)
    x = np.where(np.isfinite(x), x, 0).astype(F32).reshape(256, 256)
    up = rng.standard_normal(x.shape).astype(F32)
    ref = g.run(lambda o, c, a, b: o.geglu_split(c, a, b), [x, up], x.shape)
    np.testing.assert_array_equal(ops.gated("gelu", torch.from_numpy(x), torch.from_numpy(up)).numpy(), ref)


@pytest.mark.parametrize("n", [2048, 1000])
def test_swiglu_is_ggmls(n):
    a = (rng.standard_normal((7, n)) * 4).astype(F32)
    b = rng.standard_normal((7, n)).astype(F32)
    ref = g.run(lambda o, c, x, y: o.swiglu_split(c, x, y), [a, b], a.shape)
    got = ops.gated("silu", torch.from_numpy(a), torch.from_numpy(b)).numpy()
    full = n - n % 16  # whole vectors exactly; the tail through libm's expf on both sides
    np.testing.assert_array_equal(got[:, :full], ref[:, :full])
    np.testing.assert_allclose(got[:, full:], ref[:, full:], rtol=1e-6)


@pytest.mark.parametrize("base", [10000.0, 1e6])
def test_rope_table_and_rotation_are_ggmls(base):
    """NEOX rope of q [T, H, D] through ladle's attention op equals ggml_rope_ext; ladle rotates the
    half-split layout for NORMAL-mode (llama) models too, whose Q/K rows its loader un-permutes."""
    t, h, d = 40, 4, 256
    q = rng.standard_normal((t, h, d)).astype(F32)
    pos = (np.arange(t) * 37).astype(np.int32)
    ref = g.run(
        lambda o, c, x, p: o.rope_ext(
            c, x, p, None, d, ggml_ops_reference.ROPE_NEOX, 32768, base, 1.0, 0.0, 1.0, 32.0, 1.0
        ),
        [q, pos],
        q.shape,
    )
    # the op ropes q in place of its inputs; read it back from a one-token-per-sequence attention over
    # itself (q == k, v = identity rows would need more setup): compare the K it writes to the cache
    k_cache = torch.zeros((t, 1, h, d), dtype=torch.float32)
    ops.attention(
        torch.from_numpy(q.reshape(t, h * d)), torch.from_numpy(q.reshape(t, h * d)), torch.zeros(t, h * d),
        k_cache, torch.zeros_like(k_cache), ops.rope_table(base, d, int(pos.max()) + 1),
        torch.from_numpy(pos.astype(np.int64)), torch.arange(t), torch.arange(t, dtype=torch.int32)[:, None].contiguous(),
        torch.ones(t, dtype=torch.int32), torch.arange(t + 1, dtype=torch.int32), h,
    )  # fmt: skip
    np.testing.assert_array_equal(k_cache.reshape(t, h, d).numpy(), ref)


def ggml_attention(q, k_cache, v_cache, mask, scale):
    """llama.cpp's non-flash attention: kq = mul_mat(k_f16, q), soft_max_ext(kq, mask, scale),
    kqv = mul_mat(v_f16 transposed, kq), over a cache of n_kv cells."""

    def build(o, c, qt, kt, vt, mt):
        kq = o.mul_mat(c, o.permute(c, kt, 0, 2, 1, 3), o.permute(c, qt, 0, 2, 1, 3))
        kqv = o.mul_mat(c, vt, o.soft_max_ext(c, kq, mt, scale, 0.0))
        return o.cont(c, o.permute(c, kqv, 0, 2, 1, 3))

    t, h, d = q.shape
    v_trans = np.ascontiguousarray(v_cache.transpose(1, 2, 0))
    return g.run(build, [q, k_cache, v_trans, mask], (t, h * d))


@pytest.mark.parametrize(
    "heads,kv_heads,d,prefix,q_len,window",
    [
        (4, 1, 256, 100, 1, None),  # Gemma 270M decode
        (4, 1, 256, 700, 1, None),  # a long one: the group's heads split over the threads
        (4, 1, 256, 900, 1, 512),
        (4, 1, 256, 0, 16, None),  # prefill
        (4, 1, 256, 40, 37, None),  # a chunk after a prefix-cache hit
        (4, 1, 256, 200, 1, 64),  # sliding window
        (4, 1, 256, 150, 20, 70),
        (8, 4, 8, 0, 20, None),  # stories260K: GQA, tiny heads (ggml's leftover loops)
        (8, 4, 8, 30, 1, None),
    ],
)
def test_attention_is_llama_cpps(heads, kv_heads, d, prefix, q_len, window):
    seq_len = prefix + q_len
    n_kv = -(-seq_len // 256) * 256  # llama.cpp pads its cache view to 256 cells
    k_cache = torch.zeros((n_kv // 16, 16, kv_heads, d), dtype=torch.float16)
    v_cache = torch.zeros_like(k_cache)
    k_cache.view(-1, kv_heads, d)[:prefix] = torch.from_numpy(
        rng.standard_normal((prefix, kv_heads, d)) * 2
    ).half()
    v_cache.view(-1, kv_heads, d)[:prefix] = torch.from_numpy(
        rng.standard_normal((prefix, kv_heads, d))
    ).half()
    q = (rng.standard_normal((q_len, heads * d)) * 2).astype(F32)
    k = (rng.standard_normal((q_len, kv_heads * d)) * 2).astype(F32)
    v = rng.standard_normal((q_len, kv_heads * d)).astype(F32)
    scale = float(F32(1) / np.sqrt(F32(d)))
    got = ops.attention(
        torch.from_numpy(q),
        torch.from_numpy(k),
        torch.from_numpy(v),
        k_cache,
        v_cache,
        ops.rope_table(1e4, d, 1),
        torch.zeros(q_len, dtype=torch.int64),
        torch.arange(prefix, seq_len),
        torch.arange(n_kv // 16, dtype=torch.int32)[None].contiguous(),
        torch.tensor([seq_len], dtype=torch.int32),
        torch.tensor([0, q_len], dtype=torch.int32),
        heads,
        kq_scale=scale,
        sliding_window=window,
    ).numpy()  # fmt: skip  (position 0 everywhere: rope is the identity, so q/k enter as given)
    mask = np.full((q_len, n_kv), -np.inf, dtype=F32)
    for r in range(q_len):
        p = prefix + r
        mask[r, (max(0, p - window + 1) if window else 0) : p + 1] = 0
    ref = ggml_attention(
        q.reshape(q_len, heads, d),
        k_cache.view(n_kv, kv_heads, d).numpy(),
        v_cache.view(n_kv, kv_heads, d).numpy(),
        mask,
        scale,
    )
    np.testing.assert_array_equal(got, ref)


@pytest.fixture(scope="module")
def gemma_with_ggml_matmuls():
    from gguf_support import gemma_path, llama_cpp_reference
    from ladle import LLM

    llama_cpp = llama_cpp_reference()
    path = str(gemma_path())
    torch.set_num_threads(2)
    llm = LLM(model=path, max_model_len=512)
    model = llm.llm_engine.runner.model
    assert model.config.numerics == "ggml"
    swap = ggml_ops_reference.GGMLMatmuls(model)
    return path, model, swap, llama_cpp


@pytest.mark.parametrize("chunk", [1, 256])
def test_gemma_logits_equal_llama_cpp_with_ggml_matmuls(gemma_with_ggml_matmuls, chunk):
    """Everything but the matmuls is ladle's: with ggml's matmuls, every logit equals llama.cpp's, token by
    token (decode) and as one prefill."""
    from test_gguf_generation import PASSAGE

    path, model, swap, llama_cpp = gemma_with_ggml_matmuls
    n = 64 if chunk == 1 else 256
    ref = llama_cpp.Llama(
        model_path=path, n_ctx=512, n_batch=chunk, n_ubatch=chunk, n_threads=2, verbose=False, logits_all=True
    )
    ids = ref.tokenize(PASSAGE.encode(), add_bos=True, special=True)[:n]
    ref.reset()
    ref.eval(ids)
    want = np.array(ref.scores[:n])
    got = ggml_ops_reference.forward_logits(model, ids, chunk, swap.logits)
    np.testing.assert_array_equal(got, want)


def test_gemma_greedy_equals_llama_cpp_with_ggml_matmuls(gemma_with_ggml_matmuls):
    """Greedy continuations (prefill, then one token per step) equal llama.cpp's token for token on
    test_gguf_generation's prompts, MODELS.md's demo prompt first, once the matmuls are ggml's."""
    from ladle.layers.attention import AttentionMetadata
    from test_gguf_generation import GEMMA_PROMPTS, llama_cpp_greedy

    path, model, swap, llama_cpp = gemma_with_ggml_matmuls
    ref = llama_cpp.Llama(model_path=path, n_ctx=512, n_threads=2, n_threads_batch=2, verbose=False)
    cfg = model.config
    for prompt in GEMMA_PROMPTS:
        ids = ref.tokenize(prompt.encode(), add_bos=True, special=True)
        expected = llama_cpp_greedy(ref, ids, 24)
        shape = (4, 16, cfg.num_key_value_heads, cfg.head_dim)
        caches = [
            (torch.zeros(shape, dtype=torch.float16), torch.zeros(shape, dtype=torch.float16))
            for _ in range(cfg.num_hidden_layers)
        ]
        tokens, start = list(ids), 0
        with torch.inference_mode():
            while len(tokens) - len(ids) < len(expected):
                end = len(tokens)
                meta = AttentionMetadata(
                    slot_mapping=torch.arange(start, end), block_tables=torch.arange(4, dtype=torch.int32)[None],
                    query_start=torch.tensor([0, end - start], dtype=torch.int32),
                    seq_lens=torch.tensor([end], dtype=torch.int32), query_lens_host=[end - start],
                    seq_lens_host=[end], block_size=16, max_query_len=end - start, max_seq_len=end,
                    output_rows=[end - start - 1],
                )  # fmt: skip
                hidden = model(torch.tensor(tokens[start:end]), torch.arange(start, end), caches, meta)
                tokens.append(int(swap.logits(hidden[-1:]).argmax()))
                start = end
        assert tokens[len(ids) :] == expected, prompt
