"""The store through the CLI and through the official `ollama` client, against a real `ladle serve` that the
CLI starts by itself (LADLE_HOME in tmp_path, LADLE_REGISTRY pointing at the loopback registry)."""

from __future__ import annotations

import hashlib
import json

import httpx
import ollama
import pytest

from cli_helpers import Ladle, assert_one_line_error, make_env, server_pids, stop_process
from registry_server import STORIES, RegistryServer

STORIES_SIZE = STORIES.stat().st_size


@pytest.fixture(scope="module")
def registry():
    with RegistryServer() as server:
        server.manifest = server.add_model("stories")
        yield server


@pytest.fixture(scope="module")
def ladle(tmp_path_factory, registry) -> Ladle:
    from cli_helpers import free_port

    home = tmp_path_factory.mktemp("ladle-home")
    env = make_env(home, free_port(), LADLE_REGISTRY=registry.url)
    yield env
    for pid in server_pids(home):  # the server `ladle` started in the background
        stop_process(pid)


@pytest.fixture(scope="module")
def pulled(ladle: Ladle) -> Ladle:
    """The first command: no server answers yet, so the CLI starts one, then pulls with progress."""
    assert server_pids(ladle.home) == []
    result = ladle.run("pull", "stories")
    assert result.returncode == 0, result.stderr
    assert "pulling manifest" in result.stderr
    assert result.stderr.rstrip().endswith("success")
    assert "verifying sha256 digest" in result.stderr
    assert result.stdout == ""
    assert len(server_pids(ladle.home)) == 1
    assert (ladle.home / "logs" / "server.log").is_file()
    return ladle


def test_pull_starts_a_background_server_and_lists_the_model(pulled: Ladle, registry) -> None:
    listing = pulled.run("list")
    assert listing.returncode == 0, listing.stderr
    header, *rows = listing.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    [row] = [r for r in rows if r.startswith("stories:latest")]
    digest = hashlib.sha256(registry.manifest).hexdigest()
    assert row.split()[1] == digest[:12]
    assert "1.2 MB" in row
    assert pulled.call("ls").stdout.splitlines()[1].split()[:2] == row.split()[:2]
    # A second CLI command talks to the same server: no new one.
    assert len(server_pids(pulled.home)) == 1


def test_show_prints_what_the_manifest_and_gguf_say(pulled: Ladle) -> None:
    summary = pulled.call("show", "stories")
    assert summary.returncode == 0, summary.stderr
    text = summary.stdout
    assert "architecture        llama" in text
    assert "context length      512" in text
    assert "embedding length    64" in text
    assert "temperature    0.5" in text
    # The weights' size once loaded: stories260K is all F32, kept as stored (1,171,200 bytes of tensors).
    assert "memory              1.2 MB (weights once loaded)" in text
    shown = httpx.post(pulled.url + "/api/show", json={"model": "stories"}).json()
    assert shown["memory_bytes"] == 1_171_200

    params = pulled.call("show", "stories", "--parameters").stdout
    assert params.splitlines() == [f"{'temperature':<30} 0.5", f'{"stop":<30} "</s>"']
    assert pulled.call("show", "stories", "--template").stdout == "{{ .System }}\n{{ .Prompt }}\n"
    modelfile = pulled.call("show", "stories", "--modelfile").stdout
    assert "FROM " in modelfile and "PARAMETER temperature 0.5" in modelfile
    assert pulled.call("show", "stories", "--system").stdout.startswith("No system")
    assert pulled.call("show", "stories", "--license").stdout.startswith("No license")


def test_cp_and_rm_through_the_cli(pulled: Ladle) -> None:
    copied = pulled.call("cp", "stories", "me/story-copy")
    assert copied.returncode == 0, copied.stderr
    assert copied.stdout.strip() == "copied 'stories' to 'me/story-copy'"
    names = [line.split()[0] for line in pulled.call("list").stdout.splitlines()[1:]]
    assert "me/story-copy:latest" in names
    removed = pulled.call("rm", "me/story-copy")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.strip() == "deleted 'me/story-copy'"
    names = [line.split()[0] for line in pulled.call("list").stdout.splitlines()[1:]]
    assert "me/story-copy:latest" not in names and "stories:latest" in names
    assert_one_line_error(pulled.call("rm", "me/story-copy"), "not found")


def test_the_official_ollama_client(pulled: Ladle, registry, tiny_model_factory) -> None:
    client = ollama.Client(host=pulled.url)
    events = list(client.pull("stories", stream=True))
    assert events[0].status == "pulling manifest" and events[-1].status == "success"
    blob = [e for e in events if e.digest and e.total == STORIES_SIZE]
    assert blob and blob[-1].completed == STORIES_SIZE
    assert client.pull("stories").status == "success"

    listed = {m.model: m for m in client.list().models}
    manifest = json.loads(registry.manifest)
    size = manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])
    assert listed["stories:latest"].size == size  # as Ollama counts it: every blob, config included
    assert listed["stories:latest"].details.family == "llama"

    shown = client.show("stories")
    assert shown.template == "{{ .System }}\n{{ .Prompt }}"
    assert shown.details.format == "gguf" and shown.details.parameter_size == "260K"
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] == 512
    assert shown.modelinfo["general.parameter_count"] > 200_000
    assert "temperature" in shown.parameters

    assert client.copy("stories", "story2").status == "success"
    assert "story2:latest" in {m.model for m in client.list().models}
    assert client.delete("story2").status == "success"
    assert "story2:latest" not in {m.model for m in client.list().models}
    with pytest.raises(ollama.ResponseError) as missing:
        client.delete("story2")
    assert missing.value.status_code == 404

    # create from a Hugging Face folder, with the JSON form's system and parameters
    folder, _ = tiny_model_factory("llama")
    progress = list(
        client.create(
            "tiny-chat",
            from_=str(folder),
            system="You are tiny.",
            parameters={"temperature": 0, "num_predict": 5, "stop": ["zzz"]},
            stream=True,
        )
    )
    assert progress[0].status == "gathering model components" and progress[-1].status == "success"
    shown = client.show("tiny-chat")
    assert shown.details.format == "safetensors"
    assert "num_predict" in shown.parameters and "You are tiny." in shown.modelfile

    # the PARAMETERs are the request's defaults: num_predict 5 caps the answer
    answer = client.generate("tiny-chat", "Once upon a time", options={"seed": 1})
    assert answer.eval_count == 5 and answer.done_reason == "length"
    [running] = [m for m in client.ps().models if m.model == "tiny-chat:latest"]
    assert running.size_vram == 0 and running.context_length == 512
    assert running.expires_at is not None and running.details.format == "safetensors"
    assert running.digest == shown.modelinfo.get("digest", running.digest)
    client.generate("tiny-chat", keep_alive=0)  # ladle stop
    assert "tiny-chat:latest" not in {m.model for m in client.ps().models}


def test_create_from_a_modelfile(pulled: Ladle, tiny_model_factory) -> None:
    folder, _ = tiny_model_factory("llama")
    workdir = pulled.home / "work"
    (workdir / "sub").mkdir(parents=True, exist_ok=True)
    link = workdir / "sub" / "weights"
    if not link.exists():
        link.symlink_to(folder, target_is_directory=True)
    # FROM is relative to the Modelfile's folder, not to where `ladle create` runs
    (workdir / "sub" / "Modelfile").write_text(
        'FROM ./weights\nPARAMETER temperature 0.2\nPARAMETER stop "<|end|>"\nSYSTEM """Be brief."""\n'
        "LICENSE MIT\nMESSAGE user hi\nMESSAGE assistant hello\n"
    )
    created = pulled.run("create", "made", "-f", str(workdir / "sub" / "Modelfile"))
    assert created.returncode == 0, created.stderr
    assert created.stderr.splitlines()[0] == "gathering model components"
    assert created.stderr.splitlines()[-1] == "success"
    shown = httpx.post(pulled.url + "/api/show", json={"model": "made"}, timeout=30).json()
    assert shown["system"] == "Be brief." and shown["license"] == "MIT"
    assert shown["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert shown["parameters"].splitlines() == [f"{'temperature':<30} 0.2", f'{"stop":<30} "<|end|>"']
    assert pulled.call("show", "made", "--system").stdout == "Be brief.\n"

    # Ollama's older form: the Modelfile text itself
    body = {"model": "made-too", "modelfile": "FROM made\nSYSTEM Be verbose.", "stream": False}
    response = httpx.post(pulled.url + "/api/create", json=body, timeout=30)
    assert response.status_code == 200 and response.json() == {"status": "success"}
    shown = httpx.post(pulled.url + "/api/show", json={"model": "made-too"}, timeout=30).json()
    assert shown["system"] == "Be verbose." and "temperature" in shown["parameters"]
    assert shown["details"]["parent_model"] == "made:latest"


def test_bad_names_missing_models_and_registry_errors_are_one_line(pulled: Ladle) -> None:
    long_name = "a" * 300
    for args, fragment in [
        (("pull", "../x"), "looks like a file path"),
        (("pull", ""), "model"),
        (("pull", long_name), "too long"),
        # a path is a model reference to show or run: a missing one is not found, not a bad name
        (("show", "../x"), "no such file"),
        (("show", long_name), "too long"),
        (("rm", ""), "model"),
        (("cp", "stories", "../evil"), "looks like a file path"),
        (("cp", "nothing-here", "x"), "not found"),
        (("show", "nothing-here"), "not found"),
        (("stop", "nothing-here"), "couldn't find model"),
        (("pull", "nothing-here"), "not found"),
        (("run", "../x", "hi"), "no such file"),
        # nothing listens on port 9: the pull fails at once with the reason
        (("pull", "127.0.0.1:9/library/x:latest"), "cannot reach the registry"),
        (("run", "127.0.0.1:9/library/x", "hi"), "connection refused"),
    ]:
        assert_one_line_error(pulled.call(*args), fragment)
    # and as a real process: the exit code and stderr are what a shell sees
    assert_one_line_error(pulled.run("pull", "../x"), "looks like a file path")

    create_dir = pulled.home / "modelfiles"
    create_dir.mkdir(exist_ok=True)
    (create_dir / "Modelfile").write_text("FROM stories\nADAPTER ./lora.gguf\n")
    assert_one_line_error(
        pulled.call("create", "x", "-f", str(create_dir / "Modelfile")), "adapters are not supported yet"
    )
    (create_dir / "Modelfile").write_text("FROM nothing-here\n")
    assert_one_line_error(pulled.call("create", "x", "-f", str(create_dir / "Modelfile")), "not found")
    assert_one_line_error(pulled.call("run", "stories", "--format", "yaml", "hi"), "--format")


def test_http_errors_are_400_or_404_with_an_error_field(pulled: Ladle) -> None:
    url = pulled.url
    cases = [
        ("POST", "/api/show", {"model": "../x"}, 404),
        ("POST", "/api/show", {"model": ""}, 400),
        ("POST", "/api/show", {"model": "a" * 300}, 400),
        ("POST", "/api/show", {"model": "nothing-here"}, 404),
        ("POST", "/api/pull", {"model": "../x"}, 400),
        ("POST", "/api/pull", {"model": "nothing-here", "stream": False}, 404),
        ("POST", "/api/pull", {"model": "nothing-here"}, 404),
        ("POST", "/api/copy", {"source": "nothing-here", "destination": "y"}, 404),
        ("POST", "/api/copy", {"source": "stories", "destination": "../y"}, 400),
        ("DELETE", "/api/delete", {"model": "nothing-here"}, 404),
        ("DELETE", "/api/delete", {"model": "../x"}, 400),
        ("POST", "/api/create", {"model": "x", "from": "nothing-here"}, 400),
        ("POST", "/api/create", {"model": "../x", "from": "stories"}, 400),
        ("POST", "/api/generate", {"model": "nothing-here", "prompt": "hi"}, 404),
        ("POST", "/api/chat", {"model": "bad name!", "messages": [{"role": "user", "content": "hi"}]}, 400),
        ("POST", "/api/generate", {"model": "a" * 300, "prompt": "hi"}, 400),
        # in a request's model field, something shaped like a path is a path: a missing one is not found
        ("POST", "/api/chat", {"model": "../x", "messages": [{"role": "user", "content": "hi"}]}, 404),
    ]
    for method, path, body, status in cases:
        response = httpx.request(method, url + path, json=body, timeout=30)
        assert response.status_code == status, (path, body, response.text)
        error = response.json()["error"]
        assert isinstance(error, str) and error and "\n" not in error
    unreachable = httpx.post(url + "/api/pull", json={"model": "127.0.0.1:9/library/x"}, timeout=30)
    assert unreachable.status_code == 404 and "connection refused" in unreachable.json()["error"]


def test_a_broken_gguf_path_says_what_is_wrong_with_it(pulled: Ladle, tmp_path) -> None:
    """`ladle show` and `ladle run` of a truncated or non-GGUF file name the problem, not "not found" alone
    or "invalid model name"."""
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(STORIES.read_bytes()[:600_000])
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello")
    for path, fragment in [(truncated, "truncated"), (not_gguf, "not a GGUF file")]:
        assert_one_line_error(pulled.call("show", str(path)), fragment)
        assert_one_line_error(pulled.call("run", str(path), "hi"), fragment)


def test_serve_stops_when_a_model_given_at_start_cannot_load(pulled: Ladle, tmp_path) -> None:
    """`ladle serve BROKEN.gguf` exits non-zero with the loader's reason (as vLLM does), instead of going on
    without the model while /health answers "ok"."""
    from cli_helpers import free_port

    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(STORIES.read_bytes()[:600_000])
    result = pulled.run("serve", str(truncated), "--port", str(free_port()), timeout=90)
    assert result.returncode == 1, result
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("Error: ") and "truncated" in last and "the server stopped" in last, last
    assert "Traceback" not in result.stderr


def test_bench_serve_on_a_store_model(pulled: Ladle, tmp_path) -> None:
    """`ladle bench serve --model NAME` for a model in the store (whose GGUF has no llama.vocab_size key:
    /api/show gives the vocabulary's size from its token list), and a one-line error for an unknown one."""
    shown = httpx.post(pulled.url + "/api/show", json={"model": "stories"}, timeout=30).json()
    assert shown["model_info"]["llama.vocab_size"] == 512
    out = tmp_path / "serve.json"
    args = ["bench", "serve", "--base-url", pulled.url, "--model", "stories", "--num-prompts", "2"]
    args += ["--input-len", "4", "8", "--output-len", "2", "4", "--output-json", str(out)]
    done = pulled.call(*args)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert (result["completed"], result["failed"], result["vocab_size"]) == (2, 0, 512)
    args[args.index("stories")] = "nothing-here"
    assert_one_line_error(pulled.call(*args), "--model", "nothing-here", "not found")


def test_v1_models_retrieves_a_loaded_model_by_the_name_requests_use(pulled: Ladle) -> None:
    """`model: "stories"` works on /v1/completions, so GET /v1/models/stories finds that model too."""
    done = httpx.post(
        pulled.url + "/v1/completions", json={"model": "stories", "prompt": "x", "max_tokens": 1}
    )
    assert done.status_code == 200 and done.json()["model"] == "stories:latest"
    for name in ("stories", "stories:latest"):
        card = httpx.get(f"{pulled.url}/v1/models/{name}")
        assert card.status_code == 200 and card.json()["id"] == "stories:latest", card.text
    missing = httpx.get(f"{pulled.url}/v1/models/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"
