"""ladle's engine against Hugging Face transformers on tiny random models of every supported architecture:
greedy token ids and logprobs, batched, with prefix-cache hits, with small prefill chunks, under preemption."""

from __future__ import annotations

import pytest

from hf_reference import scored_continuation
from ladle import LLM, SamplingParams

PROMPTS = [list(range(5, 8)), [(i * 7) % 300 + 4 for i in range(17)], [(i * 13) % 350 + 4 for i in range(40)]]
NUM_TOKENS = 32
GREEDY = SamplingParams(
    temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True, logprobs=1, prompt_logprobs=1
)


@pytest.fixture(scope="module")
def references(tiny_model):
    """transformers' greedy continuation of each prompt, and its log-probabilities over the whole sequence."""
    kind, folder, model = tiny_model
    refs = [scored_continuation(model, prompt, NUM_TOKENS, ignore_eos=True) for prompt in PROMPTS]
    return kind, folder, refs


def _check(outputs, refs, check_logprobs=True):
    for prompt, out, (ref_tokens, ref_lp) in zip(PROMPTS, outputs, refs):
        got = out.outputs[0]
        assert got.token_ids == ref_tokens
        assert got.finish_reason == "length"
        if not check_logprobs:
            continue
        assert len(got.logprobs) == len(ref_tokens)
        for step, entry in enumerate(got.logprobs):
            token = ref_tokens[step]
            expected = float(ref_lp[len(prompt) - 1 + step, token])
            assert entry[token].logprob == pytest.approx(expected, abs=2e-4)
            assert entry[token].rank == 1
        assert out.prompt_logprobs[0] is None
        for pos in range(1, len(prompt)):
            expected = float(ref_lp[pos - 1, prompt[pos]])
            assert out.prompt_logprobs[pos][prompt[pos]].logprob == pytest.approx(expected, abs=2e-4)


def _assert_no_leak(llm):
    kv = llm.llm_engine.kv
    assert kv.num_free_blocks == kv.num_blocks
    assert not llm.llm_engine.has_unfinished_requests()


def test_batched_greedy_and_logprobs_match_transformers(references):
    _, folder, refs = references
    llm = LLM(str(folder))
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], GREEDY)
    _check(outputs, refs)
    _assert_no_leak(llm)


def test_prefix_cache_hits_compute_only_new_tokens(references):
    _, folder, refs = references
    llm = LLM(str(folder), enable_prefix_caching=True)
    greedy = SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True)
    first = llm.generate([{"prompt_token_ids": PROMPTS[2]}], greedy)
    second = llm.generate([{"prompt_token_ids": PROMPTS[2]}], greedy)
    assert first[0].num_cached_tokens == 0
    # 40 prompt tokens: two full 16-token blocks come from the cache, the rest is computed.
    assert second[0].num_cached_tokens == 32
    assert llm.llm_engine.kv.stats.hits >= 32
    for out in (first, second):
        assert out[0].outputs[0].token_ids == refs[2][0]
    _assert_no_leak(llm)


def test_small_prefill_chunks(references):
    _, folder, refs = references
    llm = LLM(str(folder), max_num_batched_tokens=16)
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], GREEDY)
    _check(outputs, refs)
    _assert_no_leak(llm)


def test_preemption_when_the_pool_is_too_small(references):
    _, folder, refs = references
    # 40 + 32 tokens need 5 blocks of 16; six such requests need 30, the pool has 12.
    llm = LLM(str(folder), num_kv_blocks=12)
    prompts = [PROMPTS[2], PROMPTS[1], PROMPTS[0]] * 2
    greedy = SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], greedy)
    assert llm.llm_engine.scheduler.num_preemptions > 0
    expected = {tuple(p): r[0] for p, r in zip(PROMPTS, refs)}
    for prompt, out in zip(prompts, outputs):
        assert out.outputs[0].token_ids == expected[tuple(prompt)]
    _assert_no_leak(llm)
