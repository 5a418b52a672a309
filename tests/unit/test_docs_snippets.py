"""The config snippets of the migration guide are valid config (so the guide cannot drift
from the config schema)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from sidecar import config

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "migration-nextjs.md"


def test_every_yaml_block_of_the_migration_guide_loads(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DD_API_KEY", "k" * 32)
    monkeypatch.setenv("UPSTASH_PASSWORD", "p")
    blocks = re.findall(r"```yaml\n(.*?)```", GUIDE.read_text(), re.S)
    assert len(blocks) >= 2
    for block in blocks:
        text = block.replace("/run/sidecar/", f"{tmp_path}/")
        path = tmp_path / "sidecar.yaml"
        path.write_text(text)
        assert isinstance(yaml.safe_load(text), dict)
        config.load(path)  # raises ConfigError naming the key if the guide is wrong
