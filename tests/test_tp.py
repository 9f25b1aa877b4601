"""Tensor parallelism on CPU (gloo): TP=2 gives transformers' greedy tokens and log-probabilities for every
architecture, with KV heads split or replicated and a vocabulary that doesn't divide; a killed worker stops
the engine with a clear error instead of hanging."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from hf_reference import scored_continuation
from ladle import LLM, SamplingParams
from ladle.distributed.group import TPGroup, WorkerDiedError
from ladle.distributed.sharding import check_tp_support, shard_tensor
from tiny_models import ARCHITECTURES, build_tokenizer

# Workers share two cores with the engine process: one torch thread each keeps them from fighting.
os.environ.setdefault("LADLE_TP_WORKER_THREADS", "1")
os.environ.setdefault("LADLE_TP_TIMEOUT_S", "120")

PROMPTS = [list(range(5, 8)), [(i * 13) % 350 + 4 for i in range(40)]]
NUM_TOKENS = 12
GREEDY = SamplingParams(
    temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True, logprobs=1, prompt_logprobs=1
)


def _references(model):
    return [scored_continuation(model, prompt, NUM_TOKENS, ignore_eos=True) for prompt in PROMPTS]


def _check(outputs, refs):
    for prompt, out, (tokens, lp) in zip(PROMPTS, outputs, refs):
        got = out.outputs[0]
        assert got.token_ids == tokens
        for step, entry in enumerate(got.logprobs):
            expected = float(lp[len(prompt) - 1 + step, tokens[step]])
            assert entry[tokens[step]].logprob == pytest.approx(expected, abs=2e-4)
        for pos in range(1, len(prompt)):
            expected = float(lp[pos - 1, prompt[pos]])
            assert out.prompt_logprobs[pos][prompt[pos]].logprob == pytest.approx(expected, abs=2e-4)


def _kv1_odd_vocab_model(folder):
    """Llama with one KV head (so TP=2 replicates it) and 383 tokens (so the vocabulary is padded)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tiny_models import COMMON

    config = LlamaConfig(**{**COMMON, "num_key_value_heads": 1, "vocab_size": 383}, tie_word_embeddings=False)
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    build_tokenizer(folder, 384)
    return model


@pytest.fixture(scope="module", params=ARCHITECTURES + ["llama_kv1_vocab383"])
def tp_engine(request, tiny_model_factory, tmp_path_factory):
    """A TP=2 engine per architecture, shared by the tests below."""
    kind = request.param
    if kind == "llama_kv1_vocab383":
        folder = tmp_path_factory.mktemp("tiny-kv1")
        model = _kv1_odd_vocab_model(folder)
    else:
        folder, model = tiny_model_factory(kind)
    llm = LLM(str(folder), tensor_parallel_size=2, max_num_batched_tokens=64)
    yield kind, folder, llm, _references(model)
    llm.llm_engine.shutdown()


def test_tp2_greedy_and_logprobs_match_transformers(tp_engine):
    _kind, _folder, llm, refs = tp_engine
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], GREEDY)
    _check(outputs, refs)
    kv = llm.llm_engine.kv
    assert kv.num_free_blocks == kv.num_blocks
    assert llm.llm_engine.is_healthy()


def test_tp2_chunked_prefill_matches(tp_engine):
    """A 40-token prompt in 16-token chunks beside a running decode: mixed batches across ranks."""
    _kind, _folder, llm, refs = tp_engine
    llm.llm_engine.scheduler.max_prefill_chunk = 16
    try:
        greedy = SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True)
        outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], greedy)
    finally:
        llm.llm_engine.scheduler.max_prefill_chunk = llm.llm_engine.scheduler.max_num_batched_tokens
    for out, (tokens, _) in zip(outputs, refs):
        assert out.outputs[0].token_ids == tokens


def test_tp_rank_holds_its_slice(tp_engine):
    kind, _folder, llm, _refs = tp_engine
    model = llm.llm_engine.runner.model
    arch = llm.llm_engine.arch
    attn = model.model.layers[0].self_attn
    assert attn.num_heads == arch.num_attention_heads // 2
    assert attn.num_kv_heads == max(1, arch.num_key_value_heads // 2)
    assert attn.q_proj.weight.shape[0] == attn.num_heads * arch.head_dim
    k_cache = llm.llm_engine.runner.kv_caches[0][0]
    assert k_cache.shape[2] == attn.num_kv_heads
    assert model.model.embed_tokens.weight.shape[0] == -(-arch.vocab_size // 2)


def test_unsupported_split_names_the_dimension(tiny_model_factory):
    folder, _ = tiny_model_factory("llama")
    with pytest.raises(ValueError, match="num_attention_heads"):
        LLM(str(folder), tensor_parallel_size=3)


def test_quantized_weight_is_dequantized_then_sharded():
    class FakeQuant:  # the gguf branch's weight objects: linear() and dequantize(); no shard()
        shape = (4, 6)

        def __init__(self):
            self.dense = torch.arange(24, dtype=torch.float32).view(4, 6)

        def linear(self, x):
            return x @ self.dense.T

        def dequantize(self, dtype):
            return self.dense.to(dtype)

    part = shard_tensor(FakeQuant(), (1, 3, 6, 3), torch.float32)
    assert torch.equal(part, torch.arange(24, dtype=torch.float32).view(4, 6)[:, 3:6])

    class FakeRows(FakeQuant):  # GGUF weights can take a block of their rows and stay quantized
        def rows(self, index):
            kept = FakeRows()
            kept.dense = self.dense[index]
            return kept

    rows = shard_tensor(FakeRows(), (0, 2, 4, 2), torch.float32)
    assert isinstance(rows, FakeRows) and torch.equal(rows.dense, torch.arange(12, 24.0).view(2, 6))
    cols = shard_tensor(FakeRows(), (1, 0, 3, 3), torch.float32)  # columns: dequantized fallback
    assert isinstance(cols, torch.Tensor) and cols.shape == (4, 3)
    padded = shard_tensor(torch.ones(3, 2), (0, 2, 3, 2), torch.float32)
    assert padded.tolist() == [[1.0, 1.0], [0.0, 0.0]]


def test_check_tp_support_allows_replicated_kv_heads():
    from ladle.model.config import ArchConfig

    arch = ArchConfig("llama", "LlamaForCausalLM", 100, 64, 128, 1, 8, 2, 8)
    check_tp_support(arch, 4)  # 2 KV heads over 4 ranks: each replicated twice
    with pytest.raises(ValueError, match="num_key_value_heads"):
        check_tp_support(ArchConfig("llama", "LlamaForCausalLM", 100, 64, 128, 1, 12, 3, 8), 2)
    assert TPGroup.single().gather_to_first(torch.ones(2))[0].tolist() == [1.0, 1.0]


@pytest.mark.timeout(120)
def test_killed_worker_fails_the_engine_with_a_clear_error(tiny_model_factory):
    folder, _ = tiny_model_factory("llama")
    llm = LLM(str(folder), tensor_parallel_size=2)
    engine = llm.llm_engine
    try:
        greedy = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
        assert len(llm.generate([{"prompt_token_ids": [5, 6, 7]}], greedy)[0].outputs[0].token_ids) == 4
        worker = engine.runner.launcher.procs[1]
        os.kill(worker.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while engine.is_healthy() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not engine.is_healthy()  # noticed while idle: /health can answer 503 at once
        with pytest.raises(WorkerDiedError, match=r"rank 1 \(pid \d+, exit code -9\) died"):
            llm.generate([{"prompt_token_ids": [5, 6, 7]}], greedy)
    finally:
        engine.shutdown()


@pytest.mark.timeout(120)
def test_worker_killed_mid_step_raises_not_hangs(tiny_model_factory):
    folder, _ = tiny_model_factory("qwen2")
    llm = LLM(str(folder), tensor_parallel_size=2)
    engine = llm.llm_engine
    try:
        engine.add_request(
            "a", {"prompt_token_ids": [5, 6, 7]}, SamplingParams(max_tokens=10_000, ignore_eos=True)
        )
        engine.step()
        os.kill(engine.runner.launcher.procs[1].pid, signal.SIGKILL)
        with pytest.raises(WorkerDiedError, match="died"):
            for _ in range(10_000):
                engine.step()
    finally:
        engine.shutdown()


@pytest.mark.timeout(120)
def test_dropping_the_engine_stops_its_workers(tiny_model_factory):
    import gc

    folder, _ = tiny_model_factory("llama")
    llm = LLM(str(folder), tensor_parallel_size=2)
    procs = list(llm.llm_engine.runner.launcher.procs.values())
    del llm
    gc.collect()
    for proc in procs:
        assert proc.wait(timeout=30) == 0  # told to stop, not killed


@pytest.mark.timeout(120)
def test_hung_worker_times_out_instead_of_hanging(tiny_model_factory):
    """A worker that stops responding (SIGSTOP) without dying: rank 0's collective times out."""
    import datetime

    folder, _ = tiny_model_factory("llama")
    llm = LLM(str(folder), tensor_parallel_size=2)
    engine = llm.llm_engine
    try:
        engine.runner.group.pg.set_timeout(datetime.timedelta(seconds=3))  # LADLE_TP_TIMEOUT_S, shortened
        os.kill(engine.runner.launcher.procs[1].pid, signal.SIGSTOP)
        start = time.monotonic()
        with pytest.raises(WorkerDiedError, match="out of step"):
            llm.generate([{"prompt_token_ids": [5, 6, 7]}], SamplingParams(max_tokens=4, ignore_eos=True))
        assert time.monotonic() - start < 30
        assert not engine.is_healthy()
    finally:
        os.kill(
            engine.runner.launcher.procs[1].pid, signal.SIGKILL
        )  # else shutdown waits out its grace period
        engine.shutdown()
