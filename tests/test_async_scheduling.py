"""Async scheduling (the engine launches step N+1 before reading step N's tokens back) against Hugging Face
transformers on a tiny random Llama, on the CPU: the bookkeeping is the same as on a GPU, only nothing
overlaps. Every engine here asks for the CPU, also where a GPU exists: the references are transformers'
float32 CPU runs, and seeded draws come from the device's generator (tests/test_gpu_engine.py covers the
GPU). Greedy tokens must equal transformers' through chunked prefill, prefix-cache hits, preemption,
stops found one step late and aborts, with requests that need the host's tokens (logprobs, penalties,
min_tokens) mixed in; and no block may leak."""

from __future__ import annotations

import re

import pytest
import torch

from ladle import LLM, SamplingParams

PROMPTS = [[(i * 7) % 300 + 4 for i in range(17)], list(range(5, 8)), [(i * 13) % 350 + 4 for i in range(40)]]
MAX_TOKENS = [24, 9, 31]  # different lengths: requests leave the batch at different steps


@pytest.fixture(scope="module")
def llama(tiny_model_factory):
    folder, model = tiny_model_factory("llama")
    return folder, model


def _reference(model, prompt: list[int], num_tokens: int, **generate_options) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=num_tokens,
            min_new_tokens=num_tokens,
            do_sample=False,
            **generate_options,
        )
    return out[0, len(prompt) :].tolist()


def _reference_text(folder, token_ids: list[int]) -> str:
    """transformers' tokenizer decoding token_ids as ladle's outputs do by default (special tokens out)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder)).decode(token_ids, skip_special_tokens=True)


def _assert_no_leak(llm: LLM) -> None:
    engine = llm.llm_engine
    assert engine.kv.num_free_blocks == engine.kv.num_blocks
    assert not engine.has_unfinished_requests()


def _greedy(n: int, **options) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, **options)


@pytest.mark.parametrize(
    "options",
    [{}, {"max_num_batched_tokens": 16}, {"num_kv_blocks": 8}],
    ids=["plain", "chunked-prefill", "preemption"],
)
def test_greedy_tokens_match_transformers(llama, options):
    folder, model = llama
    llm = LLM(str(folder), device="cpu", async_scheduling=True, **options)
    assert llm.llm_engine.async_scheduling
    prompts = PROMPTS * 2  # the repeats also hit the prefix cache
    params = [_greedy(n) for n in MAX_TOKENS * 2]
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    for prompt, n, out in zip(prompts, MAX_TOKENS * 2, outputs):
        assert out.outputs[0].token_ids == _reference(model, prompt, n)
        assert out.outputs[0].finish_reason == "length"
    counters = llm.llm_engine.counters
    assert counters.overlapped_steps > 0
    assert counters.generation_tokens == sum(MAX_TOKENS) * 2  # no token computed in vain was counted
    if "num_kv_blocks" in options:
        assert llm.llm_engine.scheduler.num_preemptions > 0
    _assert_no_leak(llm)


def test_every_call_launches_a_step_and_returns_the_one_before(llama):
    """n tokens take n + 1 calls (the last only reads back); each call from the second on streams one."""
    folder, model = llama
    llm = LLM(str(folder), device="cpu", async_scheduling=True)
    engine = llm.llm_engine
    engine.add_request("r", {"prompt_token_ids": PROMPTS[0]}, _greedy(12))
    streamed: list[int] = []
    calls = 0
    while engine.has_unfinished_requests():
        outputs = engine.step()
        calls += 1
        assert engine._inflight is not None or not engine.has_unfinished_requests()
        if calls > 1:
            (out,) = outputs
            streamed.extend(out.deltas[0][1])
        else:
            assert outputs == []  # the first step's token is still on its way
    assert calls == 13
    assert streamed == _reference(model, PROMPTS[0], 12)
    assert engine.counters.overlapped_steps == 12
    _assert_no_leak(llm)


def test_off_by_default_on_cpu(llama):
    llm = LLM(str(llama[0]), device="cpu")
    assert not llm.llm_engine.async_scheduling
    llm.generate([{"prompt_token_ids": PROMPTS[0]}], _greedy(4))
    assert llm.llm_engine.counters.overlapped_steps == 0


def test_stop_tokens_seen_a_step_late_end_the_output_exactly(llama):
    """The step after a stop is already running when the host sees the stop: its token must not appear."""
    folder, model = llama
    llm = LLM(str(folder), device="cpu", async_scheduling=True)
    refs = [_reference(model, p, 20) for p in PROMPTS]
    # Stop each request on its reference's 6th token (a stop_token_id, reported as the stop reason).
    params = [
        SamplingParams(temperature=0.0, max_tokens=20, stop_token_ids=[ref[5]], ignore_eos=True)
        for ref in refs
    ]
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params)
    for ref, out in zip(refs, outputs):
        got = out.outputs[0]
        cut = ref.index(ref[5]) + 1  # the first occurrence stops it
        assert got.token_ids == ref[:cut]
        assert got.finish_reason == "stop"
        assert got.stop_reason == ref[5]
    assert llm.llm_engine.counters.generation_tokens == sum(len(o.outputs[0].token_ids) for o in outputs)
    _assert_no_leak(llm)


def test_stop_strings_under_async_scheduling(llama):
    folder, model = llama
    llm = LLM(str(folder), device="cpu", async_scheduling=True)
    text = _reference_text(folder, _reference(model, PROMPTS[2], 16))
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip(), "the reference text has no usable stop string here"
    out = llm.generate([{"prompt_token_ids": PROMPTS[2]}], _greedy(16, stop=[stop]))[0].outputs[0]
    assert out.finish_reason == "stop"
    assert out.stop_reason == stop
    assert out.text == text[: text.index(stop)]
    _assert_no_leak(llm)


def test_rows_that_need_host_tokens_mixed_with_overlapped_ones(llama):
    """A grammar makes its steps synchronous; beside it, and once it ends, rows with logprobs, a repetition
    penalty and min_tokens (which overlap) still get transformers' tokens (the penalty as transformers'
    repetition_penalty)."""
    folder, model = llama
    llm = LLM(str(folder), device="cpu", async_scheduling=True)
    # The grammar row ends first (4-8 digits): from then on every step overlaps.
    plain = _greedy(24)
    penalised = _greedy(10, repetition_penalty=1.3)
    logprobs = _greedy(10, logprobs=2)
    min_tokens = SamplingParams(temperature=0.0, max_tokens=10, min_tokens=6)
    digits = SamplingParams(temperature=0.0, max_tokens=10, structured_outputs={"regex": "[0-9]{4,8}"})
    params = [plain, penalised, logprobs, min_tokens, digits]
    prompts = [PROMPTS[0], PROMPTS[2], PROMPTS[1], PROMPTS[0], PROMPTS[1]]
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    assert outputs[0].outputs[0].token_ids == _reference(model, prompts[0], 24)
    assert outputs[1].outputs[0].token_ids == _reference(model, prompts[1], 10, repetition_penalty=1.3)
    ref = _reference(model, prompts[2], 10)
    got = outputs[2].outputs[0]
    assert got.token_ids == ref
    assert len(got.logprobs) == 10 and all(ref[i] in entry for i, entry in enumerate(got.logprobs))
    # min_tokens (without ignore_eos): EOS may not end it before 6 tokens; the tiny model rarely picks EOS.
    eos = llm.llm_engine.arch.eos_token_ids
    tokens = outputs[3].outputs[0].token_ids
    assert len(tokens) >= 6 and not any(t in eos for t in tokens[:6])
    constrained = outputs[4].outputs[0]
    assert constrained.finish_reason == "stop" and re.fullmatch("[0-9]{4,8}", constrained.text)
    # Steps with the grammar row (at most 9 tokens) were synchronous; the plain row's last 15 or more overlapped.
    assert llm.llm_engine.counters.overlapped_steps >= 15
    _assert_no_leak(llm)


# Rows whose sampling follows their own earlier tokens; under async scheduling the last of those is still on
# the device when the next step is sampled (penalties take it from there, min_tokens counts it).
_TOKEN_DEPENDENT = [
    _greedy(20, repetition_penalty=1.5),
    _greedy(20, frequency_penalty=1.5, presence_penalty=0.5),
    # Ollama's repeat_last_n: a window of 3 slides past the prompt onto the output, the pending token in it.
    _greedy(20, repetition_penalty=2.0, frequency_penalty=1.0, penalty_window=3),
    SamplingParams(temperature=0.0, max_tokens=20, min_tokens=12, stop_token_ids=[5, 6, 7, 8, 9, 10]),
    _greedy(20, logprobs=3),
    SamplingParams(
        temperature=0.8, seed=11, max_tokens=20, ignore_eos=True, presence_penalty=1.0, logprobs=1
    ),
]


def test_penalties_min_tokens_and_logprobs_overlap_and_match_synchronous_steps(llama):
    """Every step overlaps, and tokens, logprobs, stop reasons are the synchronous engine's exactly: penalties
    count the token in flight, min_tokens counts it, logprobs come back with the tokens."""
    folder, model = llama
    prompts = [{"prompt_token_ids": p} for p in (PROMPTS * 2)[: len(_TOKEN_DEPENDENT)]]
    results = {}
    for flag in (False, True):
        llm = LLM(str(folder), device="cpu", async_scheduling=flag)
        engine = llm.llm_engine
        for i, (prompt, params) in enumerate(zip(prompts, _TOKEN_DEPENDENT)):
            engine.add_request(str(i), prompt, params)
        outputs, calls = {}, 0
        while engine.has_unfinished_requests():
            calls += 1
            for out in engine.step():
                if out.finished:
                    outputs[out.request_id] = out.outputs[0]
        if flag:  # each call launched a step that sampled every running row, bar the last (it only reads)
            assert engine.counters.overlapped_steps == calls - 1
        else:
            assert engine.counters.overlapped_steps == 0
        _assert_no_leak(llm)
        results[flag] = [outputs[str(i)] for i in range(len(_TOKEN_DEPENDENT))]
    for sync, overlapped in zip(results[False], results[True]):
        assert overlapped.token_ids == sync.token_ids
        assert (overlapped.finish_reason, overlapped.stop_reason) == (sync.finish_reason, sync.stop_reason)
        # The same tokens and ranks; values to float32 rounding (a stop seen a step late changes which rows
        # share a step, and so the matmuls' summation).
        assert (overlapped.logprobs is None) == (sync.logprobs is None)
        for got, want in zip(overlapped.logprobs or [], sync.logprobs or [], strict=True):
            assert {t: lp.rank for t, lp in got.items()} == {t: lp.rank for t, lp in want.items()}
            assert all(lp.logprob == pytest.approx(want[t].logprob, abs=1e-5) for t, lp in got.items())
    # The repetition penalty and the logprobs against transformers too.
    assert results[True][0].token_ids == _reference(model, PROMPTS[0], 20, repetition_penalty=1.5)
    with torch.no_grad():
        full = torch.tensor([PROMPTS[1] + results[True][4].token_ids])
        reference = model(full).logits[0, len(PROMPTS[1]) - 1 : -1].float().log_softmax(dim=-1)
    for position, entry in enumerate(results[True][4].logprobs):
        assert len(entry) >= 3
        for token, logprob in entry.items():
            assert logprob.logprob == pytest.approx(float(reference[position, token]), abs=2e-4)
    # min_tokens held the stop ids back for 12 tokens (the row may stop on one after that).
    assert len(results[True][3].token_ids) >= 12
    assert not set(results[True][3].token_ids[:12]) & {5, 6, 7, 8, 9, 10}


def test_min_tokens_ends_on_the_first_allowed_step(llama):
    """min_tokens counts the token in flight: a stop id the model picks right at position min_tokens ends
    the output there, with and without async scheduling (counting only the host's tokens would mask it one
    step too long)."""
    folder, model = llama
    ref = _reference(model, PROMPTS[2], 24)
    m = next(i for i in range(8, 24) if ref[i] not in ref[:i])
    params = _greedy(24, min_tokens=m, stop_token_ids=[ref[m]])
    for flag in (False, True):
        llm = LLM(str(folder), device="cpu", async_scheduling=flag)
        out = llm.generate([{"prompt_token_ids": PROMPTS[2]}], params)[0].outputs[0]
        assert out.token_ids == ref[: m + 1]
        assert (out.finish_reason, out.stop_reason) == ("stop", ref[m])
        # m + 1 tokens, and the step after the stop, launched before the stop was seen.
        assert llm.llm_engine.counters.overlapped_steps == (m + 2 if flag else 0)
        _assert_no_leak(llm)


def test_abort_while_a_step_is_in_flight(llama):
    folder, model = llama
    llm = LLM(str(folder), device="cpu", async_scheduling=True)
    engine = llm.llm_engine
    engine.add_request("keep", {"prompt_token_ids": PROMPTS[0]}, _greedy(20))
    engine.add_request("drop", {"prompt_token_ids": PROMPTS[2]}, _greedy(20))
    finished = {}
    for _ in range(4):
        for out in engine.step():
            finished[out.request_id] = out
    assert engine._inflight is not None  # the abort below lands while a step is still running
    engine.abort_request("drop")
    while engine.has_unfinished_requests():
        for out in engine.step():
            finished[out.request_id] = out
    assert finished["keep"].finished
    assert finished["keep"].outputs[0].token_ids == _reference(model, PROMPTS[0], 20)
    assert "drop" not in engine.parents
    _assert_no_leak(llm)


def _reference_seeded(
    model, prompt: list[int], n: int, seed: int, temperature: float, top_k: int
) -> list[int]:
    """The sampler's documented draw, on transformers' logits: temperature, the top_k largest kept (ties with
    the k-th too), then the exponential race argmax p / -log(U) with U from a generator seeded with the
    request's seed, one vocabulary-sized draw per token."""
    generator = torch.Generator().manual_seed(seed)
    tokens: list[int] = []
    for _ in range(n):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + tokens])).logits[0, -1].float() / temperature
        logits = logits.masked_fill(logits < logits.topk(top_k).values[-1], float("-inf"))
        probs = logits.softmax(dim=-1)
        race = torch.empty_like(probs).uniform_(generator=generator).log_().neg_()
        tokens.append(int((probs / race.clamp_(min=torch.finfo(race.dtype).tiny)).argmax()))
    return tokens


def test_seeded_sampling_is_the_same_with_and_without(llama):
    """A seeded request's draws come from its own generator in the same order either way, and are the draws
    the sampler's rule makes on transformers' logits."""
    folder, model = llama
    params = [
        SamplingParams(temperature=0.9, top_k=40, seed=7 + i, max_tokens=18, ignore_eos=True)
        for i in range(3)
    ]
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    results = []
    for flag in (False, True):
        llm = LLM(str(folder), device="cpu", async_scheduling=flag)
        results.append([o.outputs[0].token_ids for o in llm.generate(prompts, params)])
        _assert_no_leak(llm)
    assert results[0] == results[1]
    assert all(len(tokens) == 18 for tokens in results[1])
    for prompt, tokens, i in zip(PROMPTS, results[1], range(3)):
        assert tokens == _reference_seeded(model, prompt, 18, seed=7 + i, temperature=0.9, top_k=40)


def test_refused_with_tensor_parallelism(llama):
    with pytest.raises(ValueError, match="async_scheduling"):
        LLM(str(llama[0]), device="cpu", async_scheduling=True, tensor_parallel_size=2)


def test_served_with_async_scheduling_streams_transformers_tokens(llama, tmp_path):
    """`ladle serve --async-scheduling`: a stream's text is transformers' greedy continuation, in order, with
    one finish reason; a stop sequence found a step late still cuts the text where it starts."""
    import openai

    from server_helpers import run_server

    folder, model = llama
    prompt_ids = PROMPTS[2]
    ref = _reference(model, prompt_ids, 14)
    with run_server(folder, tmp_path, "--async-scheduling") as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
        stream = client.completions.create(
            model=server.model,
            prompt=prompt_ids,
            max_tokens=14,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        assert text == _reference_text(folder, ref)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finish == ["length"]
        assert chunks[-1].usage.completion_tokens == 14

        stop = text[len(text) // 2 : len(text) // 2 + 3]
        resp = client.completions.create(
            model=server.model, prompt=prompt_ids, max_tokens=14, temperature=0, stop=[stop]
        )
        assert resp.choices[0].finish_reason == "stop"
        assert resp.choices[0].text == text[: text.index(stop)]
