"""The artefacts of deploy/ and the LICENSE, checked with the tools an operator would use on them:

- the systemd unit passes `systemd-analyze verify` with no warning at all (an unknown key or a bad value is
  only a warning there) and `systemd-analyze security` rates its exposure at most 2.0; it is checked with its
  program paths pointed at this virtualenv and the example environment file (verify wants them to exist);
- its readiness step (`wait-ready.py`, the ExecStartPost) waits for a real node's `/health/ready` (over
  HTTPS, checking the certificate, when the node has TLS) and fails on one that cannot join;
- `MemoryDenyWriteExecute=yes` is tolerated: two real nodes, with a cluster secret, join and replicate while
  the kernel refuses them writable executable memory (PR_SET_MDWE, what systemd applies);
- the example environment file names only real settings and loads into a `StorageConfig`;
- the Kubernetes manifests pass the Kubernetes JSON schemas (kubernetes-validate, strict: unknown fields
  fail), and what the schemas cannot see holds: the headless Service the StatefulSet names publishes
  not-ready pods, bootstrap and advertised addresses are the pods' stable DNS names, the data volume is the
  data directory, the secrets come from the Secret, probes hit the health routes, the root file system is
  read-only and the user is not root, and the pod's environment loads into a `StorageConfig`.

systemd-analyze, the kernel's PR_SET_MDWE (Linux 6.3) and kubernetes-validate missing: skipped, a failure
under DSM_TEST_STRICT=1."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dsm.config import StorageConfig
from dsm.net.certs import ClusterCA
from procs import Proc, eventually, holds, procs_fixture  # noqa: F401  (the `procs` fixture)
from support import skip_or_fail

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "dsm.service"
WAIT_READY = DEPLOY / "systemd" / "wait-ready.py"
ENV_EXAMPLE = DEPLOY / "systemd" / "dsm.env.example"
KUBERNETES = [DEPLOY / "kubernetes" / "dsm.yaml", DEPLOY / "kubernetes" / "secret.example.yaml"]
KUBERNETES_VERSION = "1.30"
FIELDS = set(StorageConfig.__dataclass_fields__)


# ------------------------------------------------------------------------------------------ LICENSE


def test_the_license_is_the_one_pyproject_declares() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


# ------------------------------------------------------------------------------------------ systemd


def unit_settings() -> dict[str, list[str]]:
    """Each `Key=` of the unit (any section) with every value it is given, in order."""
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def local_unit(tmp_path: Path) -> Path:
    """The unit with its programs in this virtualenv and the example environment file (as installed)."""
    venv_bin = Path(sys.executable).parent
    text = UNIT.read_text()
    text = text.replace("/opt/dsm/venv/bin/dsm", str(venv_bin / "dsm"))
    text = text.replace("/opt/dsm/venv/bin/python", sys.executable)
    text = text.replace("/opt/dsm/wait-ready.py", str(WAIT_READY))
    text = text.replace("/etc/dsm/dsm.env", str(ENV_EXAMPLE))
    assert "/opt/dsm" not in text and "/etc/dsm/dsm.env" not in text
    path = tmp_path / "dsm.service"
    path.write_text(text)
    return path


@pytest.fixture
def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        skip_or_fail("systemd-analyze is missing (apt-get install systemd)")
    assert found is not None
    return found


def test_the_systemd_unit_verifies_without_warnings(systemd_analyze: str, tmp_path: Path) -> None:
    checked = subprocess.run(
        [systemd_analyze, "verify", str(local_unit(tmp_path))], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0 and checked.stderr == "" and checked.stdout == "", checked.stderr


def test_the_systemd_unit_is_hardened(systemd_analyze: str, tmp_path: Path) -> None:
    s = unit_settings()
    for key, value in {
        "DynamicUser": "yes", "StateDirectory": "dsm", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "NoNewPrivileges": "yes", "CapabilityBoundingSet": "", "MemoryDenyWriteExecute": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    }.items():  # fmt: skip
        assert s.get(key) == [value], key
    assert "@system-service" in s["SystemCallFilter"]
    # The data directory is the StateDirectory, the only writable place (a flag: it wins over the env file).
    assert "--data-dir ${STATE_DIRECTORY}" in s["ExecStart"][0]
    # Type=notify would need the node to send sd_notify, which it does not: readiness is the ExecStartPost.
    assert s["Type"] == ["exec"]
    assert "NOTIFY_SOCKET" not in "".join(p.read_text() for p in (ROOT / "src" / "dsm").rglob("*.py"))
    assert s["ExecStartPost"] == ["/opt/dsm/venv/bin/python /opt/dsm/wait-ready.py"]
    # `systemd-analyze security` scores exposure from 0 (locked down) to 10; fail above 2.0.
    rated = subprocess.run(
        [systemd_analyze, "security", "--offline=yes", "--threshold=20", str(local_unit(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rated.returncode == 0, rated.stdout[-2000:] + rated.stderr


def wait_ready(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DSM_")} | env
    return subprocess.run([sys.executable, str(WAIT_READY)], capture_output=True, text=True, env=environ, timeout=60)


def test_the_readiness_step_waits_for_a_joined_node(procs: list[Proc], tmp_path: Path) -> None:
    ready = Proc("w1", "127.0.0.1", tmp_path, [])
    procs.append(ready)
    assert wait_ready({"DSM_HTTP_ADDR": ready.http, "READY_TIMEOUT_S": "30"}).returncode == 0
    # A node whose bootstrap address answers nothing serves but is not ready: the step gives up and says why.
    lonely = Proc("w2", "127.0.0.2", tmp_path, ["127.0.0.1:1"], until="waiting")
    procs.append(lonely)
    failed = wait_ready({"DSM_HTTP_ADDR": lonely.http, "READY_TIMEOUT_S": "1"})
    assert failed.returncode == 1 and "not ready" in failed.stderr and "503" in failed.stderr, failed.stderr
    # A wildcard HTTP address is asked on loopback.
    port = ready.http.rpartition(":")[2]
    assert wait_ready({"DSM_HTTP_ADDR": f"0.0.0.0:{port}", "READY_TIMEOUT_S": "30"}).returncode == 0


def test_the_readiness_step_speaks_https_to_a_tls_node(procs: list[Proc], tmp_path: Path) -> None:
    files = ClusterCA(tmp_path / "ca").node("t1", "127.0.0.1")
    tls = {"DSM_TLS_CERT_FILE": files.cert, "DSM_TLS_KEY_FILE": files.key, "DSM_TLS_CA_FILE": files.ca}
    node = Proc("t1", "127.0.0.1", tmp_path, [], env=tls)
    procs.append(node)
    assert node.event["scheme"] == "https"
    env = {"DSM_HTTP_ADDR": node.http, "READY_TIMEOUT_S": "30"} | tls
    assert wait_ready(env).returncode == 0
    # It checks the node's certificate: without the cluster CA (the system's CAs) it never gets an answer.
    untrusted = wait_ready(env | {"DSM_TLS_CA_FILE": "", "READY_TIMEOUT_S": "1"})
    assert untrusted.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr, untrusted.stderr


# A wrapper that turns on PR_SET_MDWE (refuse memory that is writable and executable, or becomes executable,
# as systemd's MemoryDenyWriteExecute=yes) and then runs the rest of its arguments; exit 3 if the kernel
# cannot. With "--probe" it checks the refusal itself: exit 0 only if a W+X mapping is refused.
MDWE = """
import ctypes, mmap, os, sys
if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(3)
if sys.argv[1] == "--probe":
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except PermissionError:
        sys.exit(0)
    sys.exit(4)
os.execv(sys.argv[1], sys.argv[1:])
"""


def test_nodes_run_under_memory_deny_write_execute(procs: list[Proc], tmp_path: Path) -> None:
    probe = subprocess.run([sys.executable, "-c", MDWE, "--probe"], capture_output=True, timeout=60)
    if probe.returncode == 3:
        skip_or_fail("the kernel has no PR_SET_MDWE (Linux 6.3 or later)")
    assert probe.returncode == 0, "PR_SET_MDWE is on, yet a writable executable mapping was allowed"
    wrapper = [sys.executable, "-c", MDWE]
    a = Proc("m1", "127.0.0.1", tmp_path, [], wrapper=wrapper)
    procs.append(a)
    b = Proc("m2", "127.0.0.2", tmp_path, [a.listen], wrapper=wrapper)
    procs.append(b)
    a.client.put("k", b"v")
    eventually(lambda: holds(b, "k", b"v"), timeout=30)
    assert a.proc.poll() is None and b.proc.poll() is None


def env_file(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The variables a systemd EnvironmentFile sets, and the `DSM_*` ones it shows commented out; a value in
    single quotes is taken literally, as systemd does."""
    active: dict[str, str] = {}
    commented: dict[str, str] = {}
    for line in path.read_text().splitlines():
        found = re.fullmatch(r"(#?)([A-Z][A-Z0-9_]*)=(.*)", line)
        if found is None:
            assert not line or line.startswith("#"), line
            continue
        value = found.group(3)
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        else:
            assert '"' not in value and "'" not in value, f"systemd would read these quotes as quoting: {line}"
        (commented if found.group(1) else active)[found.group(2)] = value
    return active, {k: v for k, v in commented.items() if k.startswith("DSM_")}


def test_the_environment_file_example_loads() -> None:
    active, commented = env_file(ENV_EXAMPLE)
    mentioned = {k for k in active if k.startswith("DSM_")} | set(commented)
    unknown = {name for name in mentioned if name[len("DSM_") :].lower() not in FIELDS}
    assert not unknown, f"not settings of StorageConfig: {sorted(unknown)}"
    config = StorageConfig.load(env={k: v for k, v in active.items() if k.startswith("DSM_")})
    assert config.node_id == "dsm-a" and config.listen_addr == "0.0.0.0:7400"
    assert config.advertise_addr in config.bootstrap.split(",")
    # The optional settings shown commented out are valid too (but the TLS files, which do not exist here).
    optional = {k: v for k, v in commented.items() if not k.endswith("_FILE")}
    assert optional, "the example shows optional settings"
    StorageConfig.load(env={k: v for k, v in active.items() if k.startswith("DSM_")} | optional)


# ------------------------------------------------------------------------------------------ Kubernetes


def manifests() -> Iterator[dict[str, Any]]:
    try:
        import yaml
    except ImportError:
        skip_or_fail("PyYAML is missing (pip install -e '.[dev]')")
    for path in KUBERNETES:
        yield from (doc for doc in yaml.safe_load_all(path.read_text()) if doc)


def test_the_kubernetes_manifests_pass_the_kubernetes_schemas() -> None:
    try:
        import kubernetes_validate
    except ImportError:
        skip_or_fail("kubernetes-validate is missing (pip install -e '.[dev]')")
    kinds = []
    for doc in manifests():
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)  # raises ValidationError
        kinds.append(doc["kind"])
    assert sorted(kinds) == ["PodDisruptionBudget", "Secret", "Service", "Service", "StatefulSet"]


def pod_env(container: dict[str, Any], pod: str, secret: dict[str, str]) -> dict[str, str]:
    """The container's environment in pod `pod`, as the kubelet makes it: `$(VAR)` of earlier variables
    expanded, the pod name from the downward API, secrets from `secret`."""
    env: dict[str, str] = {}
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], var["value"])
        elif "fieldRef" in var["valueFrom"]:
            assert var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            env[var["name"]] = pod
        else:
            env[var["name"]] = secret[var["valueFrom"]["secretKeyRef"]["key"]]
    return env


def test_the_statefulset_fits_together() -> None:
    docs = list(manifests())
    [sts] = [d for d in docs if d["kind"] == "StatefulSet"]
    [secret] = [d for d in docs if d["kind"] == "Secret"]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    spec = sts["spec"]
    headless = services[spec["serviceName"]]["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    assert spec["podManagementPolicy"] == "Parallel"
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["requests"] and container["resources"]["limits"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
    for refs in (d.get("valueFrom", {}).get("secretKeyRef") for d in container["env"]):
        assert refs is None or (refs["name"] == secret["metadata"]["name"] and refs["key"] in secret["stringData"])
    [claim] = spec["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    name, replicas = sts["metadata"]["name"], spec["replicas"]
    pods = [f"{name}-{i}" for i in range(replicas)]
    for i, pod_name in enumerate(pods):
        env = pod_env(container, pod_name, secret["stringData"])
        assert all(k[len("DSM_") :].lower() in FIELDS for k in env if k.startswith("DSM_")), sorted(env)
        config = StorageConfig.load(env={k: v for k, v in env.items() if k.startswith("DSM_")})
        assert config.node_id == pod_name and config.data_dir == mounts[claim["metadata"]["name"]]
        assert config.listen_addr.endswith(f":{ports['peer']}") and config.http_addr.endswith(f":{ports['http']}")
        # Each pod advertises its stable DNS name under the headless Service, and every pod is a bootstrap.
        peers = [f"{p}.{spec['serviceName']}:{ports['peer']}" for p in pods]
        assert config.advertise_addr == peers[i] and config.bootstrap.split(",") == peers
        assert config.cluster_secret == secret["stringData"]["cluster-secret"]
    assert services["dsm"]["spec"]["ports"][0]["targetPort"] == "http"
