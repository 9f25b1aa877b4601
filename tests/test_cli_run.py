"""`ladle run`: the interactive chat driven through a pseudo-terminal (pexpect), and one-shot answers, against a
real `ladle serve`. Answers are checked against the same conversation sent straight to /api/chat, so the
history the CLI keeps and the parameters it sets are what the server saw."""

from __future__ import annotations

import json
import re
import time

import httpx
import pexpect
import pytest

from cli_helpers import Ladle, free_port, make_env, serve

MODEL = "tiny-chat"
SYSTEM = "You are tiny."


@pytest.fixture(scope="module")
def long_context_model(tiny_model_factory, tmp_path_factory):
    """The tiny llama with room for a long answer (4096 positions), so Ctrl-C lands mid-answer."""
    import shutil

    folder, _ = tiny_model_factory("llama")
    copy = tmp_path_factory.mktemp("long-llama") / "model"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    config["max_position_embeddings"] = 4096
    (copy / "config.json").write_text(json.dumps(config))
    return copy


@pytest.fixture(scope="module")
def ladle(tmp_path_factory, long_context_model):
    env = make_env(tmp_path_factory.mktemp("run-home"), free_port())
    with serve(env):
        response = httpx.post(
            env.url + "/api/create",
            json={
                "model": MODEL,
                "from": str(long_context_model),
                "system": SYSTEM,
                "parameters": {"temperature": 0, "num_predict": 8},
                "stream": False,
            },
            timeout=60,
        )
        assert response.status_code == 200, response.text
        yield env


def api_chat(ladle: Ladle, messages: list[dict], **options) -> str:
    body = {"model": MODEL, "messages": messages, "stream": False, "options": options}
    response = httpx.post(ladle.url + "/api/chat", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["message"]["content"]


def generated_tokens(ladle: Ladle) -> float:
    text = httpx.get(ladle.url + "/metrics", timeout=10).text
    match = re.search(r'^ladle:generation_tokens_total\{model_name="tiny-chat:latest"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def spawn(ladle: Ladle, *args: str) -> pexpect.spawn:
    child = pexpect.spawn(
        ladle.command("run", MODEL, *args)[0],
        ladle.command("run", MODEL, *args)[1:],
        env=ladle.env,
        encoding="utf-8",
        codec_errors="replace",
        timeout=60,
        dimensions=(50, 2000),  # wide: no wrapping inside answers
    )
    child.expect_exact(">>> ")
    return child


def answer_of(child: pexpect.spawn, sent: str) -> str:
    """What the CLI printed between the echoed input and the next prompt."""
    child.expect_exact(">>> ")
    text = child.before.replace("\r\n", "\n")
    echoed = sent.split("\n")[-1]
    text = text[text.index(echoed) + len(echoed) :] if echoed in text else text
    return text.strip("\n")


def test_interactive_chat(ladle: Ladle) -> None:
    child = spawn(ladle)
    try:
        child.sendline("Hello there")
        first = answer_of(child, "Hello there")

        # a multi-line message between triple quotes
        child.sendline('"""')
        child.expect_exact("... ")
        child.sendline("line one")
        child.expect_exact("... ")
        child.sendline('line two"""')
        second = answer_of(child, 'line two"""')

        # The server saw the whole history: the same conversation sent directly gives the same answers.
        history = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hello there"}]
        expected_first = api_chat(ladle, history)
        assert first == expected_first.strip("\n")
        history += [
            {"role": "assistant", "content": expected_first},
            {"role": "user", "content": "line one\nline two"},
        ]
        expected_second = api_chat(ladle, history)
        assert second == expected_second.strip("\n")

        # /set parameter changes the next request
        child.sendline("/set parameter num_predict 2")
        child.expect_exact("Set parameter 'num_predict' to '2'")
        child.expect_exact(">>> ")
        child.sendline("/show parameters")
        child.expect("num_predict +2")
        child.expect_exact(">>> ")
        child.sendline("again")
        third = answer_of(child, "again")
        history += [{"role": "assistant", "content": expected_second}, {"role": "user", "content": "again"}]
        assert third == api_chat(ladle, history, num_predict=2).strip("\n")

        # Ctrl-C mid-answer: the answer stops, the chat goes on, and the server stops generating
        child.sendline("/set parameter num_predict 3000")
        child.expect_exact(">>> ")
        before = generated_tokens(ladle)
        child.sendline("Tell me a very long story")
        time.sleep(1.0)
        child.sendintr()
        child.expect_exact(">>> ", timeout=10)
        time.sleep(0.5)
        stopped_at = generated_tokens(ladle)
        time.sleep(1.0)
        assert generated_tokens(ladle) == stopped_at  # aborted on the server, not just hidden
        assert 0 < stopped_at - before < 2500

        # /save keeps the session (system, parameters, messages) as a new model; /load switches to it
        child.sendline("/set system Talk like a pirate.")
        child.expect_exact("Set system message.")
        child.expect_exact(">>> ")
        child.sendline("/save pirate")
        child.expect_exact("Created new model 'pirate'")
        child.expect_exact(">>> ")
        saved = httpx.post(ladle.url + "/api/show", json={"model": "pirate"}, timeout=30).json()
        assert saved["system"] == "Talk like a pirate."
        assert f"{'num_predict':<30} 3000" in saved["parameters"]
        assert [m["content"] for m in saved["messages"][:2]] == ["Hello there", first]
        child.sendline("/load pirate")
        child.expect_exact("Loading model 'pirate'")
        child.expect_exact(">>> ")
        child.sendline("/show system")
        child.expect_exact("Talk like a pirate.")
        child.expect_exact(">>> ")

        child.sendline("/clear")
        child.expect_exact("Cleared session context")
        child.expect_exact(">>> ")
        child.sendline("/?")
        child.expect_exact("/bye")
        child.expect_exact(">>> ")
        child.sendline("/bye")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_ctrl_d_leaves_and_unknown_commands_are_explained(ladle: Ladle) -> None:
    child = spawn(ladle)
    try:
        child.sendline("/nope")
        child.expect_exact("Unknown command '/nope'")
        child.expect_exact(">>> ")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_one_shot_with_piped_stdin_prints_only_the_answer(ladle: Ladle) -> None:
    expected = httpx.post(
        ladle.url + "/api/generate",
        json={"model": MODEL, "prompt": "Once upon a time", "stream": False},
        timeout=60,
    ).json()["response"]
    result = ladle.run("run", MODEL, input="Once upon a time")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + ("" if expected.endswith("\n") else "\n")
    assert result.stderr == ""

    verbose = ladle.run("run", MODEL, "--verbose", "Once", "upon", "a", "time")
    assert verbose.returncode == 0, verbose.stderr
    assert verbose.stdout == result.stdout
    assert re.search(r"eval count: +8 token\(s\)", verbose.stderr)
    assert "prompt eval count:" in verbose.stderr and "eval rate:" in verbose.stderr


def test_the_models_system_prompt_applies_to_both_apis(ladle: Ladle) -> None:
    """The manifest's SYSTEM is the default system prompt on /api/chat and /v1/chat/completions alike."""
    user = [{"role": "user", "content": "Who are you?"}]
    with_system = api_chat(ladle, [{"role": "system", "content": SYSTEM}, *user])
    assert api_chat(ladle, user) == with_system
    response = httpx.post(
        ladle.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": user, "temperature": 0},  # max_tokens: the model's num_predict 8
        timeout=60,
    )
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["message"]["content"] == with_system and response.json()["usage"]["completion_tokens"] == 8


def test_one_shot_format_passes_the_schema_to_the_server(ladle: Ladle) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    expected = httpx.post(
        ladle.url + "/api/generate",
        json={"model": MODEL, "prompt": "Once upon a time", "stream": False, "format": schema},
        timeout=60,
    ).json()["response"]
    assert expected.lstrip().startswith("{")  # the grammar, not the model's whim, chose this
    result = ladle.run("run", MODEL, "--format", json.dumps(schema), "Once upon a time")
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip("\n") == expected.rstrip("\n")
    bad = ladle.run("run", MODEL, "--format", "yaml please", "hi")
    assert bad.returncode != 0
    assert bad.stderr.count("\n") == 1 and "--format" in bad.stderr and "Traceback" not in bad.stderr


# Qwen3's thinking switch, in small (the same as tests/test_server_ollama.py's): a thinking model's template.
THINKING_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def test_a_thinking_model_thinks_first_unless_told_not_to(ladle: Ladle, long_context_model, tmp_path) -> None:
    """As Ollama's CLI: a model with the thinking capability thinks by default, its thinking printed between
    "Thinking..." and "...done thinking." before the answer; --think=false turns it off, --hidethinking keeps
    it off the screen. Each output is what /api/generate answers for the same think."""
    import shutil

    folder = tmp_path / "thinker"
    shutil.copytree(long_context_model, folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = THINKING_TEMPLATE  # the weights' own template: a thinking model's
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    body = {"model": "tiny-thinker", "from": str(folder), "stream": False}
    body["parameters"] = {"temperature": 0, "num_predict": 8}
    assert httpx.post(ladle.url + "/api/create", json=body, timeout=60).status_code == 200

    def api(think: bool) -> dict:
        request = {"model": "tiny-thinker", "prompt": "Lily", "stream": False, "think": think}
        return httpx.post(ladle.url + "/api/generate", json=request, timeout=60).json()

    thinking = api(True)
    assert thinking["thinking"] and thinking["response"] == ""  # the tiny model never closes its block
    result = ladle.run("run", "tiny-thinker", "Lily")
    assert result.returncode == 0, result.stderr
    newline = "" if thinking["thinking"].endswith("\n") else "\n"
    assert result.stdout == f"Thinking...\n{thinking['thinking']}{newline}...done thinking.\n\n"

    plain = api(False)["response"]
    off = ladle.run("run", "tiny-thinker", "--think=false", "Lily")
    assert off.returncode == 0 and off.stdout == plain + ("" if plain.endswith("\n") else "\n")
    hidden = ladle.run("run", "tiny-thinker", "--hidethinking", "Lily")
    assert (
        hidden.returncode == 0
        and "Thinking" not in hidden.stdout
        and thinking["thinking"] not in hidden.stdout
    )
    bad = ladle.run("run", "tiny-thinker", "--think=maybe", "Lily")
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "--think" in bad.stderr
