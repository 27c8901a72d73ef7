"""The example configuration files in config/ load as they are shipped."""

from __future__ import annotations

from pathlib import Path

from device_agent.config import load_agent_config

ROOT = Path(__file__).resolve().parent.parent


def test_agent_example_loads_and_documents_every_key() -> None:
    path = ROOT / "config" / "agent.example.yaml"
    config = load_agent_config(path)
    assert config.output.kind == "ffmpeg"
    text = path.read_text(encoding="utf-8")
    for key in type(config).model_fields:
        assert key in text, f"config/agent.example.yaml does not mention {key}"
