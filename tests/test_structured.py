"""Constrained decoding (structured_outputs): every output obeys its constraint, the grammar changes the
choice only where the model's favourite token is not allowed, logprobs stay those of the raw model, and
running out of tokens is reported as "length", never as a finished document."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch
import xgrammar as xgr

from ladle import LLM, SamplingParams
from ladle.engine.sampler import Sampler, SamplingRow
from ladle.sampling_params import StructuredOutputsParams
from ladle.structured.bitmask import allowed_token_ids
from ladle.structured.compiler import build_tokenizer_info, detect_vocab_type
from structured_schemas import SCHEMAS

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def llama(tiny_model_factory):
    folder, model = tiny_model_factory("llama")
    return folder, model, LLM(str(folder))


def _params(so: StructuredOutputsParams, **kw) -> SamplingParams:
    return SamplingParams(**{"temperature": 0.0, "max_tokens": 160, "structured_outputs": so, **kw})


# -- parameters ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"json": {"type": "object"}, "regex": "a+"},
        {"choice": []},
        {"choice": ["a", 3]},
        {"json": "{not json"},
    ],
)
def test_structured_outputs_needs_exactly_one_valid_field(fields):
    with pytest.raises(ValueError, match="structured_outputs"):
        StructuredOutputsParams(**fields)


def test_structured_outputs_from_a_dict_and_unknown_fields():
    params = SamplingParams(structured_outputs={"regex": "[0-9]+"})
    assert params.structured_outputs.regex == "[0-9]+"
    with pytest.raises(ValueError, match="structured_outputs"):
        SamplingParams(structured_outputs={"regexp": "x"})


@pytest.mark.parametrize(
    "so,field",
    [
        (StructuredOutputsParams(regex="(unclosed"), "structured_outputs.regex"),
        (StructuredOutputsParams(grammar="root ::= undefined_rule"), "structured_outputs.grammar"),
        (
            StructuredOutputsParams(json={"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}),
            "structured_outputs.json",
        ),
    ],
)
def test_bad_constraints_fail_at_admission_naming_the_field(llama, so, field):
    _, _, llm = llama
    with pytest.raises(ValueError, match=re.escape(field)):
        llm.generate(PROMPT, _params(so))
    assert not llm.llm_engine.has_unfinished_requests()


# -- tokenizer info ------------------------------------------------------------------------------------


def test_tokenizer_info_matches_xgrammars_hugging_face_reading(llama):
    from transformers import AutoTokenizer

    folder, _, llm = llama
    tokenizer = llm.get_tokenizer()
    vocab_size = llm.llm_engine.arch.vocab_size
    ours = build_tokenizer_info(tokenizer, vocab_size, tokenizer.eos_token_ids)
    ref = xgr.TokenizerInfo.from_huggingface(AutoTokenizer.from_pretrained(folder), vocab_size=vocab_size)
    assert ours.vocab_type == ref.vocab_type == xgr.VocabType.BYTE_LEVEL
    assert ours.add_prefix_space == ref.add_prefix_space
    assert ours.stop_token_ids == [tokenizer.backend.token_to_id("</s>")]
    special = tokenizer.special_token_ids
    for i, (a, b) in enumerate(zip(ours.decoded_vocab, ref.decoded_vocab)):
        assert a == (b"" if i in special else b)


def test_vocab_type_detection_byte_fallback_and_raw():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    pieces = {
        "<unk>": 0,
        "<s>": 1,
        "</s>": 2,
        **{f"<0x{b:02X}>": 3 + b for b in range(256)},
        "▁a": 259,
        "b": 260,
    }
    bpe = Tokenizer(models.BPE(vocab=pieces, merges=[], byte_fallback=True, unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    word = Tokenizer(models.WordLevel(vocab={"<unk>": 0, "hello": 1, "world": 2}, unk_token="<unk>"))

    class T:
        def __init__(self, backend):
            self.backend = backend

    assert detect_vocab_type(T(bpe))[0] == xgr.VocabType.BYTE_FALLBACK
    assert detect_vocab_type(T(word))[0] == xgr.VocabType.RAW


# -- JSON schemas ----------------------------------------------------------------------------------------


def test_every_output_validates_against_its_schema(llama):
    """20 schemas x (greedy + a seeded sample), all in one batch."""
    _, _, llm = llama
    params = []
    for schema in SCHEMAS:
        so = StructuredOutputsParams(json=schema)
        params += [
            _params(so),
            _params(so, temperature=0.8, top_p=0.95, seed=7),
        ]
    outs = llm.generate([PROMPT] * len(params), [p.clone(max_tokens=512) for p in params])
    for i, out in enumerate(outs):
        schema = SCHEMAS[i // 2]
        c = out.outputs[0]
        assert c.finish_reason == "stop", (schema, c.text)
        jsonschema.validate(json.loads(c.text), schema)
        assert c.token_ids[-1] in llm.llm_engine.arch.eos_token_ids


def test_json_object_and_compact_json(llama):
    _, _, llm = llama
    so = StructuredOutputsParams(
        json={"type": "object", "properties": {"k": {"enum": [1, 2]}}, "required": ["k"]},
        disable_any_whitespace=True,
    )
    text = llm.generate(PROMPT, _params(so))[0].outputs[0].text
    assert json.loads(text)["k"] in (1, 2) and not re.search(r"\s", text.replace(": ", "").replace(", ", ""))
    outs = llm.generate(
        [PROMPT] * 2,
        [
            _params(StructuredOutputsParams(json_object=True), temperature=1.0, seed=s, max_tokens=150)
            for s in range(2)
        ],
    )
    for out in outs:
        c = out.outputs[0]
        if c.finish_reason == "stop":
            assert isinstance(json.loads(c.text), dict)
        else:
            assert c.finish_reason == "length"


# -- regex, choice, grammar ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        r"\d{3}-[a-z]{2,4}",
        r"(cat|dog|fish) #[0-9]{1,2}",
        r"[A-Z][a-z]{1,5}( [A-Z][a-z]{1,5})?",
        r"0x[0-9a-f]{4}",
        r"(ab)+c{0,2}!",
    ],
)
def test_regex_outputs_match(llama, pattern):
    _, _, llm = llama
    so = StructuredOutputsParams(regex=pattern)
    outs = llm.generate(
        [PROMPT] * 3,
        [
            _params(so, max_tokens=60),
            _params(so, temperature=1.0, seed=3, max_tokens=60),
            _params(so, temperature=1.0, seed=4, max_tokens=60),
        ],
    )
    for out in outs:
        c = out.outputs[0]
        if c.finish_reason == "stop":
            assert re.fullmatch(pattern, c.text), c.text
        else:  # only an unbounded repetition may run out of tokens
            assert c.finish_reason == "length" and "+" in pattern


def test_choice_outputs_are_one_of_the_choices(llama):
    _, _, llm = llama
    choices = ["yes", "no", "maybe so", "naïve café", 'say "hi"\n']
    so = StructuredOutputsParams(choice=choices)
    params = [_params(so)] + [_params(so, temperature=1.5, seed=s) for s in range(12)]
    texts = [o.outputs[0].text for o in llm.generate([PROMPT] * len(params), params)]
    assert all(t in choices for t in texts), texts
    assert len(set(texts)) > 1  # sampling reaches more than one choice


def test_min_tokens_does_not_outlast_a_finished_grammar(llama):
    _, _, llm = llama
    so = StructuredOutputsParams(choice=["yes", "no"])
    for out in llm.generate(
        [PROMPT] * 2, [_params(so, min_tokens=8), _params(so, min_tokens=8, temperature=1.0, seed=1)]
    ):
        assert out.outputs[0].text in ("yes", "no") and out.outputs[0].finish_reason == "stop"


def test_ebnf_grammar(llama):
    _, _, llm = llama
    grammar = 'root ::= "(" expr ")"\nexpr ::= num (("+" | "*") num){0,3}\nnum ::= [1-9] [0-9]?'
    params = [_params(StructuredOutputsParams(grammar=grammar), temperature=1.0, seed=s) for s in range(4)]
    for out in llm.generate([PROMPT] * 4, params):
        assert re.fullmatch(r"\([1-9][0-9]?([+*][1-9][0-9]?){0,3}\)", out.outputs[0].text)


# -- the grammar only removes tokens ---------------------------------------------------------------------


def _reference_matcher(folder, so: StructuredOutputsParams, vocab_size: int) -> xgr.GrammarMatcher:
    """A matcher built only from xgrammar's own Hugging Face path: independent of ladle's tokenizer info."""
    from transformers import AutoTokenizer

    info = xgr.TokenizerInfo.from_huggingface(AutoTokenizer.from_pretrained(folder), vocab_size=vocab_size)
    compiler = xgr.GrammarCompiler(info)
    if so.json is not None:
        return xgr.GrammarMatcher(
            compiler.compile_json_schema(json.dumps(so.json), any_whitespace=True, max_whitespace_cnt=12)
        )
    return xgr.GrammarMatcher(compiler.compile_regex(so.regex))


@pytest.mark.parametrize(
    "so",
    [
        StructuredOutputsParams(
            json={
                "type": "object",
                "properties": {"text": {"type": "string", "maxLength": 30}, "n": {"type": "integer"}},
                "required": ["text", "n"],
            }
        ),
        StructuredOutputsParams(regex=r"[a-z ,.]{5,40}"),
    ],
)
def test_greedy_takes_the_models_argmax_whenever_the_grammar_allows_it(llama, so):
    """Token by token against a transformers forward: the constrained greedy choice is the raw argmax when
    the grammar allows it, else the best allowed token; reported logprobs are the raw model's."""
    folder, model, llm = llama
    vocab = llm.llm_engine.arch.vocab_size
    out = llm.generate(PROMPT, _params(so, max_tokens=40, logprobs=1))[0]
    prompt_ids, chosen = out.prompt_token_ids, out.outputs[0].token_ids
    matcher = _reference_matcher(folder, so, vocab)
    special = set(llm.get_tokenizer().special_token_ids) - set(llm.llm_engine.arch.eos_token_ids)
    bitmask = xgr.allocate_token_bitmask(1, vocab)
    agreed = overruled = 0
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + chosen])).logits[0, len(prompt_ids) - 1 :].float()
    for i, token in enumerate(chosen):
        row = logits[i]
        matcher.fill_next_token_bitmask(bitmask)
        allowed = set(allowed_token_ids(bitmask, vocab).tolist()) - special
        best_raw = int(row.argmax())
        if best_raw in allowed:
            assert token == best_raw, f"step {i}: the argmax {best_raw} was allowed but {token} was chosen"
            agreed += 1
        else:
            masked = torch.full_like(row, float("-inf"))
            index = torch.tensor(sorted(allowed))
            masked[index] = row[index]
            assert token == int(masked.argmax()), f"step {i}"
            overruled += 1
        lp = out.outputs[0].logprobs[i][token].logprob
        assert lp == pytest.approx(float(row.log_softmax(-1)[token]), abs=1e-3)
        assert matcher.accept_token(token)
    assert agreed > 0 and overruled > 0  # both branches were exercised


def test_sampler_masks_exactly_the_disallowed_tokens():
    vocab = 100
    logits = torch.randn(3, vocab)
    bitmask = xgr.allocate_token_bitmask(1, vocab)
    bitmask.zero_()
    allowed = [3, 31, 32, 64, 99]
    for t in allowed:
        bitmask[0, t // 32] |= 1 << (t % 32) if t % 32 != 31 else -(1 << 31)
    rows = [
        SamplingRow(SamplingParams(temperature=0.0), [1], [], token_bitmask=bitmask),
        SamplingRow(SamplingParams(temperature=0.0), [1], []),
        SamplingRow(
            SamplingParams(temperature=1.0, seed=1),
            [1],
            [],
            generator=torch.Generator().manual_seed(1),
            token_bitmask=bitmask,
        ),
    ]
    processed = Sampler().processed_logprobs(logits, rows)
    best_allowed = allowed[int(logits[0, allowed].argmax())]
    assert processed[0].isfinite().nonzero().flatten().tolist() == [best_allowed]
    assert processed[1].isfinite().nonzero().flatten().tolist() == [int(logits[1].argmax())]
    assert processed[2].isfinite().nonzero().flatten().tolist() == allowed
    out = Sampler()(logits, rows)
    assert out.token_ids[0] == best_allowed and out.token_ids[2] in allowed


# -- running out of room ---------------------------------------------------------------------------------


def test_running_out_of_tokens_is_length_not_a_finished_document(llama):
    _, _, llm = llama
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string", "minLength": 20}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    }
    outs = llm.generate(
        [PROMPT] * 3,
        [
            _params(StructuredOutputsParams(json=schema), max_tokens=6, temperature=t, seed=1)
            for t in (0.0, 1.0, 0.5)
        ],
    )
    for out in outs:
        c = out.outputs[0]
        assert c.finish_reason == "length" and len(c.token_ids) == 6
        with pytest.raises(json.JSONDecodeError):
            json.loads(c.text)


def test_mixed_batch_leaves_unconstrained_requests_alone(llama):
    _, _, llm = llama
    plain = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    alone = llm.generate(PROMPT, plain)[0].outputs[0].token_ids
    so = StructuredOutputsParams(regex=r"[0-9]{4,8}")
    outs = llm.generate(
        [PROMPT, PROMPT, "The quick brown fox"],
        [plain, _params(so, n=2, temperature=1.0, seed=5), _params(so)],
    )
    assert outs[0].outputs[0].token_ids == alone
    for out in outs[1:]:
        for c in out.outputs:
            assert re.fullmatch(r"[0-9]{4,8}", c.text) and c.finish_reason == "stop"


def test_compiled_grammars_are_cached(llama):
    _, _, llm = llama
    so = StructuredOutputsParams(
        json={"type": "object", "properties": {"q": {"enum": [7]}}, "required": ["q"]}
    )
    llm.generate(PROMPT, _params(so))
    cache = llm.llm_engine.structured.cache
    hits = cache.hits
    llm.generate(PROMPT, _params(StructuredOutputsParams(json=json.dumps(so.json))))
    assert cache.hits == hits + 1


def test_masks_filled_synchronously_give_the_same_outputs(llama):
    _, _, llm = llama
    so = StructuredOutputsParams(json=SCHEMAS[13], disable_any_whitespace=True)
    params = [_params(so, temperature=1.0, seed=s) for s in range(3)]
    overlapped = [o.outputs[0].token_ids for o in llm.generate([PROMPT] * 3, params)]
    llm.llm_engine.structured.overlap = False
    try:
        synchronous = [o.outputs[0].token_ids for o in llm.generate([PROMPT] * 3, params)]
    finally:
        llm.llm_engine.structured.overlap = True
    assert overlapped == synchronous
