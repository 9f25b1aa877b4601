"""The CLI's and model manager's small pure pieces: keep_alive durations, LADLE_HOST, how numbers and times
print, and Ollama templates used as chat templates (expected values from Ollama's documented behaviour)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from ladle.cli.client import ClientError, parse_host
from ladle.cli.format import human_bytes, human_time
from ladle.loader.chat_template import render_chat_template
from ladle.models_hub.keep_alive import parse_keep_alive
from ladle.models_hub.model_options import go_template_to_jinja, sampling_defaults, template_as_jinja


@pytest.mark.parametrize(
    "value,seconds",
    [
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("300ms", 0.3),
        ("1.5s", 1.5),
        ("0", 0.0),
        (0, 0.0),
        (90, 90.0),
        ("120", 120.0),
        (-1, None),
        ("-1m", None),
        ("-1", None),
        (None, 42.0),  # the default
    ],
)
def test_keep_alive_durations(value, seconds) -> None:
    assert parse_keep_alive(value, default=42.0) == seconds


@pytest.mark.parametrize("value", ["soon", "5 minutes", "", "m5", "1d", True, float("nan")])
def test_bad_keep_alive_names_the_field(value) -> None:
    with pytest.raises(ValueError, match="keep_alive"):
        parse_keep_alive(value)


@pytest.mark.parametrize(
    "value,expected",
    [
        (None, ("127.0.0.1", 11434, "http")),
        ("", ("127.0.0.1", 11434, "http")),
        ("127.0.0.1:8080", ("127.0.0.1", 8080, "http")),
        (":9000", ("127.0.0.1", 9000, "http")),
        ("0.0.0.0", ("127.0.0.1", 11434, "http")),
        ("https://example.com:443/", ("example.com", 443, "https")),
        ("[::1]:5000", ("::1", 5000, "http")),
    ],
)
def test_ladle_host(value, expected) -> None:
    assert parse_host(value) == expected


def test_bad_ladle_host_is_a_one_line_error() -> None:
    with pytest.raises(ClientError, match="not a port number"):
        parse_host("localhost:http")


def test_a_bad_ladle_host_or_port_is_one_line_for_serve_and_no_bother_elsewhere(monkeypatch, capsys) -> None:
    """LADLE_HOST=foo:bar made every command (`ladle --version`, `ladle list`) print a traceback, as the serve
    parser read it when built; `ladle serve --port 99999` said it was running on that port."""
    from ladle.cli.main import main

    monkeypatch.setenv("LADLE_HOST", "foo:bar")
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert main(["serve"]) == 1
    assert capsys.readouterr().err.strip() == "Error: LADLE_HOST: 'foo:bar' is not host:port"
    monkeypatch.setenv("LADLE_HOST", "127.0.0.1:99999")
    assert main(["serve"]) == 1
    assert "LADLE_HOST" in capsys.readouterr().err
    monkeypatch.delenv("LADLE_HOST")
    with pytest.raises(SystemExit) as done:
        main(["serve", "--port", "99999"])
    assert done.value.code == 2
    assert "argument --port: 99999 is not a port (1-65535)" in capsys.readouterr().err


def test_sizes_and_times_print_like_ollama() -> None:
    assert [human_bytes(n) for n in (512, 1_185_536, 38_000_000, 2_019_393_189, 4_000_000_000)] == [
        "512 B",
        "1.2 MB",
        "38 MB",
        "2.0 GB",
        "4 GB",
    ]
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert human_time(now - timedelta(seconds=30), now) == "30 seconds ago"
    assert human_time(now - timedelta(days=21), now) == "3 weeks ago"
    assert human_time(now + timedelta(minutes=4, seconds=59), now) == "4 minutes from now"
    assert human_time("2318-01-01T00:00:00Z", now) == "Forever"
    assert (
        human_time((now - timedelta(hours=1)).isoformat().replace("+00:00", "Z"), now) == "About an hour ago"
    )


def test_manifest_parameters_become_sampling_defaults() -> None:
    params = {"temperature": 0.2, "stop": ["</s>", "User:"], "num_predict": 64, "repeat_penalty": 1.1}
    params |= {"num_ctx": 4096, "seed": -1, "repeat_last_n": 32, "top_k": 20}
    assert sampling_defaults(params) == {
        "temperature": 0.2,
        "stop": ["</s>", "User:"],
        "max_tokens": 64,
        "repetition_penalty": 1.1,
        "penalty_window": 32,
        "top_k": 20,
    }


def test_a_legacy_ollama_template_renders_turn_by_turn() -> None:
    template = (
        "{{ if .System }}<|system|>\n{{ .System }}</s>\n{{ end }}<|user|>\n{{ .Prompt }}</s>\n<|assistant|>\n"
        "{{ .Response }}</s>\n"
    )
    jinja = go_template_to_jinja(template)
    assert jinja is not None
    messages = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    assert render_chat_template(jinja, messages, bos_token="<s>") == (
        "<s><|system|>\nBe kind.</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello!</s>\n"
        "<|user|>\nBye</s>\n<|assistant|>\n"
    )
    # the default TinyLlama-style template without a system prompt, and Ollama's `-` trimming
    assert (
        render_chat_template(go_template_to_jinja("{{- .Prompt -}}\n\n {{ .Response }}"), messages[1:2])
        == "Hi"
    )


def test_templates_beyond_the_simple_form_are_left_alone() -> None:
    assert go_template_to_jinja("{{ range .Messages }}{{ .Content }}{{ end }}") is None
    assert go_template_to_jinja("{{ if .System }}unclosed") is None
    jinja = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert template_as_jinja(jinja) == jinja  # already a chat template (the demo model stores one)
