"""The alert rules and the Grafana dashboard: `promtool check rules` and `promtool test
rules` (deploy/prometheus/alerts-test.yaml), and a real Prometheus (Debian's package, on
loopback, temp dirs) scraping a real daemon that received real telemetry: every metric the
dashboard and the rules use must come back through Prometheus' HTTP API, every rule must
evaluate without error and every dashboard query must parse."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind

from sidecar.telemetry import metrics
from sidecar.telemetry.metrics import REGISTRY
from tests.conftest import free_port
from tests.helpers.daemon import DaemonProcess

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/alerts.yaml"
RULE_TESTS = ROOT / "deploy/prometheus/alerts-test.yaml"
DASHBOARD = ROOT / "deploy/grafana/sidecar-dashboard.json"
SIDECAR = str(Path(sys.executable).with_name("sidecar"))
NAME = re.compile(r"\bsidecar_[a-z0-9_]+")


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing (Debian package prometheus; `make sysdeps` installs it)"
    return path


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard_panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p["targets"]]


def used_names() -> set[str]:
    return {name for expr in [*rule_exprs(), *dashboard_exprs()] for name in NAME.findall(expr)}


def exposed_names() -> set[str]:
    """Series names the daemon's registry can expose (declared in telemetry/metrics.py)."""
    names = set()
    for family in REGISTRY.collect():
        for suffix in {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
                       "info": ["_info"]}.get(family.type, [""]):
            names.add(family.name + suffix)
    return names


# --- promtool ---------------------------------------------------------------------------------

def test_promtool_parses_the_exposition_with_hostile_label_values() -> None:
    """/metrics' own rendering of the tables (`exposition`) through Prometheus' Go parser:
    label values with quotes, backslashes, newlines and non-ASCII text from span attributes
    must come out escaped; promtool fails on a parse error (checked on a bad line too)."""
    key = ('pro"vider', "mo\\del", "ser\nvice", "ägënt ✓", "tenant}")
    metrics.LLM_CALLS.cell(key)[0] += 2
    metrics.LLM_DURATION.observe(key, 0.3)
    try:
        body = metrics.exposition()
    finally:
        metrics.LLM_CALLS.cells.pop(key, None)
        metrics.LLM_DURATION.rows.pop(key, None)
    assert b'tenant="tenant}"' in body
    ok = subprocess.run([tool("promtool"), "check", "metrics"], input=body,
                        capture_output=True, timeout=60, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = subprocess.run([tool("promtool"), "check", "metrics"], input=b'bad{a="x} 1\n',
                         capture_output=True, timeout=60, check=False)
    assert bad.returncode != 0


def test_promtool_check_rules() -> None:
    result = subprocess.run([tool("promtool"), "check", "rules", str(RULES)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = subprocess.run([tool("promtool"), "test", "rules", str(RULE_TESTS)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rule_unit_tests_catch_a_changed_threshold(tmp_path: Path) -> None:
    # the unit tests are worth something only if a wrong rule fails them
    text = RULES.read_text()
    assert text.count(") > 0.01") == 1
    (tmp_path / "alerts.yaml").write_text(text.replace(") > 0.01", ") > 0.05"))
    shutil.copy(RULE_TESTS, tmp_path / "alerts-test.yaml")
    result = subprocess.run([tool("promtool"), "test", "rules",
                             str(tmp_path / "alerts-test.yaml")],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0
    assert "SidecarHighErrorRate" in result.stdout + result.stderr


def test_every_alert_the_issue_asks_for_is_there() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    alerts = {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}
    assert {"SidecarHighLatency", "SidecarHighErrorRate", "SidecarLowCacheHitRate",
            "SidecarEventVolumeSpike", "SidecarQueueFilling", "SidecarExporterFailing",
            "SidecarUnpricedModel", "SidecarSpendOverBudget"} <= set(alerts)
    assert alerts["SidecarExporterFailing"]["for"] == "5m"
    tested = {a["alertname"] for t in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for a in t["alert_rule_test"]}
    assert set(alerts) <= tested


# --- dashboard --------------------------------------------------------------------------------

def test_dashboard_uses_only_metrics_the_daemon_declares() -> None:
    unknown = used_names() - exposed_names()
    assert not unknown, f"not in sidecar/telemetry/metrics.py: {sorted(unknown)}"


def test_dashboard_structure() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in dash["templating"]["list"]} >= {"datasource", "instance"}
    for panel in dashboard_panels():
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
    exprs = "\n".join(dashboard_exprs())
    for by in ("model", "agent", "tenant"):
        assert f"sum by ({by}) (rate(sidecar_llm_cost_usd_total" in exprs
    for needle in ("sidecar_cache_saved_usd_total", "sidecar_cache_misses_total",
                   "sidecar_receiver_refused_items_total", "sidecar_exporter_queue_size_bytes",
                   "sidecar_exporter_send_duration_seconds_bucket",
                   "sidecar_exporter_send_failed_items_total", "sidecar_redact_redactions_total",
                   "sidecar_span_duration_seconds_bucket"):
        assert needle in exprs


# --- a real Prometheus scraping a real daemon -------------------------------------------------

def prom_get(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            body = exc.read()
        try:
            return json.loads(body)
        except ValueError:  # e.g. 503 "Service Unavailable" while the TSDB starts
            return {"status": f"http {exc.code}", "body": body.decode(errors="replace")}


def send_spans(endpoint: str) -> None:
    """Model calls the sample of send-test lacks: an unknown model, a reported cost that
    disagrees with the price, a secret in an attribute, an error status."""
    provider = TracerProvider(resource=Resource.create({"service.name": "deploy-test",
                                                        "tenant.id": "t-1"}))
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("deploy-test")
    with tracer.start_as_current_span("invoke_agent triage", kind=SpanKind.SERVER) as root:
        root.set_attribute("gen_ai.agent.name", "triage")
        for model, extra in (("no-such-model-2031", {}),
                             ("gpt-4o", {"gen_ai.usage.cost": 99.0}),
                             ("gpt-4o", {"http.request.header.authorization":
                                         "Bearer sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"})):
            with tracer.start_as_current_span(f"chat {model}", kind=SpanKind.CLIENT) as span:
                span.set_attributes({"gen_ai.provider.name": "openai",
                                     "gen_ai.request.model": model,
                                     "gen_ai.usage.input_tokens": 1000,
                                     "gen_ai.usage.output_tokens": 200, **extra})
    provider.shutdown()


def bad_request(http_endpoint: str) -> None:
    request = urllib.request.Request(f"{http_endpoint}/v1/traces", data=b"\xff\x00 not otlp",
                                     headers={"Content-Type": "application/x-protobuf"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10).close()
    assert refused.value.code == 400
    refused.value.close()


@pytest.mark.timeout(300)  # two servers started and polled on a shared 2-core machine
async def test_prometheus_scrapes_every_metric_the_dashboard_and_rules_use(
        short_tmp: Path, tmp_path: Path) -> None:
    daemon = DaemonProcess(short_tmp, exporters={
        "local": {"type": "file", "path": str(short_tmp / "export")}},
        extra={"processors": {"cost": {"enabled": True}, "spanmetrics": {"enabled": True}},
               "receivers": {"otlp": {"grpc": {"endpoint": f"127.0.0.1:{free_port()}"},
                                      "http": {"endpoint": f"127.0.0.1:{free_port()}"}},
                             "logs": {"unix": str(short_tmp / "logs.sock")}}})
    cfg = daemon.config()
    daemon.grpc_port = int(cfg["receivers"]["otlp"]["grpc"]["endpoint"].rsplit(":", 1)[1])
    daemon.http_port = int(cfg["receivers"]["otlp"]["http"]["endpoint"].rsplit(":", 1)[1])
    await daemon.start()
    prometheus: subprocess.Popen[bytes] | None = None
    try:
        sent = await asyncio.to_thread(
            subprocess.run, [SIDECAR, "send-test", "--endpoint", daemon.http_endpoint,
                             "--admin", daemon.admin_url],
            capture_output=True, text=True, timeout=60, check=False)
        assert sent.returncode == 0, sent.stderr
        await asyncio.to_thread(send_spans, daemon.grpc_endpoint)
        await asyncio.to_thread(bad_request, daemon.http_endpoint)
        sock = str(short_tmp / "cache.sock")
        for args in (["SET", "embeddings:a", "v"], ["GET", "embeddings:a"],
                     ["GET", "embeddings:missing"]):
            await asyncio.to_thread(subprocess.run, [tool("redis-cli"), "-s", sock, *args],
                                    capture_output=True, timeout=10, check=True)

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        rules = tmp_path / "alerts.yaml"
        shutil.copy(RULES, rules)
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "sidecar", "static_configs": [
                {"targets": [daemon.admin_url.removeprefix("http://")]}]}],
        }))
        prometheus = subprocess.Popen(  # noqa: ASYNC220 - a server, stopped in finally
            [tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
             "--storage.tsdb.retention.time=1h", "--log.level=warn"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

        wanted = used_names()
        found: set[str] = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert prometheus.poll() is None, prometheus.communicate()
            try:
                answer = await asyncio.to_thread(
                    prom_get, base, "/api/v1/query",
                    query='count by (__name__) ({__name__=~"sidecar_.+", job="sidecar"})')
            except OSError:
                answer = None
            if answer and answer["status"] == "success":
                found = {r["metric"]["__name__"] for r in answer["data"]["result"]}
                if wanted <= found:
                    break
            await asyncio.sleep(0.5)
        assert wanted <= found, f"no data through Prometheus for {sorted(wanted - found)}"

        # every rule evaluates (no many-to-many match, no bad function) ...
        deadline = time.monotonic() + 30
        health: dict[str, str] = {}
        while time.monotonic() < deadline:
            answer = await asyncio.to_thread(prom_get, base, "/api/v1/rules")
            if answer["status"] == "success":
                health = {r["name"]: r["health"] for g in answer["data"]["groups"]
                          for r in g["rules"]}
                if health and all(h != "unknown" for h in health.values()):
                    break
            await asyncio.sleep(0.5)
        assert health, "Prometheus loaded no rules"
        assert set(health.values()) == {"ok"}, health
        # ... and every dashboard query is valid PromQL with Grafana's variables filled in
        for expr in dashboard_exprs():
            query = (expr.replace("$__rate_interval", "1m").replace("$__range", "5m")
                     .replace("$instance", ".*"))
            answer = await asyncio.to_thread(prom_get, base, "/api/v1/query", query=query)
            assert answer["status"] == "success", (expr, answer)
        # the cost the daemon reported is what Prometheus has
        answer = await asyncio.to_thread(
            prom_get, base, "/api/v1/query",
            query='sum(sidecar_llm_cost_usd_total{service="feedback-app"})')
        assert float(answer["data"]["result"][0]["value"][1]) > 0
    finally:
        if prometheus is not None:
            prometheus.terminate()
            try:
                prometheus.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                prometheus.kill()
                prometheus.communicate()
        await daemon.stop()
