"""`ladle bench throughput` on the CPU with a shipped preset (dummy weights): it runs every request to its
length and writes the figures, also with the sampling options that read a request's own tokens."""

from __future__ import annotations

import json

from ladle.cli.main import main


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
