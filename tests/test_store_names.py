"""Model names: Ollama's forms, Hugging Face forms, the `org/repo` rule, and rejection of unsafe names."""

from __future__ import annotations

import pytest

from ladle.store import InvalidModelName, ModelName, parse_model_name


@pytest.mark.parametrize(
    ("text", "full", "kind", "shown"),
    [
        ("llama3.2", "registry.ollama.ai/library/llama3.2:latest", "registry", "llama3.2:latest"),
        ("gemma3:270m", "registry.ollama.ai/library/gemma3:270m", "registry", "gemma3:270m"),
        ("library/qwen3", "registry.ollama.ai/library/qwen3:latest", "registry", "qwen3:latest"),
        ("jmorgan/mymodel:v1", "registry.ollama.ai/jmorgan/mymodel:v1", "registry", "jmorgan/mymodel:v1"),
        ("example.com/team/m", "example.com/team/m:latest", "registry", "example.com/team/m:latest"),
        ("localhost:5000/team/m:7b", "localhost:5000/team/m:7b", "registry", "localhost:5000/team/m:7b"),
        ("https://registry.ollama.ai/library/x:1", "registry.ollama.ai/library/x:1", "registry", "x:1"),
        ("hf.co/bartowski/Llama-3.2-1B-GGUF", "hf.co/bartowski/Llama-3.2-1B-GGUF:latest", "hf-gguf", None),
        ("hf.co/org/repo:q8_0", "hf.co/org/repo:q8_0", "hf-gguf", "hf.co/org/repo:q8_0"),
        ("HF.CO/org/repo", "hf.co/org/repo:latest", "hf-gguf", None),
        ("Qwen/Qwen3-0.6B", "huggingface.co/Qwen/Qwen3-0.6B:main", "hf-repo", "Qwen/Qwen3-0.6B"),
        (
            "huggingface.co/Qwen/Qwen3-0.6B",
            "huggingface.co/Qwen/Qwen3-0.6B:main",
            "hf-repo",
            "Qwen/Qwen3-0.6B",
        ),
        ("huggingface.co/org/r:v2", "huggingface.co/org/r:v2", "hf-repo", "huggingface.co/org/r:v2"),
    ],
)
def test_forms(text: str, full: str, kind: str, shown: str | None) -> None:
    name = parse_model_name(text)
    assert name.full == full
    assert name.kind == kind
    assert str(name) == (shown or full)
    # The displayed and the full form both read back as the same name.
    assert parse_model_name(name.full) == name
    assert parse_model_name(str(name)) == name


def test_bare_org_repo_is_ambiguous_and_has_a_registry_reading() -> None:
    name = parse_model_name("me/thing")
    assert name.ambiguous and name.kind == "hf-repo"
    assert name.as_registry() == ModelName("registry.ollama.ai", "me", "thing", "latest")
    # A tag, or Ollama's own namespace, makes it a registry name outright.
    assert not parse_model_name("me/thing:latest").ambiguous
    assert parse_model_name("library/thing").kind == "registry"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("../x", "file path"),
        ("./model", "file path"),
        ("/etc/passwd", "file path"),
        ("~/model.gguf", "file path"),
        ("a/../b", "file path"),
        ("ns/..:latest", "'..' is not allowed"),
        ("a..b", "'..' is not allowed"),
        ("x" * 300, "too long (300 characters"),
        ("a/" + "b" * 129, "too long (129 characters"),
        ("llama 3", "character ' '"),
        ("llama3@sha256-abc", "character '@'"),
        ("mo$del", "character '$'"),
        ("x:", "empty tag"),
        ("a:b:c", "tag"),
        ("a//b", "empty part"),
        ("h.com/a/b/c", "at most host/namespace/name:tag"),
        ("-x", "must start with"),
        ("my.ns/model:1", "namespace"),
        ("bad_host!/a/b", "character '!'"),
        ("a\\b", "file path"),
    ],
)
def test_bad_names_are_rejected_with_one_line(text: str, fragment: str) -> None:
    with pytest.raises(InvalidModelName) as info:
        parse_model_name(text)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message
    assert isinstance(info.value, ValueError)


def test_not_a_string() -> None:
    with pytest.raises(InvalidModelName):
        parse_model_name(None)  # type: ignore[arg-type]
