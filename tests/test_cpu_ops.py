"""The CPU layer ops (quant/csrc/cpu_ops.c) against straightforward numpy references of ggml's formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ladle.kernels.cpu_ops import cpu_ops

ops = cpu_ops()
pytestmark = pytest.mark.skipif(ops is None, reason="no C compiler: the native kernels are unavailable")

F32, F16 = np.float32, np.float16


def ref_rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """ggml_rms_norm then ggml_mul: squares summed in double, mean and scale in float."""
    x = x.astype(F32)
    mean = ((x * x).astype(np.float64).sum(-1, keepdims=True) / x.shape[-1]).astype(F32)
    scale = F32(1.0) / np.sqrt(mean + F32(eps))
    return (x * scale) * w.astype(F32)


@pytest.mark.parametrize("n", [1, 7, 640, 1152, 4099])
def test_rms_norm_equals_ggml_formula(n):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((5, n)) * 3).astype(F32)
    w = (rng.standard_normal(n) + 1).astype(F32)
    got = ops.rms_norm(torch.from_numpy(x), torch.from_numpy(w), 1e-6).numpy()
    np.testing.assert_array_equal(got, ref_rms_norm(x, w, 1e-6))


@pytest.mark.parametrize("sandwich", [False, True])
def test_residual_rms_norm_adds_then_normalizes(sandwich):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((9, 640)).astype(F32)
    delta = (rng.standard_normal((9, 640)) * 10).astype(F32)
    dw = rng.random(640).astype(F32) + F32(0.5) if sandwich else None
    w = rng.random(640).astype(F32)
    xt = torch.from_numpy(x.copy())
    y = ops.residual_rms_norm(
        xt, torch.from_numpy(delta), torch.from_numpy(dw) if sandwich else None, torch.from_numpy(w), 1e-6
    )
    branch = ref_rms_norm(delta, dw, 1e-6) if sandwich else delta
    np.testing.assert_array_equal(xt.numpy(), x + branch)
    np.testing.assert_array_equal(y.numpy(), ref_rms_norm(x + branch, w, 1e-6))


def test_exp_is_within_ggml_error_bound_and_saturates():
    x = np.concatenate([np.linspace(-103, 88, 4001), [-np.inf, -200.0, 0.0, 100.0]]).astype(F32)
    got = ops.exp(torch.from_numpy(x)).numpy()
    exact = np.exp(x[:-4].astype(np.float64))
    ulp = np.spacing(exact.astype(F32)).astype(np.float64)
    assert np.max(np.abs(got[:-4] - exact) / ulp) < 2.5  # 1.45 ulp + rounding, as documented by ggml
    assert got[-4] == 0.0 and got[-3] == 0.0 and got[-2] == 1.0 and got[-1] == np.inf


def test_gelu_table_is_f16_of_the_float32_tanh_formula():
    table = ops.gelu_table().numpy().astype(np.float64)
    x = np.arange(1 << 16, dtype=np.uint16).view(F16)
    x = x[np.isfinite(x) & (np.abs(x) < 10)]
    got = table[x.view(np.uint16).astype(np.int64)]
    x32 = x.astype(F32)
    # ggml evaluates 0.5x(1 + tanh(sqrt(2/pi) x (1 + 0.044715 x^2))) in float32 (cancelling in the negative
    # tail), then rounds to f16; numpy's float32 tanh may differ from libm's by an ulp there.
    inner = F32(0.79788456080286535587989211986876) * x32 * (F32(1) + F32(0.044715) * x32 * x32)
    expected = (F32(0.5) * x32 * (F32(1) + np.tanh(inner))).astype(F16).astype(np.float64)
    step = np.spacing(np.abs(expected).astype(F16)).astype(np.float64)
    assert np.all(np.abs(got - expected) <= step + 1e-6)
    assert np.count_nonzero(got != expected) < 0.01 * len(x)


@pytest.mark.parametrize("n", [16, 2048, 33])
def test_geglu_reads_the_table_at_f16_x(n):
    rng = np.random.default_rng(n)
    gate = (rng.standard_normal((3, n)) * 6).astype(F32)
    gate[0, :4] = [-10.0, 10.0, -12.5, 11.0]
    up = rng.standard_normal((3, n)).astype(F32)
    got = ops.gated("gelu", torch.from_numpy(gate), torch.from_numpy(up)).numpy()
    table = ops.gelu_table().numpy().astype(F32)
    looked_up = table[gate.astype(F16).view(np.uint16).astype(np.int64)] * up
    expected = np.where(gate <= -10, F32(0), np.where(gate >= 10, gate * up, looked_up))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("n", [64, 2048, 37])
def test_swiglu_uses_ggml_exp(n):
    rng = np.random.default_rng(n)
    gate = (rng.standard_normal((4, n)) * 5).astype(F32)
    up = rng.standard_normal((4, n)).astype(F32)
    got = ops.gated("silu", torch.from_numpy(gate), torch.from_numpy(up)).numpy()
    e = ops.exp(torch.from_numpy(np.ascontiguousarray(-gate))).numpy()
    expected = (gate / (F32(1) + e)) * up
    full = n - n % 16  # whole vectors: bit for bit; the tail uses libm's expf (within an ulp of it)
    np.testing.assert_array_equal(got[:, :full], expected[:, :full])
    np.testing.assert_allclose(got[:, full:], expected[:, full:], rtol=1e-6, atol=1e-7)


def test_gated_rejects_unknown_kind_and_mismatched_shapes():
    a = torch.zeros(2, 8)
    with pytest.raises(ValueError, match="gelu or silu"):
        ops.gated("relu", a, a)
    with pytest.raises(ValueError, match="gate shape"):
        ops.gated("gelu", a, torch.zeros(2, 4))


def ref_rope_table(base: float, n_dims: int, n_pos: int, factors=None, freq_scale: float = 1.0) -> np.ndarray:
    """theta starts at the position and is multiplied, in float, by base^(-2/n_dims) per pair."""
    theta_scale = F32(np.float64(base) ** (-2.0 / n_dims))
    out = np.zeros((n_pos, n_dims), dtype=F32)
    for p in range(n_pos):
        theta = F32(p)
        for i in range(n_dims // 2):
            ff = F32(factors[i]) if factors is not None else F32(1)
            angle = F32(freq_scale) * (theta / ff)
            out[p, 2 * i], out[p, 2 * i + 1] = np.cos(np.float64(angle)), np.sin(np.float64(angle))
            theta = theta * theta_scale
    return out


@pytest.mark.parametrize("factors", [None, [1.0, 1.0, 2.5, 8.0]])
def test_rope_table_follows_ggml_theta_recurrence(factors):
    got = ops.rope_table(10000.0, 8, 300, 0.5 if factors else 1.0, factors).numpy()
    np.testing.assert_allclose(
        got, ref_rope_table(10000.0, 8, 300, factors, 0.5 if factors else 1.0), atol=1e-6
    )
    with pytest.raises(ValueError, match="frequency factors"):
        ops.rope_table(10000.0, 8, 4, 1.0, [1.0])


# -- attention ------------------------------------------------------------------------------------------
def f16(x: np.ndarray) -> np.ndarray:
    return x.astype(F16).astype(F32)


def rotate(x: np.ndarray, cos_sin: np.ndarray) -> np.ndarray:
    """NEOX (half-split) rotation of [..., D] by a [D] table row of (cos, sin) pairs."""
    half = x.shape[-1] // 2
    c, s = cos_sin[..., 0::2], cos_sin[..., 1::2]
    x0, x1 = x[..., :half], x[..., half:]
    return np.concatenate([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1)


class Case:
    """A batch of sequences over a paged cache whose earlier positions (prefix-cache hits, earlier chunks)
    already hold K/V; the op adds each sequence's new tokens."""

    def __init__(self, seed, heads, kv_heads, head_dim, seqs, block_size=16, cache_dtype=torch.float16):
        rng = np.random.default_rng(seed)
        self.heads, self.kv_heads, self.d = heads, kv_heads, head_dim
        self.seqs = seqs  # [(query_len, seq_len)]
        total_blocks = sum(-(-s // block_size) for _, s in seqs) + 3
        order = rng.permutation(total_blocks)  # blocks scattered over the pool
        self.k_cache = torch.from_numpy(rng.standard_normal((total_blocks, block_size, kv_heads, head_dim)))
        self.k_cache = self.k_cache.to(cache_dtype)
        self.v_cache = torch.from_numpy(rng.standard_normal(self.k_cache.shape)).to(cache_dtype)
        max_blocks = max(-(-s // block_size) for _, s in seqs)
        self.tables = np.zeros((len(seqs), max_blocks), dtype=np.int32)
        used = 0
        positions, slots, starts = [], [], [0]
        for i, (q_len, seq_len) in enumerate(seqs):
            nb = -(-seq_len // block_size)
            self.tables[i, :nb] = order[used : used + nb]
            used += nb
            for p in range(seq_len - q_len, seq_len):
                positions.append(p)
                slots.append(self.tables[i, p // block_size] * block_size + p % block_size)
            starts.append(starts[-1] + q_len)
        self.block_size = block_size
        self.positions, self.slots = np.array(positions, dtype=np.int64), np.array(slots, dtype=np.int64)
        self.starts = np.array(starts)
        t = len(positions)
        self.q = (rng.standard_normal((t, heads * head_dim)) * 2).astype(F32)
        self.k = (rng.standard_normal((t, kv_heads * head_dim)) * 2).astype(F32)
        self.v = rng.standard_normal((t, kv_heads * head_dim)).astype(F32)
        self.q_norm = (rng.random(head_dim) + 0.5).astype(F32)
        self.k_norm = (rng.random(head_dim) + 0.5).astype(F32)
        self.rope = ops.rope_table(10000.0, head_dim, 4096)

    def run(self, norms: bool, q_scale: float, kq_scale: float, window: int | None) -> np.ndarray:
        return ops.attention(
            torch.from_numpy(self.q), torch.from_numpy(self.k), torch.from_numpy(self.v),
            self.k_cache, self.v_cache, self.rope, torch.from_numpy(self.positions),
            torch.from_numpy(self.slots), torch.from_numpy(self.tables),
            torch.tensor([s for _, s in self.seqs], dtype=torch.int32),
            torch.from_numpy(self.starts.astype(np.int32)), self.heads,
            torch.from_numpy(self.q_norm) if norms else None, torch.from_numpy(self.k_norm) if norms else None,
            1e-6, q_scale, kq_scale, window,
        ).numpy()  # fmt: skip

    def cached(self, cache: torch.Tensor, seq: int, seq_len: int) -> np.ndarray:
        rows = [
            self.tables[seq, p // self.block_size] * self.block_size + p % self.block_size
            for p in range(seq_len)
        ]
        return cache.float().reshape(-1, self.kv_heads, self.d)[rows].numpy()


def ref_attention(
    case: Case, norms, q_scale, kq_scale, window, round_to=f16
) -> tuple[np.ndarray, np.ndarray]:
    """(output, the new K as the cache must hold it): norm, rope, scale, q and probabilities rounded to the
    cache type, exact (float64) sums otherwise."""
    d, heads, kvh = case.d, case.heads, case.kv_heads
    rope = case.rope.numpy()
    q = case.q.reshape(-1, heads, d)
    k = case.k.reshape(-1, kvh, d)
    if norms:
        q, k = ref_rms_norm(q, case.q_norm, 1e-6), ref_rms_norm(k, case.k_norm, 1e-6)
    table = rope[case.positions][:, None, :]
    q = round_to(rotate(q, table) * F32(q_scale))
    new_k = round_to(rotate(k, table))
    out = np.zeros((len(case.positions), heads, d))
    for s, (q_len, seq_len) in enumerate(case.seqs):
        keys = case.cached(case.k_cache, s, seq_len).astype(np.float64)
        values = case.cached(case.v_cache, s, seq_len).astype(np.float64)
        for r in range(q_len):
            t = case.starts[s] + r
            pos = seq_len - q_len + r
            visible = np.arange(seq_len) <= pos
            if window:
                visible &= np.arange(seq_len) > pos - window
            for h in range(heads):
                g = h // (heads // kvh)
                scores = (keys[:, g] @ q[t, h].astype(np.float64)) * kq_scale
                scores = np.where(visible, scores, -np.inf)
                p = np.exp(scores - scores.max())
                p = round_to((p / p.sum()).astype(F32)).astype(np.float64)
                out[t, h] = p @ values[:, g]
    return out.reshape(len(case.positions), heads * d), new_k


ATTENTION_CASES = {
    # name: (heads, kv_heads, head_dim, [(query_len, seq_len)], norms, q_scale, kq_scale, window)
    "gemma-decode-and-prefill": (4, 1, 256, [(1, 300), (37, 100), (20, 20)], True, 0.0625, 1.0, None),
    "gemma-sliding-window": (4, 1, 256, [(1, 700), (40, 600), (1, 9)], True, 0.0625, 1.0, 512),
    "llama-gqa-small-heads": (8, 4, 8, [(1, 64), (64, 64), (5, 130)], False, 1.0, 8**-0.5, None),
    "odd-head-dim-window": (6, 2, 24, [(3, 50), (1, 1)], True, 1.0, 24**-0.5, 7),
    "long-context-decode": (2, 2, 80, [(1, 3000), (1, 2047)], False, 1.0, 80**-0.5, None),
    "decode-short-window": (4, 2, 64, [(1, 300), (1, 45), (1, 3)], False, 1.0, 0.125, 40),
    "decode-alone-split-heads": (4, 1, 256, [(1, 1500)], True, 0.0625, 1.0, None),
}


@pytest.mark.parametrize("name", list(ATTENTION_CASES))
def test_attention_matches_reference(name):
    heads, kvh, d, seqs, norms, q_scale, kq_scale, window = ATTENTION_CASES[name]
    case = Case(hash(name) % 1000, heads, kvh, d, seqs)
    got = case.run(norms, q_scale, kq_scale, window)
    expected, new_k = ref_attention(case, norms, q_scale, kq_scale, window)
    # the new K/V are in the cache, as f16 of the normed and rotated K (and of V)
    k_slots = case.k_cache.float().reshape(-1, kvh, d)[case.slots].numpy()
    v_slots = case.v_cache.float().reshape(-1, kvh, d)[case.slots].numpy()
    np.testing.assert_allclose(k_slots, new_k, atol=2e-3, rtol=1e-3)  # f32 rope order vs numpy's, then f16
    np.testing.assert_array_equal(v_slots, f16(case.v.reshape(-1, kvh, d)))
    # an f16 probability may round the other way than in float64: one f16 step of a weight of |v| <~ 4
    np.testing.assert_allclose(got, expected, atol=4e-3, rtol=0)
    assert np.abs(got - expected).mean() < 1e-4


def test_attention_in_float32_cache_is_exact_softmax_attention():
    """With a float32 cache nothing is rounded to f16: the op is plain attention to float32 accuracy."""
    case = Case(3, 4, 2, 64, [(1, 200), (30, 90)], cache_dtype=torch.float32)
    got = case.run(True, 1.0, 0.125, 50)
    expected, _ = ref_attention(case, True, 1.0, 0.125, 50, round_to=lambda x: x.astype(F32))
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-5)


def test_attention_same_rows_whatever_the_batch():
    """A sequence's rows do not depend on the other sequences in its batch."""
    batch = Case(5, 4, 1, 256, [(1, 300), (12, 40)])
    out_batch = batch.run(True, 0.0625, 1.0, None)
    alone = Case(5, 4, 1, 256, [(12, 40)])
    alone.k_cache, alone.v_cache = batch.k_cache.clone(), batch.v_cache.clone()
    alone.tables = np.ascontiguousarray(batch.tables[1:])
    alone.positions, alone.slots = batch.positions[1:], batch.slots[1:]
    alone.q, alone.k, alone.v = batch.q[1:].copy(), batch.k[1:].copy(), batch.v[1:].copy()
    alone.q_norm, alone.k_norm = batch.q_norm, batch.k_norm
    np.testing.assert_array_equal(alone.run(True, 0.0625, 1.0, None), out_batch[1:])


def test_attention_rejects_a_short_rope_table():
    case = Case(0, 2, 1, 8, [(1, 5000)])
    with pytest.raises(ValueError, match="rope table"):
        case.run(False, 1.0, 1.0, None)
