"""ggml's own CPU ops (the library llama-cpp-python ships), one small graph at a time, as the reference for
ladle's layer ops (quant/csrc/cpu_ops.c): rms_norm, mul, geglu/swiglu, rope, soft_max, f16 mul_mat.

`GGMLOps.run(build, inputs)` makes one input tensor per numpy array (float32, float16 or int32), calls
`build(ops, ctx, tensors)` to add the op nodes (the functions below take ggml tensor pointers), computes the
graph on ggml's CPU backend and returns the output as a numpy array (ggml's dimension order reversed, so
shapes read as numpy's).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from functools import lru_cache

import numpy as np

from ggml_reference import _fn, _InitParams, _lib_dir, ggml_reference

GGML_F32, GGML_F16, GGML_I32 = 0, 1, 26
_TYPES = {np.dtype(np.float32): GGML_F32, np.dtype(np.float16): GGML_F16, np.dtype(np.int32): GGML_I32}
ROPE_NORMAL, ROPE_NEOX = 0, 2


class GGMLOps:
    def __init__(self) -> None:
        self.ref = ggml_reference()
        lib_dir = _lib_dir()
        base = ctypes.CDLL(str(lib_dir / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
        p, i64, i32, f = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
        self.new_4d = _fn(base, "ggml_new_tensor_4d", p, p, i32, i64, i64, i64, i64)
        self.rms_norm = _fn(base, "ggml_rms_norm", p, p, p, f)
        self.mul = _fn(base, "ggml_mul", p, p, p, p)
        self.add = _fn(base, "ggml_add", p, p, p, p)
        self.scale = _fn(base, "ggml_scale", p, p, p, f)
        self.geglu_split = _fn(base, "ggml_geglu_split", p, p, p, p)
        self.swiglu_split = _fn(base, "ggml_swiglu_split", p, p, p, p)
        self.soft_max_ext = _fn(base, "ggml_soft_max_ext", p, p, p, p, f, f)
        self.mul_mat = _fn(base, "ggml_mul_mat", p, p, p, p)
        self.cast = _fn(base, "ggml_cast", p, p, p, i32)
        self.cont = _fn(base, "ggml_cont", p, p, p)
        self.permute = _fn(base, "ggml_permute", p, p, p, i32, i32, i32, i32)
        # ggml_rope_ext(ctx, a, pos, freq_factors, n_dims, mode, n_ctx_orig, freq_base, freq_scale,
        #               ext_factor, attn_factor, beta_fast, beta_slow)
        self.rope_ext = _fn(base, "ggml_rope_ext", p, p, p, p, p, i32, i32, i32, f, f, f, f, f, f)
        self._ne = _fn(base, "ggml_nelements", i64, p)
        self._type = _fn(base, "ggml_get_type", i32, p) if hasattr(base, "ggml_get_type") else None

    def run(
        self,
        build: Callable[..., int],
        inputs: list[np.ndarray],
        out_shape: tuple[int, ...],
        threads: int = 2,
    ) -> np.ndarray:
        ref = self.ref
        params = _InitParams(mem_size=16 << 20, mem_buffer=None, no_alloc=True)
        ctx = ref._init(params)
        try:
            tensors = []
            for a in inputs:
                dims = list(a.shape[::-1]) + [1] * (4 - a.ndim)
                tensors.append(self.new_4d(ctx, _TYPES[a.dtype], *dims))
            out = build(self, ctx, *tensors)
            graph = ref._new_graph(ctx)
            ref._expand(graph, out)
            buf = ref._alloc(ctx, ref._cpu_buft)
            try:
                for t, a in zip(tensors, inputs):
                    a = np.ascontiguousarray(a)
                    ref._set(t, a.ctypes.data, 0, a.nbytes)
                ref.use_threads(threads)
                assert ref._compute(ref._backend, graph) == 0
                y = np.empty(out_shape, dtype=np.float32)
                assert self._ne(out) == y.size, (self._ne(out), y.shape)
                ref._get(out, y.ctypes.data, 0, y.nbytes)
                return y
            finally:
                ref._buffer_free(buf)
        finally:
            ref._free(ctx)


@lru_cache(maxsize=1)
def ggml_ops() -> GGMLOps | None:
    return None if _lib_dir() is None else GGMLOps()


# -- ladle's model with ggml's own matmuls ------------------------------------------------------------------
_MATMULS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class GGMLMatmuls:
    """Swaps every quantized matmul of a ggml-numerics model (model.ggml_forward's layers, and the tied
    lm_head) for ggml's own mul_mat, so a comparison with llama.cpp isolates everything else."""

    def __init__(self, model) -> None:
        self.ref = ggml_reference()
        self._prepared: dict[tuple[int, int], object] = {}
        for layer in model.ggml_forward.layers:
            for name in _MATMULS:
                weight = getattr(getattr(layer, name), "__self__", None)
                if weight is not None and hasattr(weight, "qtype"):
                    setattr(layer, name, self._matmul(weight))
            layer.regroup()
        emb = model.model.embed_tokens.quantized
        self.lm_head = self._matmul(emb) if emb is not None and model.config.tie_word_embeddings else None
        self.model = model

    def _matmul(self, weight):
        import torch

        def run(x):
            key = (id(weight), x.shape[0])
            if key not in self._prepared:
                self._prepared[key] = self.ref.prepare(int(weight.qtype), weight.raw.numpy(), x.shape[0])
            return torch.from_numpy(self._prepared[key](x.numpy()))

        return run

    def logits(self, hidden):
        return self.lm_head(hidden) if self.lm_head is not None else self.model.compute_logits(hidden)


def forward_logits(model, ids: list[int], chunk: int, logits_fn=None) -> np.ndarray:
    """Logits for every position of `ids`, run `chunk` tokens per forward over a fresh paged f16 cache (a
    prefill when chunk >= len(ids), one token per step when chunk == 1), as llama.cpp's eval with
    n_batch = n_ubatch = chunk."""
    import torch

    from ladle.layers.attention import AttentionMetadata

    cfg = model.config
    bs, n = 16, len(ids)
    nb = -(-n // bs)
    shape = (nb, bs, cfg.num_key_value_heads, cfg.head_dim)
    caches = [
        (torch.zeros(shape, dtype=torch.float16), torch.zeros(shape, dtype=torch.float16))
        for _ in range(cfg.num_hidden_layers)
    ]
    logits_fn = logits_fn or model.compute_logits
    out = []
    with torch.inference_mode():
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            meta = AttentionMetadata(
                slot_mapping=torch.arange(a, b),
                block_tables=torch.arange(nb, dtype=torch.int32)[None],
                query_start=torch.tensor([0, b - a], dtype=torch.int32),
                seq_lens=torch.tensor([b], dtype=torch.int32),
                query_lens_host=[b - a],
                seq_lens_host=[b],
                block_size=bs,
                max_query_len=b - a,
                max_seq_len=b,
            )
            hidden = model(torch.tensor(ids[a:b]), torch.arange(a, b), caches, meta)
            out.append(logits_fn(hidden).float().numpy())
    return np.concatenate(out)


def matmul_mismatches(checkpoint, rows: tuple[int, ...] = (1, 8, 16)) -> list[str]:
    """(type, rows) pairs where ladle's quantized matmul differs from ggml's on one layer of each weight type
    of a loaded GGUF checkpoint: the condition for llama.cpp's exact tokens, which belongs to the matmuls."""
    import torch

    ref = ggml_reference()
    seen, bad = set(), []
    rng = np.random.default_rng(0)
    for name, weight in checkpoint.weights():
        if not hasattr(weight, "qtype") or weight.qtype in seen or name.endswith("embed_tokens.weight"):
            continue
        seen.add(weight.qtype)
        for m in rows:
            x = (rng.standard_normal((m, weight.shape[1])) * 3).astype(np.float32)
            got = weight.linear(torch.from_numpy(x)).numpy()
            if not np.array_equal(got, ref.mul_mat(int(weight.qtype), weight.raw.numpy(), x)):
                bad.append(f"{weight.qtype.name} x {m} rows")
    return bad
