"""Modelfile parsing: Ollama's commands, quoting rules (bare, "quoted", triple quoted) and errors."""

from __future__ import annotations

import pytest

from ladle.store import ModelfileError, format_modelfile, parse_modelfile

FULL = '''# A pirate
FROM llama3.2
PARAMETER temperature 0.7
PARAMETER num_ctx 4096
PARAMETER stop <|im_end|>
PARAMETER stop """User:"""
parameter use_mmap false
TEMPLATE """{{ if .System }}<|system|>{{ .System }}{{ end }}
<|user|>{{ .Prompt }}"""
SYSTEM "You are
a pirate."
MESSAGE user Where be the treasure?
MESSAGE assistant "Arr, under the palm."
LICENSE MIT
LICENSE """Second
licence"""
'''


def test_full_modelfile() -> None:
    mf = parse_modelfile(FULL)
    assert mf.from_ == "llama3.2"
    assert mf.parameters == {
        "temperature": 0.7,
        "num_ctx": 4096,
        "stop": ["<|im_end|>", "User:"],
        "use_mmap": False,
    }
    assert mf.template == "{{ if .System }}<|system|>{{ .System }}{{ end }}\n<|user|>{{ .Prompt }}"
    assert mf.system == "You are\na pirate."
    assert mf.messages == [
        {"role": "user", "content": "Where be the treasure?"},
        {"role": "assistant", "content": "Arr, under the palm."},
    ]
    assert mf.licenses == ["MIT", "Second\nlicence"]
    assert [c.line for c in mf.commands][:3] == [2, 3, 4]


def test_quoting_rules() -> None:
    mf = parse_modelfile(
        'FROM ./m.gguf\nSYSTEM   "  padded  "   \nTEMPLATE """a "quoted" word"""\n'
        'PARAMETER stop "say \\"hi\\""\nLICENSE a "b" c\n'
    )
    assert mf.system == "  padded  "
    assert mf.template == 'a "quoted" word'
    assert mf.parameters["stop"] == ['say \\"hi\\"']  # no escapes in Ollama's quoting
    assert mf.licenses == ['a "b" c']  # bare values keep inner quotes


def test_crlf_bom_comments_and_case() -> None:
    mf = parse_modelfile('\ufeff# top\r\nfrom base\r\n  # indented comment\r\nSystem """one\r\ntwo"""\r\n')
    assert mf.from_ == "base"
    assert mf.system == "one\ntwo"


def test_empty_system_is_allowed() -> None:
    assert parse_modelfile("FROM x\nSYSTEM\n").system == ""


def test_roundtrip_through_format_modelfile() -> None:
    mf = parse_modelfile(FULL)
    text = format_modelfile(
        "llama3.2",
        template=mf.template,
        system=mf.system,
        parameters=mf.parameters,
        licenses=mf.licenses,
        messages=mf.messages,
    )
    again = parse_modelfile(text)
    assert again.template == mf.template
    assert again.system == mf.system
    assert again.parameters == mf.parameters
    assert again.licenses == mf.licenses
    assert again.messages == mf.messages


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("PARAMETER temperature 1\n", "no FROM line"),
        ("", "no FROM line"),
        ("FROM x\nBOGUS thing\n", "line 2: unknown command 'BOGUS'"),
        ('FROM x\nTEMPLATE """never closed\n', "line 2: unterminated quote"),
        ('FROM x\nSYSTEM "open\n', "line 2: unterminated quote"),
        ("FROM x\nMESSAGE robot hi\n", "line 2: message role must be one of"),
        ("FROM x\nMESSAGE\n", "MESSAGE needs a role"),
        ("FROM\n", "line 1: FROM needs a value"),
        ("FROM x\nPARAMETER temperature\n", "line 2: PARAMETER needs a value"),
        ("FROM x\nPARAMETER bad-name 1\n", "invalid parameter name"),
        ("FROM x\nFROM: y\n", "unknown command"),
    ],
)
def test_parse_errors(text: str, fragment: str) -> None:
    with pytest.raises(ModelfileError) as info:
        parse_modelfile(text)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("PARAMETER nope 1", "line 2: unknown parameter 'nope'"),
        ("PARAMETER num_ctx lots", "line 2: invalid int value 'lots' for parameter num_ctx"),
        ("PARAMETER temperature hot", "invalid float value"),
        ("PARAMETER use_mmap maybe", "invalid bool value"),
    ],
)
def test_parameter_errors(line: str, fragment: str) -> None:
    mf = parse_modelfile(f"FROM x\n{line}\n")
    with pytest.raises(ModelfileError) as info:
        _ = mf.parameters
    assert fragment in str(info.value)


def test_deprecated_parameters_are_dropped() -> None:
    assert parse_modelfile("FROM x\nPARAMETER mirostat 1\nPARAMETER top_k 5\n").parameters == {"top_k": 5}


def test_adapter_parses_so_create_can_refuse_it() -> None:
    mf = parse_modelfile("FROM x\nADAPTER ./lora.gguf\n")
    assert mf.first("adapter").args == "./lora.gguf"
