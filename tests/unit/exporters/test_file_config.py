"""The file exporter accepts no setting it would ignore."""

from __future__ import annotations

import pytest

from sidecar import config
from sidecar.errors import ConfigError
from sidecar.exporters.file import FileConfig


def test_compression_gzip_is_an_error_naming_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        config.from_tree({"exporters": {"local": {"type": "file", "compression": "gzip"}}},
                         "sidecar.yaml")
    [problem] = info.value.problems
    assert problem.path == "exporters.local.compression"
    assert "uncompressed" in problem.message


def test_compression_none_is_what_it_does() -> None:
    cfg = config.from_tree({"exporters": {"local": {"type": "file", "compression": "none"}}})
    exporter = cfg.exporters["local"]
    assert isinstance(exporter, FileConfig)
    assert exporter.compression == "none"
