"""The engine on CUDA (Triton attention, CUDA graphs, measured KV sizing) against Hugging Face transformers
on tiny random models of every supported architecture, in float32: greedy tokens and logprobs, with graphs
and without, with small prefill chunks and with prefix-cache hits. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

from hf_reference import scored_continuation
from ladle import LLM, SamplingParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROMPTS = [list(range(5, 8)), [(i * 7) % 300 + 4 for i in range(17)], [(i * 13) % 350 + 4 for i in range(40)]]
NUM_TOKENS = 32
GREEDY = SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True, logprobs=1)


@pytest.fixture(scope="module")
def references(tiny_model):
    """transformers' (CPU, float32) greedy continuation of each prompt and its log-probabilities."""
    kind, folder, model = tiny_model
    refs = [scored_continuation(model, prompt, NUM_TOKENS, ignore_eos=True) for prompt in PROMPTS]
    return kind, folder, refs


def _assert_no_leak(llm):
    kv = llm.llm_engine.kv
    assert kv.num_free_blocks == kv.num_blocks
    assert not llm.llm_engine.has_unfinished_requests()


def _check(outputs, refs, tol=2e-3):
    for prompt, out, (ref_tokens, ref_lp) in zip(PROMPTS, outputs, refs):
        got = out.outputs[0]
        assert got.token_ids == ref_tokens
        for step, entry in enumerate(got.logprobs):
            token = ref_tokens[step]
            expected = float(ref_lp[len(prompt) - 1 + step, token])
            assert entry[token].logprob == pytest.approx(expected, abs=tol)


@pytest.mark.parametrize("eager", [False, True])
def test_cuda_engine_matches_transformers(references, eager):
    _, folder, refs = references
    llm = LLM(str(folder), device="cuda", dtype="float32", enforce_eager=eager)
    engine = llm.llm_engine
    assert engine.attention_backend.name == "triton"
    assert (engine.runner.graphs is None) == eager
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], GREEDY)
    _check(outputs, refs)
    _assert_no_leak(llm)


def test_cuda_chunked_prefill_and_prefix_cache(references):
    _, folder, refs = references
    llm = LLM(str(folder), device="cuda", dtype="float32", max_num_batched_tokens=16)
    greedy = SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True, logprobs=1)
    first = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], greedy)
    second = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], greedy)
    assert second[2].num_cached_tokens == 32
    _check(first, refs)
    _check(second, refs)
    _assert_no_leak(llm)


def test_cuda_bf16_graphs_agree_with_eager(references):
    """bf16, 40 sequences (a padded graph batch of 48): graph replay gives eager's tokens."""
    _, folder, _ = references
    prompts = [{"prompt_token_ids": [(i * 31 + j * 7) % 300 + 4 for j in range(5 + i)]} for i in range(40)]
    greedy = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    got = {}
    for eager in (False, True):
        llm = LLM(str(folder), device="cuda", dtype="bfloat16", enforce_eager=eager)
        got[eager] = [o.outputs[0].token_ids for o in llm.generate(prompts, greedy)]
        del llm
    same = sum(a == b for a, b in zip(got[False], got[True]))
    assert same >= 38, f"only {same}/40 sequences agree"  # bf16 near-ties may flip a rare token


TOP2 = SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True, logprobs=2)


def assert_same_up_to_near_ties(a, b, tol=0.05):
    """Two greedy runs (logprobs=2) whose numerics differ by rounding alone: the same tokens, or the same up to
    a step where the first run ranked the second run's token a close second (a near-tie: log-probabilities
    within tol; the continuations may part after it). Graph replay and eager decode differ so: a graph's
    decode attention splits the context into more pieces (its batch's length is unknown at capture), so the
    partial softmaxes are summed in another order."""
    for x, y in zip(a, b, strict=True):
        for step, (u, w) in enumerate(zip(x.token_ids, y.token_ids, strict=True)):
            if u != w:
                top = x.logprobs[step]
                assert w in top, f"step {step}: token {w} is not in the other run's top 2 {sorted(top)}"
                gap = top[u].logprob - top[w].logprob
                assert 0 <= gap < tol, f"step {step}: tokens {u} and {w} are {gap:.4f} apart, no near-tie"
                break


def test_cuda_fp8_kv_cache_with_graphs_matches_eager_and_stays_near_transformers(references):
    """kv_cache_dtype="fp8": the pool is e4m3 (half of bf16's bytes), graph replay gives eager's tokens (up to
    a near-tie), and the first prompt keeps most of transformers' greedy tokens (fp8 rounding may flip one)."""
    _, folder, refs = references
    got = {}
    for eager in (False, True):
        llm = LLM(str(folder), device="cuda", dtype="bfloat16", kv_cache_dtype="fp8", enforce_eager=eager)
        engine = llm.llm_engine
        assert engine.runner.kv_caches[0][0].dtype == torch.float8_e4m3fn
        got[eager] = [o.outputs[0] for o in llm.generate([{"prompt_token_ids": p} for p in PROMPTS], TOP2)]
        _assert_no_leak(llm)
        del llm
    assert_same_up_to_near_ties(got[False], got[True])
    got = {eager: [o.token_ids for o in outs] for eager, outs in got.items()}
    ref_tokens = refs[0][0]
    agree = sum(a == b for a, b in zip(got[False][0], ref_tokens))
    assert agree >= NUM_TOKENS // 2, f"fp8 run kept only {agree}/{NUM_TOKENS} of transformers' tokens"


@pytest.mark.parametrize("eager", [False, True])
def test_cuda_async_scheduling_matches_transformers(references, eager):
    """Async scheduling (on by default on CUDA): decodes take their input tokens from the step before on
    the device, graph replays included; requests of different lengths, one ended by a stop token that the
    host sees only while the next step runs, 40 sequences beside them (graph padding), small chunks."""
    _, folder, refs = references
    llm = LLM(str(folder), device="cuda", dtype="float32", enforce_eager=eager, max_num_batched_tokens=64)
    engine = llm.llm_engine
    assert engine.async_scheduling
    lengths = [NUM_TOKENS, 11, 23]
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in lengths]
    stop = refs[0][0][6]
    params[0] = SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True, stop_token_ids=[stop])
    prompts = [{"prompt_token_ids": p} for p in PROMPTS] * 14  # 42 sequences
    outputs = llm.generate(prompts, params * 14)
    for i, out in enumerate(outputs):
        ref = refs[i % 3][0]
        if i % 3 == 0:
            expected = ref[: ref.index(stop) + 1]
        else:
            expected = ref[: lengths[i % 3]]
        assert out.outputs[0].token_ids == expected, i
    assert engine.counters.overlapped_steps > 0
    assert engine.counters.generation_tokens == sum(len(o.outputs[0].token_ids) for o in outputs)
    _assert_no_leak(llm)


def test_cuda_async_penalties_min_tokens_and_logprobs(references, tiny_model):
    """Rows whose sampling follows their own tokens overlap too on CUDA: penalties take the token in flight
    from the device, min_tokens counts it, logprobs come back through pinned copies with the tokens. Tokens
    equal the synchronous engine's and transformers' (repetition_penalty), logprobs transformers'."""
    _, folder, refs = references
    # min_tokens ends on its first allowed step: a stop id the model picks at position m and not before.
    # (A tiny random model may loop; take the first prompt whose continuation has such a position.)
    k, m = next(
        (k, i) for k in (2, 1, 0) for i in range(4, NUM_TOKENS) if refs[k][0][i] not in refs[k][0][:i]
    )
    ref = refs[k][0]
    params = [
        SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True, repetition_penalty=1.5),
        SamplingParams(
            temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True, frequency_penalty=1.5, penalty_window=3
        ),
        SamplingParams(
            temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True, min_tokens=m, stop_token_ids=[ref[m]]
        ),
        GREEDY,
    ]
    prompts = [{"prompt_token_ids": p} for p in (PROMPTS[0], PROMPTS[1], PROMPTS[k], PROMPTS[1])]
    results = {}
    for flag in (False, True):
        llm = LLM(str(folder), device="cuda", dtype="float32", async_scheduling=flag)
        results[flag] = [o.outputs[0] for o in llm.generate(prompts, params)]
        overlapped = llm.llm_engine.counters.overlapped_steps
        assert overlapped >= NUM_TOKENS if flag else overlapped == 0
        _assert_no_leak(llm)
    for sync, overlapped in zip(results[False], results[True]):
        assert overlapped.token_ids == sync.token_ids
    got = results[True]
    assert got[2].token_ids == ref[: m + 1] and got[2].stop_reason == ref[m]
    with torch.no_grad():
        penalised = tiny_model[2].generate(
            torch.tensor([PROMPTS[0]]),
            max_new_tokens=NUM_TOKENS,
            min_new_tokens=NUM_TOKENS,
            do_sample=False,
            repetition_penalty=1.5,
        )
    assert got[0].token_ids == penalised[0, len(PROMPTS[0]) :].tolist()
    ref_tokens, ref_lp = refs[1]
    assert got[3].token_ids == ref_tokens
    for step, entry in enumerate(got[3].logprobs):
        expected = float(ref_lp[len(PROMPTS[1]) - 1 + step, ref_tokens[step]])
        assert entry[ref_tokens[step]].logprob == pytest.approx(expected, abs=2e-3)
