"""Stacked q/k/v and gate/up weights (CausalLM.fuse_weights, used on the GPU) compute what the separate
layers do; checked on the CPU with the torch paths."""

from __future__ import annotations

import pytest

from ladle import LLM, SamplingParams


@pytest.mark.parametrize("kind", ["qwen2", "gemma3", "llama"])
def test_fused_weights_match_separate(tiny_model_factory, kind):
    folder, _ = tiny_model_factory(kind)
    llm = LLM(str(folder), device="cpu")
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=1)
    prompts = [{"prompt_token_ids": [5, 9, 17, 33, 40]}, {"prompt_token_ids": list(range(4, 30))}]
    before = llm.generate(prompts, params)
    model = llm.llm_engine.runner.model
    names = {n for n, _ in model.named_parameters()}
    model.fuse_weights()
    assert {n for n, _ in model.named_parameters()} == names
    attn = model.model.layers[0].self_attn
    assert attn.qkv_weight is not None and attn.q_proj.weight.data_ptr() == attn.qkv_weight.data_ptr()
    after = llm.generate(prompts, params)
    for a, b in zip(before, after):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        for la, lb in zip(a.outputs[0].logprobs, b.outputs[0].logprobs):
            tok = next(iter(la))
            assert la[tok].logprob == pytest.approx(lb[tok].logprob, abs=1e-4)
