"""`ladle bench serve` against the session's server: it completes every request and reports the figures."""

from __future__ import annotations

import json

from ladle.cli.main import main


def test_bench_serve_reports(ladle_server, tmp_path, capsys):
    out = tmp_path / "serve.json"
    argv = ["bench", "serve", "--base-url", ladle_server.url, "--num-prompts", "6", "--max-concurrency", "3"]
    argv += ["--input-len", "4", "12", "--output-len", "4", "8", "--output-json", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["completed"] == 6 and result["failed"] == 0
    assert 6 * 4 <= result["output_tokens"] <= 6 * 8
    assert result["ttft_ms"]["median"] > 0 and result["tpot_ms"]["p99"] > 0
    assert "Request throughput" in capsys.readouterr().out
