"""The Triton attention kernels against the torch reference backend (ladle.layers.attention).

Runs on CUDA. Without a GPU the tests skip, unless TRITON_INTERPRET=1 is set and Triton is installed: then
the kernels run in Triton's CPU interpreter, in float32, on small shapes (slow, but it checks indexing).
"""

from __future__ import annotations

import random

import pytest
import torch

from ladle.layers.attention import AttentionMetadata, TorchAttentionBackend
from triton_targets import DEVICE, INTERPRET, ON_GPU, needs_kernels

pytestmark = needs_kernels

if INTERPRET:
    # Triton 3.6's interpreter holds scalars as 1-element arrays and takes int() of them, which NumPy 2.x
    # refuses for arrays with a dimension; make range(lo, hi) over loaded scalars work there.
    from triton.runtime import interpreter as _interp

    _patch = _interp._patch_lang_tensor

    def _patch_lang_tensor(tensor, scope):
        _patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    _interp._patch_lang_tensor = _patch_lang_tensor
DTYPE = torch.bfloat16 if ON_GPU else torch.float32
TOL = 2e-2 if ON_GPU else 1e-4


def _make_batch(query_lens, seq_lens, num_kv_heads, head_dim, block_size, gen, extra_blocks=7):
    """A random block pool and block tables (blocks shuffled, so tables are not contiguous)."""
    blocks_per_seq = [-(-s // block_size) for s in seq_lens]
    num_blocks = sum(blocks_per_seq) + extra_blocks
    order = torch.randperm(num_blocks, generator=gen).tolist()
    tables, slots, pos = [], [], 0
    for q_len, s_len, nb in zip(query_lens, seq_lens, blocks_per_seq):
        table = order[pos : pos + nb]
        pos += nb
        tables.append(table)
        slots.extend(
            table[p // block_size] * block_size + p % block_size for p in range(s_len - q_len, s_len)
        )
    width = max(blocks_per_seq) + 3  # wider than needed: kernels must not read past a sequence's blocks
    block_tables = torch.zeros(len(seq_lens), width, dtype=torch.int32)
    for i, t in enumerate(tables):
        block_tables[i, : len(t)] = torch.tensor(t, dtype=torch.int32)
    query_start = [0]
    for q in query_lens:
        query_start.append(query_start[-1] + q)
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=DEVICE),
        block_tables=block_tables.to(DEVICE),
        query_start=torch.tensor(query_start, dtype=torch.int32, device=DEVICE),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE),
        query_lens_host=list(query_lens),
        seq_lens_host=list(seq_lens),
        block_size=block_size,
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
    )
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=gen).to(DEVICE, DTYPE)
    v_cache = torch.randn(shape, generator=gen).to(DEVICE, DTYPE)
    return meta, k_cache, v_cache


def _run_both(query_lens, seq_lens, num_heads, num_kv_heads, head_dim, block_size, window, seed, splits=None):
    from ladle.layers.attention_triton import TritonAttentionBackend

    gen = torch.Generator().manual_seed(seed)
    meta, k_cache, v_cache = _make_batch(query_lens, seq_lens, num_kv_heads, head_dim, block_size, gen)
    meta.decode_num_splits = splits
    tokens = sum(query_lens)
    q = torch.randn(tokens, num_heads, head_dim, generator=gen).to(DEVICE, DTYPE)
    k = torch.randn(tokens, num_kv_heads, head_dim, generator=gen).to(DEVICE, DTYPE)
    v = torch.randn(tokens, num_kv_heads, head_dim, generator=gen).to(DEVICE, DTYPE)
    scale = head_dim**-0.5
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    ref = TorchAttentionBackend().forward(q, k, v, k_ref, v_ref, meta, scale, window)
    out = TritonAttentionBackend().forward(q, k, v, k_cache, v_cache, meta, scale, window)
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref), "KV-cache write differs"
    assert not out.isnan().any()
    err = (out.float() - ref.float()).norm() / ref.float().norm()
    assert err < TOL, f"relative error {err:.2e}"


# (num_heads, num_kv_heads, head_dim): Llama-3-8B's GQA 4, Qwen3's 2, MHA, Gemma 3 1B's MQA with 256, and
# a group that is not a power of two.
HEADS_GPU = [(32, 8, 128), (16, 8, 128), (8, 8, 64), (4, 1, 256), (12, 4, 64), (8, 2, 96)]
HEADS_CPU = [(4, 2, 64), (4, 1, 128), (6, 2, 32)]
HEADS = HEADS_GPU if ON_GPU else HEADS_CPU


@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("window", [None, 40])
def test_mixed_batch_matches_reference(heads, window):
    """Whole prompts, chunked prefills over an earlier chunk or a prefix-cache hit, and decodes, together."""
    num_heads, num_kv_heads, head_dim = heads
    rng = random.Random(hash((heads, window)) & 0xFFFF)
    big = ON_GPU
    query_lens, seq_lens = [], []
    for kind in ["prompt", "chunk", "decode", "prompt", "decode", "chunk"] * (3 if big else 1):
        if kind == "prompt":
            q = rng.randint(1, 300 if big else 40)
            query_lens.append(q)
            seq_lens.append(q)
        elif kind == "chunk":
            q = rng.randint(1, 200 if big else 30)
            query_lens.append(q)
            seq_lens.append(q + rng.randint(1, 700 if big else 50))
        else:
            query_lens.append(1)
            seq_lens.append(rng.randint(1, 900 if big else 70))
    _run_both(query_lens, seq_lens, num_heads, num_kv_heads, head_dim, 16, window, seed=1)


@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("window", [None, 100])
@pytest.mark.parametrize("splits", [None, 1, 3, 32])
def test_decode_matches_reference(heads, window, splits):
    num_heads, num_kv_heads, head_dim = heads
    rng = random.Random(7)
    num_seqs = 9 if ON_GPU else 3
    seq_lens = [rng.randint(1, 3000 if ON_GPU else 150) for _ in range(num_seqs)]
    seq_lens[0] = 1
    _run_both([1] * num_seqs, seq_lens, num_heads, num_kv_heads, head_dim, 16, window, seed=2, splits=splits)


def test_split_decode_combines_in_its_last_split_and_rearms_the_counters():
    """Every split holds keys (32 splits of 64 keys), the last to finish combines them, and each launch leaves
    the arrival counters at 0: a CUDA graph replays the launch against the same counters."""
    from ladle.kernels.split_sync import SPLIT_COUNTERS

    for seed in (5, 6):
        _run_both([1, 1], [32 * 64 + 9, 70], 4, 2, 64, 16, None, seed=seed, splits=32)
        counters = SPLIT_COUNTERS.get(torch.device(DEVICE), 0, "test")
        assert not counters.any(), "a split launch left its counters armed"


@pytest.mark.skipif(not ON_GPU, reason="long contexts: GPU only")
def test_decode_long_context_batch_one():
    for seq_len in (1, 17, 4096, 32768):
        _run_both([1], [seq_len], 32, 8, 128, 16, None, seed=3)


@pytest.mark.parametrize("block_size", [8, 32])
def test_other_block_sizes(block_size):
    _run_both([5, 1, 33], [5, 60, 90], 4, 2, 64, block_size, None, seed=4)


def test_padded_decode_rows_write_nothing():
    """A CUDA graph's padding rows: slot -1 writes nothing, seq_len 0 gives zeros and no NaN."""
    from ladle.kernels.triton_attention import decode_attention, write_kv_cache

    gen = torch.Generator().manual_seed(5)
    k_cache = torch.randn(4, 16, 2, 64, generator=gen).to(DEVICE, DTYPE)
    v_cache = torch.randn(4, 16, 2, 64, generator=gen).to(DEVICE, DTYPE)
    before = (k_cache.clone(), v_cache.clone())
    k = torch.randn(2, 2, 64, generator=gen).to(DEVICE, DTYPE)
    slots = torch.tensor([-1, -1], dtype=torch.int64, device=DEVICE)
    write_kv_cache(k, k, k_cache, v_cache, slots)
    assert torch.equal(k_cache, before[0]) and torch.equal(v_cache, before[1])
    q = torch.randn(2, 4, 64, generator=gen).to(DEVICE, DTYPE)
    out = torch.full_like(q, float("nan"))
    tables = torch.zeros(2, 4, dtype=torch.int32, device=DEVICE)
    lens = torch.zeros(2, dtype=torch.int32, device=DEVICE)
    for splits in (1, 4):
        decode_attention(q, k_cache, v_cache, out, tables, lens, 0.125, None, splits)
        assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.skipif(not ON_GPU, reason="float8 K/V: CUDA only")
@pytest.mark.parametrize("decode_only", [True, False])
@pytest.mark.parametrize("window", [None, 200])
def test_fp8_cache_matches_reference_on_the_rounded_values(decode_only, window):
    """kv_cache_dtype="fp8": the kernels write e4m3 bytes equal to torch's rounding and attend over them as
    the torch reference attends over the same values widened to bf16."""
    from ladle.layers.attention_triton import TritonAttentionBackend

    fp8 = torch.float8_e4m3fn
    gen = torch.Generator().manual_seed(11)
    if decode_only:
        query_lens, seq_lens = [1] * 7, [1, 15, 16, 17, 300, 1200, 2500]
    else:
        query_lens, seq_lens = [40, 1, 17, 1], [40, 700, 90, 33]
    num_heads, num_kv_heads, head_dim = 32, 8, 128
    meta, k_cache, v_cache = _make_batch(query_lens, seq_lens, num_kv_heads, head_dim, 16, gen)
    k8, v8 = k_cache.to(fp8), v_cache.to(fp8)
    tokens = sum(query_lens)
    q, k, v = (
        torch.randn(tokens, h, head_dim, generator=gen).to(DEVICE, DTYPE)
        for h in (num_heads, num_kv_heads, num_kv_heads)
    )
    scale = head_dim**-0.5
    k_ref, v_ref = k8.to(DTYPE), v8.to(DTYPE)
    ref = TorchAttentionBackend().forward(
        q, k.to(fp8).to(DTYPE), v.to(fp8).to(DTYPE), k_ref, v_ref, meta, scale, window
    )
    out = TritonAttentionBackend().forward(q, k, v, k8, v8, meta, scale, window)
    assert torch.equal(k8.view(torch.uint8), k_ref.to(fp8).view(torch.uint8)), "fp8 K write differs"
    assert torch.equal(v8.view(torch.uint8), v_ref.to(fp8).view(torch.uint8)), "fp8 V write differs"
    err = (out.float() - ref.float()).norm() / ref.float().norm()
    assert err < TOL, f"relative error {err:.2e}"
    # The torch backend reads and writes fp8 caches too (through byte views).
    k8b, v8b = k_cache.to(fp8), v_cache.to(fp8)
    torch_out = TorchAttentionBackend().forward(q, k, v, k8b, v8b, meta, scale, window)
    assert torch.equal(k8b.view(torch.uint8), k8.view(torch.uint8))
    err = (torch_out.float() - ref.float()).norm() / ref.float().norm()
    assert err < TOL, f"torch backend relative error {err:.2e}"


@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("head_norm", [None, False, True], ids=["plain", "qk-norm", "qk-norm-1+w"])
@pytest.mark.parametrize("splits", [1, 4, 32])
@pytest.mark.parametrize("window", [None, 40])
def test_decode_with_rotary_matches_rotary_and_write_then_attention(heads, head_norm, splits, window):
    """decode_attention(rope=...) takes q and the new k unrotated, rotates them (after q/k norms), stores k
    and v at the slots and attends: as ladle.layers' torch rotary, norms, cache write and attention in turn.
    Padding rows (slot -1, length 0) write nothing and get zeros."""
    from ladle.kernels.triton_attention import DecodeRope, decode_attention
    from ladle.layers.norm import RMSNorm
    from ladle.layers.rotary import RotaryEmbedding
    from ladle.model.config import RopeConfig

    num_heads, num_kv_heads, head_dim = heads
    gen = torch.Generator().manual_seed(12)
    seq_lens = [1, 17, 64, 150 if not ON_GPU else 2500, 0]
    live = [s for s in seq_lens if s]
    meta, k_cache, v_cache = _make_batch([1] * len(live), live, num_kv_heads, head_dim, 16, gen)
    # a padding row of a CUDA graph: length 0, slot -1, an all-zero table row
    tables = torch.cat([meta.block_tables, torch.zeros_like(meta.block_tables[:1])])
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    slots = torch.cat([meta.slot_mapping, torch.tensor([-1], device=DEVICE)])
    positions = (lens - 1).clamp(min=0).long()
    n = len(seq_lens)
    q, k, v = (
        torch.randn(n, h, head_dim, generator=gen).to(DEVICE, DTYPE)
        for h in (num_heads, num_kv_heads, num_kv_heads)
    )
    rotary = RotaryEmbedding(head_dim, RopeConfig(theta=500000.0))
    rotary.cos_sin = rotary.build_table(4096, torch.device(DEVICE))
    norms = None
    if head_norm is not None:
        norms = [RMSNorm(head_dim, 1e-6, unit_offset=head_norm) for _ in range(2)]
        for norm in norms:
            norm.set_weight(
                (torch.randn(head_dim, generator=gen) * 0.3 + (0 if head_norm else 1)).to(DEVICE, DTYPE)
            )

    # the reference: ladle.layers' torch ops in turn, then the torch backend (which writes the cache)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    q_in, k_in = (norms[0](q), norms[1](k)) if norms else (q, k)
    cos, sin = rotary.cos_sin[positions].chunk(2, dim=-1)
    from ladle.layers.rotary import _rotate

    q_rot, k_rot = _rotate(q_in, cos[:, None], sin[:, None]), _rotate(k_in, cos[:, None], sin[:, None])
    live_rows = slice(0, len(live))
    live_meta = AttentionMetadata(
        slot_mapping=meta.slot_mapping, block_tables=meta.block_tables, query_start=meta.query_start,
        seq_lens=meta.seq_lens, query_lens_host=meta.query_lens_host, seq_lens_host=meta.seq_lens_host,
        block_size=16, max_query_len=1, max_seq_len=meta.max_seq_len,
    )  # fmt: skip
    ref = TorchAttentionBackend().forward(
        q_rot[live_rows], k_rot[live_rows], v[live_rows], k_ref, v_ref, live_meta, head_dim**-0.5, window
    )

    head_norm_args = None
    if norms:
        head_norm_args = (norms[0].weight, norms[1].weight, 1e-6, head_norm)
    rope = DecodeRope(k, v, slots, positions, rotary.cos_sin, head_norm_args)
    out = torch.full_like(q, float("nan"))
    decode_attention(q, k_cache, v_cache, out, tables, lens, head_dim**-0.5, window, splits, rope)

    ulp = 2e-2 if ON_GPU else 1e-5
    torch.testing.assert_close(k_cache.float(), k_ref.float(), rtol=ulp, atol=ulp)
    assert torch.equal(v_cache, v_ref)
    assert torch.equal(out[-1], torch.zeros_like(out[-1])), "a padding row must get zeros"
    err = (out[live_rows].float() - ref.float()).norm() / ref.float().norm()
    assert err < TOL, f"relative error {err:.2e}"
