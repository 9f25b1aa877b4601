"""`ladle bench throughput` and `ladle bench latency` on the CPU with a shipped preset (dummy weights): they
run every request to its length and write the figures (throughput also with the sampling options that read a
request's own tokens; latency beside transformers' generate and with its plot)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ladle.cli.main import main
from shared_models import stories_gguf


def test_bench_throughput_with_logprobs_a_penalty_and_sampling(tmp_path, capsys):
    out = tmp_path / "throughput.json"
    argv = ["bench", "throughput", "--preset", "tiny-llama", "--num-prompts", "5", "--device", "cpu"]
    argv += ["--input-len", "8", "16", "--output-len", "4", "9", "--output-json", str(out)]
    argv += ["--logprobs", "2", "--repetition-penalty", "1.2", "--temperature", "0.8", "--top-p", "0.9"]
    argv += ["--top-k", "20"]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert 5 * 4 <= result["output_tokens"] <= 5 * 9
    assert 5 * 8 <= result["prompt_tokens"] <= 5 * 16
    assert (result["logprobs"], result["repetition_penalty"]) == (2, 1.2)
    assert (result["temperature"], result["top_p"], result["top_k"]) == (0.8, 0.9, 20)
    assert result["output_tokens_per_s"] > 0
    assert "Throughput" in capsys.readouterr().out


def test_bench_latency_with_the_transformers_baseline_on_the_cpu(tmp_path, capsys):
    """The baseline runs transformers on the engine's device and dtype (it assumed CUDA, so on a laptop the
    result held a traceback), at the static batches ladle is measured at, and both land in the plot."""
    out = tmp_path / "latency.json"
    argv = ["bench", "latency", "--preset", "tiny-llama", "--device", "cpu", "--batch-sizes", "1", "3"]
    argv += ["--input-len", "12", "--output-len", "5", "--throughput-batch-sizes", "1", "4"]
    argv += ["--baseline", "transformers", "--peak-bandwidth-gbs", "100", "--output-json", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert set(result["latency"]) == {"1", "3"}
    for batch, figures in result["latency"].items():
        assert figures["tpot_ms"] > 0 and figures["ttft_ms"] > 0
        assert figures["decode_tokens_per_s"] == pytest.approx(
            int(batch) / figures["tpot_ms"] * 1e3, rel=0.01
        )
        assert figures["roofline_fraction"] == pytest.approx(
            figures["roofline_step_ms"] / figures["tpot_ms"], abs=0.002
        )
    assert set(result["static_batch_output_tokens_per_s"]) == {"1", "4"}
    baseline = result["transformers"]
    assert "error" not in baseline, baseline
    assert (baseline["device"], baseline["dtype"]) == ("cpu", "float32")  # the engine's: float32 on the CPU
    assert set(baseline["static_batch"]) == {"1", "4"}
    assert baseline["batch1_decode_tokens_per_s"] > 0 and baseline["best_batch"] in (1, 4)
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Plot written" in capsys.readouterr().out


def test_bench_latency_on_a_cpu_without_a_bandwidth_reports_no_roofline(tmp_path, capsys):
    """The roofline's bandwidth was an H100's 3350 GB/s whatever ran, so a laptop read "0% of peak"; with
    no figure known for the device there is no roofline, and the output says which flag gives one."""
    out = tmp_path / "latency.json"
    argv = ["bench", "latency", "--preset", "tiny-llama", "--device", "cpu", "--batch-sizes", "1"]
    argv += [
        "--input-len",
        "8",
        "--output-len",
        "3",
        "--throughput-batch-sizes",
        "1",
        "--output-json",
        str(out),
    ]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["peak_bandwidth_gbs"] is None
    assert result["latency"]["1"]["roofline_fraction"] is None and result["latency"]["1"]["tpot_ms"] > 0
    printed = capsys.readouterr().out
    assert (
        "No roofline" in printed and "--peak-bandwidth-gbs" in printed and "of peak bandwidth" not in printed
    )


@pytest.mark.parametrize(
    "name,gbs",
    [
        ("NVIDIA H100 80GB HBM3", 3350.0),  # SXM: the H100
        ("NVIDIA H100 PCIe", 2000.0),
        ("NVIDIA H100 NVL", 3900.0),
        ("NVIDIA H200", 4800.0),
        ("NVIDIA GH200 480GB", None),  # two memory options under one name
        ("NVIDIA A100-SXM4-80GB", 2039.0),
        ("NVIDIA A100-PCIE-40GB", 1555.0),
        ("NVIDIA A100 80GB PCIe", 1935.0),
        ("NVIDIA A10", 600.0),
        ("NVIDIA L4", 300.0),
        ("NVIDIA L40S", 864.0),
        ("NVIDIA GeForce RTX 3090", None),
    ],
)
def test_datasheet_bandwidth_tells_apart_names_that_contain_each_other(name, gbs):
    """torch's device names: a card whose name holds another's (A100 / A10, L40S / L4, GH200 / H200, H100
    PCIe / H100) gets its own figure, and an unlisted one none (published datasheet rates, GB/s)."""
    from ladle.bench.hardware import datasheet_bandwidth_gbs

    assert datasheet_bandwidth_gbs(name) == gbs


def test_bench_latency_baseline_of_a_gguf_file_is_a_one_line_error(capsys):
    """transformers' model is built from a config.json; a GGUF file has none, and the error says so before
    anything loads."""
    argv = [
        "bench",
        "latency",
        "--model",
        str(stories_gguf()),
        "--device",
        "cpu",
        "--baseline",
        "transformers",
    ]
    assert _exit_code(argv) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: --baseline transformers") and "config.json" in err and "\n" not in err, err


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's usage errors
        return exc.code


@pytest.mark.parametrize(
    "argv,fragments",
    [
        (["throughput", "--preset", "tiny-llama", "--num-prompts", "-1"], ["--num-prompts", "at least 1"]),
        (["throughput", "--preset", "tiny-llama", "--input-len", "9", "3"], ["--input-len", "9 > 3"]),
        (["throughput", "--preset", "tiny-llama", "--output-len", "0", "3"], ["--output-len", "at least 1"]),
        (["latency", "--preset", "tiny-llama", "--batch-sizes", "0"], ["--batch-sizes", "at least 1"]),
        (["latency", "--preset", "tiny-llama", "--output-len", "1"], ["--output-len", "at least 2"]),
        (["latency", "--preset", "tiny-llama", "--peak-bandwidth-gbs", "0"], ["--peak-bandwidth-gbs", "> 0"]),
        (["serve", "--num-prompts", "0"], ["--num-prompts", "at least 1"]),
    ],
)
def test_bad_bench_arguments_are_one_line_errors(argv, fragments, capsys):
    """A bad count or length is refused before anything loads: one line naming the flag, no Python error."""
    assert _exit_code(["bench", *argv] + (["--device", "cpu"] if argv[0] != "serve" else [])) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: ") and "\n" not in err, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.mark.parametrize("bench", ["throughput", "latency"])
def test_default_lengths_beyond_a_small_models_context_name_the_flags(bench, capsys):
    """stories260K has a 512-token context: the default lengths do not fit, and the error says which flags
    to lower (it said "prompt: 964 tokens is too long" from deep inside the run)."""
    assert _exit_code(["bench", bench, "--model", str(stories_gguf()), "--device", "cpu"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: --input-len") and "--output-len" in err and "512" in err, err


def test_results_name_ladles_commit_not_the_folder_the_bench_ran_in(tmp_path, monkeypatch):
    """A bench started from another git repository (a user's project) records ladle's commit, not that
    repository's, and the ladle version."""
    import subprocess

    import ladle
    from ladle.bench.results import write_result

    repo = tmp_path / "users_project"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "theirs"], check=True)
    theirs = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    package = Path(ladle.__file__).parent
    ours = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=package, capture_output=True, text=True
    ).stdout.strip()
    monkeypatch.chdir(repo)
    record = json.loads(write_result("latency", {}, out_dir=tmp_path / "results").read_text())
    assert record["git_sha"] != theirs and record["git_sha"].startswith(ours or "unknown")
    assert record["ladle_version"] == ladle.__version__
