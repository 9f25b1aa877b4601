"""Programmatic dependent launch (ladle.kernels.pdl): a decoder-layer-shaped chain of ladle's Triton kernels
(norms, GEMVs, rotary + KV write, split decode attention, SiLU-mul, greedy argmax), captured in a CUDA graph
with PDL, gives the same bits as the same chain run eagerly without it, replay after replay with new inputs.

If a kernel read its predecessor's output before waiting for it, a replay would see the previous replay's
values (every replay gets fresh inputs) and the bits would differ. GPU only (griddepcontrol needs sm_90);
the switch's own rules need only Triton.
"""

from __future__ import annotations

import pytest
import torch

from triton_targets import HAS_TRITON, ON_GPU

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="needs Triton")
needs_hopper = pytest.mark.skipif(
    not (ON_GPU and torch.cuda.get_device_capability()[0] >= 9), reason="PDL needs an sm_90+ GPU and Triton"
)

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTERMEDIATE, VOCAB = 512, 8, 2, 64, 8192, 5000
BLOCK_SIZE, CONTEXT, LAYERS = 16, 300, 3


@needs_triton
def test_pdl_is_off_on_the_cpu_and_when_asked(monkeypatch) -> None:
    from ladle.kernels.pdl import pdl_enabled, pdl_launch_options

    assert not pdl_enabled(torch.device("cpu"))
    assert pdl_launch_options(False) == {}
    assert pdl_launch_options(True) == {"launch_pdl": True}
    if ON_GPU:
        monkeypatch.setenv("LADLE_PDL", "0")
        assert not pdl_enabled(torch.device("cuda"))


class _Chain:
    """LAYERS decoder layers at batch 1 over a paged context, then the final norm, LM head and argmax."""

    def __init__(self, seed: int, rotary_in_attention: bool = False) -> None:
        self.rotary_in_attention = (
            rotary_in_attention  # decode_attention(rope=...) instead of the rotary kernel
        )
        gen = torch.Generator(device="cuda").manual_seed(seed)

        def rand(*shape, scale=1.0):
            return (torch.randn(*shape, generator=gen, device="cuda") * scale).to(torch.bfloat16)

        qkv_rows = (HEADS + 2 * KV_HEADS) * HEAD_DIM
        self.layers = [
            dict(
                ln1=rand(HIDDEN) + 1,
                qkv=rand(qkv_rows, HIDDEN, scale=HIDDEN**-0.5),
                o=rand(HIDDEN, HEADS * HEAD_DIM, scale=(HEADS * HEAD_DIM) ** -0.5),
                ln2=rand(HIDDEN) + 1,
                gate_up=rand(2 * INTERMEDIATE, HIDDEN, scale=HIDDEN**-0.5),
                down=rand(HIDDEN, INTERMEDIATE, scale=INTERMEDIATE**-0.5),
            )
            for _ in range(LAYERS)
        ]
        self.final_norm = rand(HIDDEN) + 1
        self.lm_head = rand(VOCAB, HIDDEN, scale=HIDDEN**-0.5)
        num_blocks = -(-CONTEXT // BLOCK_SIZE) + 4
        order = torch.randperm(num_blocks, generator=gen, device="cuda").to(torch.int32)
        self.block_tables = order[None, :]
        shape = (num_blocks, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
        self.caches = [(rand(*shape), rand(*shape)) for _ in range(LAYERS)]
        pos = CONTEXT - 1
        self.positions = torch.tensor([pos], device="cuda")
        self.slots = (self.block_tables[0, pos // BLOCK_SIZE] * BLOCK_SIZE + pos % BLOCK_SIZE).long()[None]
        self.seq_lens = torch.tensor([CONTEXT], dtype=torch.int32, device="cuda")
        half = HEAD_DIM // 2
        freqs = torch.arange(CONTEXT, device="cuda")[:, None] * 10000.0 ** (
            -torch.arange(half, device="cuda") / half
        )
        self.cos_sin = torch.cat([freqs.cos(), freqs.sin()], dim=1).float().contiguous()
        self.x = rand(1, HIDDEN)

    def run(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from ladle.kernels.fused_ops import add_rms_norm, gated_act_mul, rms_norm, rotary_and_write_kv_
        from ladle.kernels.triton_attention import DecodeRope, decode_attention
        from ladle.kernels.triton_gemv import gemv
        from ladle.kernels.triton_sampling import argmax_rows

        hidden, residual = self.x, None
        for layer, (k_cache, v_cache) in zip(self.layers, self.caches, strict=True):
            if residual is None:
                h, residual = rms_norm(hidden, layer["ln1"], 1e-6, False), hidden
            else:
                h, residual = add_rms_norm(hidden, residual, layer["ln1"], 1e-6, False)
            qkv = gemv(h, layer["qkv"])
            qk = qkv[:, : (HEADS + KV_HEADS) * HEAD_DIM].view(1, HEADS + KV_HEADS, HEAD_DIM)
            v = qkv[:, (HEADS + KV_HEADS) * HEAD_DIM :].view(1, KV_HEADS, HEAD_DIM)
            rope = None
            if self.rotary_in_attention:
                rope = DecodeRope(qk[:, HEADS:], v, self.slots, self.positions, self.cos_sin)
            else:
                rotary_and_write_kv_(qk, v, k_cache, v_cache, self.slots, self.cos_sin, self.positions)
            attn = torch.empty(1, HEADS, HEAD_DIM, dtype=torch.bfloat16, device="cuda")
            decode_attention(
                qk[:, :HEADS], k_cache, v_cache, attn, self.block_tables, self.seq_lens, 0.125, None, 4, rope
            )
            o = gemv(attn.view(1, -1), layer["o"])
            h, residual = add_rms_norm(o, residual, layer["ln2"], 1e-6, False)
            # down: 128 row blocks of K = 8192 on an H100/H200, a split-K launch (its counters under PDL)
            hidden = gemv(gated_act_mul(gemv(h, layer["gate_up"]), gelu_tanh=False), layer["down"])
        h, _ = add_rms_norm(hidden, residual, self.final_norm, 1e-6, False)
        logits = gemv(h, self.lm_head)
        return logits, argmax_rows(logits), torch.stack([c for pair in self.caches for c in pair])


@needs_hopper
@pytest.mark.parametrize("rotary_in_attention", [False, True], ids=["rotary-kernel", "rotary-in-attention"])
def test_chain_under_pdl_in_a_cuda_graph_matches_the_chain_without_it(
    monkeypatch, rotary_in_attention
) -> None:
    from ladle.kernels.pdl import pdl_enabled

    monkeypatch.setenv("LADLE_PDL", "1")
    assert pdl_enabled(torch.device("cuda"))
    chain = _Chain(seed=0, rotary_in_attention=rotary_in_attention)
    chain.run()  # compiles, and sizes the split counters outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        logits, token, caches = chain.run()
    gen = torch.Generator(device="cuda").manual_seed(1)
    tokens = set()
    for _ in range(12):
        chain.x.copy_(torch.randn(1, HIDDEN, generator=gen, device="cuda").to(torch.bfloat16) * 3)
        graph.replay()
        torch.cuda.synchronize()
        with monkeypatch.context() as off:
            off.setenv("LADLE_PDL", "0")
            want_logits, want_token, want_caches = chain.run()
        assert torch.equal(logits, want_logits)
        assert torch.equal(token, want_token)
        assert torch.equal(caches, want_caches)
        assert int(token) == int(logits.float().argmax())
        tokens.add(int(token))
    assert len(tokens) > 1, "every input gave the same token: the chain does not depend on its input"
