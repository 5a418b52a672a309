"""Without the generated protobuf module (an install that did not run `make protos`),
every other exporter still loads and `type: datadog` (native) is a config error saying
what to run; `mode: agent` needs no payload module."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r"""
import sys
sys.modules["sidecar._proto.datadog_trace_pb2"] = None  # as if never generated
from sidecar import config
from sidecar.errors import ConfigError
cfg = config.from_tree({"exporters": {"up": {"type": "otlp", "endpoint": "http://127.0.0.1:4317"},
                                      "agent": {"type": "datadog", "mode": "agent"}}})
print("ok", sorted(cfg.exporters))
try:
    config.from_tree({"exporters": {"dd": {"type": "datadog", "api_key": "k"}}})
except ConfigError as exc:
    print("error", exc)
"""


def test_missing_generated_module_is_a_config_error_for_native_only() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "ok ['agent', 'up']"
    assert lines[1].startswith("error ")
    assert "exporters.dd" in lines[1]
    assert "mode: native needs sidecar._proto.datadog_trace_pb2 is not built" in lines[1]
    assert "make protos" in lines[1]
