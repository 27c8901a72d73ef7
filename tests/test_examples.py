"""The example configuration files in config/ load as they are shipped."""

from __future__ import annotations

import re
from pathlib import Path

from device_agent.config import load_agent_config

ROOT = Path(__file__).resolve().parent.parent


def test_agent_example_loads_and_documents_every_key() -> None:
    path = ROOT / "config" / "agent.example.yaml"
    config = load_agent_config(path)
    assert config.output.kind == "opusdec"
    text = path.read_text(encoding="utf-8")
    models = [type(config), type(config.output), type(config.relay)]
    for model in models:
        for key in model.model_fields:
            # written as a key, set or commented out: `key:` or `# key:`
            assert re.search(rf"^\s*(# )?{key}:", text, re.M), (
                f"config/agent.example.yaml does not document {model.__name__}.{key}"
            )
