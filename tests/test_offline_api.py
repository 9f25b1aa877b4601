"""The offline API's contract (INTERFACES.md): prompts in every accepted form, stop conditions, chat
templates, validation errors that name the field, and no KV blocks left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from hf_reference import greedy
from ladle import LLM, SamplingParams
from ladle.engine.detokenizer import IncrementalDetokenizer
from ladle.loader.tokenizer import load_hf_tokenizer


@pytest.fixture(scope="module")
def llama(tiny_model_factory):
    folder, model = tiny_model_factory("llama")
    return folder, model, LLM(str(folder))


def _greedy(**kw):
    return SamplingParams(temperature=0.0, ignore_eos=True, **{"max_tokens": 24, **kw})


@pytest.mark.parametrize(
    "field,value",
    [
        ("temperature", -1.0),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -5),
        ("min_p", 2.0),
        ("presence_penalty", 3.0),
        ("frequency_penalty", -2.5),
        ("repetition_penalty", 0.0),
        ("max_tokens", 0),
        ("min_tokens", -1),
        ("n", 0),
        ("logprobs", 21),
        ("prompt_logprobs", -1),
        ("stop", [""]),
        ("logit_bias", {5: 500.0}),
        # Wrong types and values the engine would only trip over later, deep inside a step.
        ("temperature", float("nan")),
        ("temperature", "0.5"),
        ("top_p", "1"),
        ("repetition_penalty", None),
        ("logprobs", True),
        ("max_tokens", True),
        ("stop", 5),
        ("stop_token_ids", 5),
        ("logit_bias", {"abc": 1.0}),
        ("logit_bias", [1, 2]),
        ("seed", 2**70),
        ("penalty_window", "8"),
    ],
)
def test_bad_sampling_params_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_min_tokens_above_max_tokens_is_rejected():
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingParams(min_tokens=10, max_tokens=5)


def test_prompt_longer_than_the_context_is_rejected_before_work(llama):
    _, _, llm = llama
    with pytest.raises(ValueError, match="prompt"):
        llm.generate([{"prompt_token_ids": [5] * 600}], _greedy())
    with pytest.raises(ValueError, match="prompt_token_ids"):
        llm.generate([{"prompt_token_ids": [5, 100000]}], _greedy())
    with pytest.raises(ValueError, match="stop_token_ids"):
        llm.generate("hello", _greedy(stop_token_ids=[99999]))
    assert not llm.llm_engine.has_unfinished_requests()


@pytest.mark.parametrize(
    "prompt",
    [
        None,
        5,
        ["hello", None],
        {"text": "hello"},
        {"prompt_token_ids": "abc"},
        {"prompt_token_ids": [1.5]},
        [1, None],
    ],
)
def test_malformed_prompts_are_rejected_and_the_llm_stays_usable(llama, prompt):
    _, _, llm = llama
    with pytest.raises((TypeError, ValueError), match="prompt"):
        llm.generate(prompt, _greedy(max_tokens=2))
    assert not llm.llm_engine.has_unfinished_requests()
    assert len(llm.generate("hello", _greedy(max_tokens=2))[0].outputs[0].token_ids) == 2


@pytest.mark.parametrize("params", [{"max_tokens": 3}, "greedy", [None]])
def test_sampling_params_of_the_wrong_type_are_rejected(llama, params):
    _, _, llm = llama
    with pytest.raises(TypeError, match="sampling_params"):
        llm.generate(["hello"], params)
    assert not llm.llm_engine.has_unfinished_requests()


def test_prompt_forms_agree(llama):
    folder, model, llm = llama
    tokenizer = load_hf_tokenizer(folder)
    text = "Once upon a time"
    ids = tokenizer.encode(text)
    assert ids[0] == tokenizer.bos_token_id  # the tokenizer.json post-processor adds BOS
    by_text = llm.generate(text, _greedy())[0]
    by_ids = llm.generate([{"prompt_token_ids": ids}], _greedy())[0]
    by_list = llm.generate([ids], _greedy())[0]
    assert by_text.prompt_token_ids == ids
    assert by_text.outputs[0].token_ids == by_ids.outputs[0].token_ids == by_list.outputs[0].token_ids
    ref, _ = greedy(model, ids, 24, ignore_eos=True)
    assert by_text.outputs[0].token_ids == ref
    # The text is what the tokenizers library decodes the tokens to.
    assert by_text.outputs[0].text == tokenizer.backend.decode(ref, skip_special_tokens=True)


def test_stop_strings_across_token_boundaries(llama):
    folder, _, llm = llama
    tokenizer = load_hf_tokenizer(folder)
    full = llm.generate("The quick brown", _greedy(max_tokens=32))[0].outputs[0]
    # A stop string made of the end of one token's text and the start of the next one's.
    pieces = [tokenizer.decode([t]) for t in full.token_ids]
    k = next(i for i in range(3, len(pieces) - 1) if pieces[i] and pieces[i + 1])
    prefix = "".join(pieces[:k])
    stop = pieces[k][-1] + pieces[k + 1][:1]
    cut = full.text.find(stop)
    assert cut != -1 and cut >= 0
    out = llm.generate("The quick brown", _greedy(max_tokens=32, stop=[stop]))[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == full.text[:cut]
    assert len(prefix) >= cut
    kept = llm.generate(
        "The quick brown", _greedy(max_tokens=32, stop=[stop], include_stop_str_in_output=True)
    )[0]
    assert kept.outputs[0].text == full.text[: cut + len(stop)]


def test_stop_token_ids_and_eos(llama):
    _, _, llm = llama
    full = llm.generate("Lily", _greedy(max_tokens=16))[0].outputs[0]
    target = full.token_ids[5]
    first = full.token_ids.index(target)
    out = llm.generate("Lily", _greedy(max_tokens=16, stop_token_ids=[target]))[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == target
    assert out.token_ids == full.token_ids[: first + 1]
    # min_tokens holds the stop token back until enough tokens exist.
    held = llm.generate(
        "Lily", SamplingParams(temperature=0.0, max_tokens=16, min_tokens=16, stop_token_ids=[target])
    )
    assert len(held[0].outputs[0].token_ids) == 16 and target not in held[0].outputs[0].token_ids


def test_n_choices_and_list_of_params(llama):
    _, _, llm = llama
    outs = llm.generate(
        ["Once", "The dog"],
        [_greedy(max_tokens=5), SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=6)],
    )
    assert len(outs[0].outputs) == 1 and len(outs[0].outputs[0].token_ids) == 5
    assert [o.index for o in outs[1].outputs] == [0, 1, 2]
    assert all(len(o.token_ids) <= 6 and o.finish_reason in ("stop", "length") for o in outs[1].outputs)
    with pytest.raises(ValueError, match="sampling_params"):
        llm.generate(["a", "b"], [_greedy(), _greedy(), _greedy()])


def test_chat_renders_the_template_like_transformers(llama):
    folder, _, llm = llama
    from transformers import AutoTokenizer

    messages = [{"role": "user", "content": "hi there"}]
    hf = AutoTokenizer.from_pretrained(str(folder))
    text = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    expected_ids = hf(text, add_special_tokens=False)["input_ids"]
    out = llm.chat(messages, _greedy(max_tokens=4))[0]
    assert out.prompt_token_ids == list(expected_ids)
    assert len(out.outputs[0].token_ids) == 4


GEMMA_TEMPLATE = (
    Path(__file__).parents[1] / "src/ladle/models_hub/data/gemma3_chat_template.jinja"
).read_text()
ROLE_TEMPLATE = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}{# knows developer #}"


def test_developer_messages_are_system_messages_where_the_template_has_no_developer_role(llama):
    """OpenAI's newer clients send instructions as role "developer". Gemma's template has no such role (it
    raises "roles must alternate"), so there it renders as "system" would in transformers; a template that
    names the role keeps it."""
    folder, _, llm = llama
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(folder))
    as_system = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "hi"}]
    expected = hf.apply_chat_template(
        as_system, chat_template=GEMMA_TEMPLATE, add_generation_prompt=True, tokenize=False
    )
    as_developer = [{**as_system[0], "role": "developer"}, as_system[1]]
    out = llm.chat(as_developer, _greedy(max_tokens=2), chat_template=GEMMA_TEMPLATE)[0]
    assert out.prompt == expected and "Answer in French." in expected
    kept = llm.chat(as_developer, _greedy(max_tokens=2), chat_template=ROLE_TEMPLATE)[0]
    assert kept.prompt == hf.apply_chat_template(
        as_developer, chat_template=ROLE_TEMPLATE, add_generation_prompt=True, tokenize=False
    )
    assert kept.prompt.startswith("[developer] Answer in French.")


@pytest.mark.parametrize("template", [None, GEMMA_TEMPLATE], ids=["folder-template", "gemma-template"])
@pytest.mark.parametrize(
    "begun", ["Sure, the answer is", "Sure, the answer is "], ids=["plain", "trailing-space"]
)
def test_continue_final_message_ends_the_prompt_inside_the_last_message_like_transformers(
    llama, template, begun
):
    """vLLM's LLM.chat(continue_final_message=True): the prompt stops right after the last message's content
    (no end-of-turn, no generation prompt), so the model writes on in it; transformers' rendering of the
    same option is the reference, Gemma's template (which trims contents) included."""
    folder, model, llm = llama
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(folder))
    messages = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": begun}]
    expected = hf.apply_chat_template(
        messages, chat_template=template, continue_final_message=True, tokenize=False
    )
    out = llm.chat(
        messages, _greedy(max_tokens=3), chat_template=template, add_generation_prompt=False,
        continue_final_message=True,
    )[0]  # fmt: skip
    assert out.prompt == expected and expected.rstrip().endswith("the answer is")
    assert out.prompt_token_ids == list(hf(expected, add_special_tokens=False)["input_ids"])
    expected_tokens, _ = greedy(model, out.prompt_token_ids, 3, ignore_eos=True)
    assert out.outputs[0].token_ids == expected_tokens
    with pytest.raises(ValueError, match="continue_final_message"):
        llm.chat([[]], _greedy(max_tokens=1), continue_final_message=True)  # one empty conversation


def test_chat_joins_text_content_parts_with_a_newline_and_rejects_malformed_messages(llama):
    """As vLLM: a message's text parts are joined with "\n", so two parts render as the one string
    "part1\npart2" does (the expected prompt comes from transformers' own template rendering)."""
    folder, model, llm = llama
    from transformers import AutoTokenizer

    joined = [{"role": "user", "content": "hi there\nhow are you"}]
    hf = AutoTokenizer.from_pretrained(str(folder))
    expected_text = hf.apply_chat_template(joined, add_generation_prompt=True, tokenize=False)
    parts = [{"type": "text", "text": "hi there"}, {"type": "text", "text": "how are you"}]
    by_parts = llm.chat([{"role": "user", "content": parts}], _greedy(max_tokens=2))[0]
    plain = llm.chat(joined, _greedy(max_tokens=2))[0]
    assert by_parts.prompt == expected_text == plain.prompt
    assert by_parts.prompt_token_ids == list(hf(expected_text, add_special_tokens=False)["input_ids"])
    expected_tokens, _ = greedy(model, by_parts.prompt_token_ids, 2, ignore_eos=True)
    assert by_parts.outputs[0].token_ids == expected_tokens == plain.outputs[0].token_ids
    image = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "x"}}]
    with pytest.raises(ValueError, match=r"messages\[0\]\.content: part 1 is of type 'image_url'"):
        llm.chat([{"role": "user", "content": image}], _greedy(max_tokens=2))
    for bad in ("hi", ["hi"], [{"content": "hi"}], [{"role": "user", "content": [{"type": "image_url"}]}]):
        with pytest.raises((TypeError, ValueError), match="messages"):
            llm.chat(bad, _greedy(max_tokens=2))
    assert not llm.llm_engine.has_unfinished_requests()


def test_abort_frees_blocks_at_once(llama):
    _, _, llm = llama
    engine = llm.llm_engine
    engine.add_request("a", "Once upon a time", _greedy(max_tokens=200))
    engine.add_request("b", "The quick brown fox", _greedy(max_tokens=200))
    for _ in range(3):
        engine.step()
    assert engine.kv.num_free_blocks < engine.kv.num_blocks
    engine.abort_request(["a", "b"])
    assert engine.kv.num_free_blocks == engine.kv.num_blocks
    assert not engine.has_unfinished_requests()


def test_incremental_detokenizer_handles_split_utf8(llama):
    folder, _, _ = llama
    tokenizer = load_hf_tokenizer(folder)
    text = " Größe 東京 🙂🚀 naïve"
    ids = tokenizer.encode(text, add_special_tokens=False)
    # The byte-level vocabulary splits at least one character's bytes across tokens.
    assert any("\ufffd" in tokenizer.decode([t]) for t in ids)
    detok = IncrementalDetokenizer(tokenizer, [tokenizer.bos_token_id])
    seen = []
    for t in ids:
        detok.add_token(t)
        seen.append(detok.text)
    detok.flush()
    assert detok.text == tokenizer.backend.decode(ids)
    assert all("\ufffd" not in s for s in seen)


def test_seeded_sampling_does_not_depend_on_the_batch(llama):
    _, _, llm = llama
    seeded = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, seed=1234, max_tokens=20, ignore_eos=True)
    alone = llm.generate("Once upon a time", seeded)[0].outputs[0].token_ids
    others = [
        SamplingParams(temperature=1.0, max_tokens=20, ignore_eos=True),
        SamplingParams(temperature=0.7, seed=5, max_tokens=9),
    ]
    batch = llm.generate(["The dog", "Once upon a time", "Lily and Tom"], [others[0], seeded, others[1]])
    assert batch[1].outputs[0].token_ids == alone
    again = llm.generate(
        ["Lily and Tom", "x", "y", "Once upon a time"], [others[1], others[0], others[0], seeded]
    )
    assert again[3].outputs[0].token_ids == alone
    different = llm.generate("Once upon a time", seeded.clone(seed=4321))[0].outputs[0].token_ids
    assert different != alone


def test_model_given_as_a_path_object_or_with_vllm_flags(tiny_model_factory):
    """vLLM scripts pass pathlib paths and trust_remote_code=True; a non-string model names `model`."""
    from transformers import AutoTokenizer

    folder, model = tiny_model_factory("llama")
    llm = LLM(model=folder, trust_remote_code=True)  # a pathlib.Path
    ids = AutoTokenizer.from_pretrained(folder)("Once upon a time").input_ids
    want, _ = greedy(model, ids, 4, ignore_eos=True)
    out = llm.generate(
        {"prompt_token_ids": ids}, SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    )
    assert out[0].outputs[0].token_ids == want
    with pytest.raises(TypeError, match="model"):
        LLM(model=None)


def test_detokenize_false_gives_token_ids_only(llama):
    """vLLM's SamplingParams.detokenize: the same tokens, no text; stop strings need the text."""
    _, _, llm = llama
    with_text = llm.generate("Once upon a time", _greedy(max_tokens=8))[0].outputs[0]
    ids_only = llm.generate("Once upon a time", _greedy(max_tokens=8, detokenize=False))[0].outputs[0]
    assert with_text.text and ids_only.text == ""
    assert ids_only.token_ids == with_text.token_ids
    with pytest.raises(ValueError, match="SamplingParams.stop"):
        SamplingParams(stop=["."], detokenize=False)
