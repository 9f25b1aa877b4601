"""Real published config.json values (no weights) for dummy-weight benchmarks: `ladle bench ... --preset NAME`.

tiny-llama is ladle's own small config for CPU benchmarks; the others copy the published configs of
Llama-3.1-8B/70B, Qwen3-0.6B/8B and Gemma-3-1B.
"""

from __future__ import annotations

from pathlib import Path

PRESETS_DIR = Path(__file__).parent


def preset_names() -> list[str]:
    return sorted(p.name for p in PRESETS_DIR.iterdir() if (p / "config.json").is_file())


def preset_path(name: str) -> Path:
    path = PRESETS_DIR / name
    if not (path / "config.json").is_file():
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(preset_names())}")
    return path
