"""The kustomize base in ``deploy/``: valid Kubernetes objects, wired the way the code works.

Everything here is offline. Each manifest is checked against the pinned
Kubernetes versions' schemas with ``kubernetes-validate`` (strict: unknown
fields fail), and the agent's and ``bdn pull``'s arguments go through the real
``bdn`` parser, so a renamed flag breaks this test rather than a rollout.
When ``kubectl`` (or ``kustomize``) is installed the base is also built; it is
never downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from bdn.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "base"

# The oldest Kubernetes release the base supports, and a recent one; both are
# shipped with kubernetes-validate, so the check needs no network.
KUBERNETES_VERSIONS = ("1.30.0", "1.33.0")

AGENT_UID = 10001
"""The image's user (Dockerfile) and the owner of the agent's host directories."""

_SECRETISH_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.IGNORECASE)
# Shapes of real credentials: AWS access key ids, Hugging Face tokens, PEM
# keys, service-account JSON, and long random-looking strings.
_REAL_LOOKING = (
    re.compile(r"\bA(KIA|SIA)[0-9A-Z]{16}\b"),
    re.compile(r"\bhf_[A-Za-z0-9]{20,}\b"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\"private_key\"\s*:"),
    re.compile(r"(?<![A-Za-z0-9/+_:.-])[A-Za-z0-9/+]{32,}={0,2}(?![A-Za-z0-9/+_.-])"),
)


# -- loading -----------------------------------------------------------------------------


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "kustomization.yaml").read_text(encoding="utf-8"))


def listed_files() -> list[Path]:
    return [DEPLOY / r for r in kustomization()["resources"]]


def documents() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in listed_files():
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                docs.append((path, doc))
    return docs


def objects(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in documents() if d["kind"] == kind}


def one(kind: str, name: str) -> dict[str, Any]:
    found = objects(kind)
    assert name in found, f"deploy/ defines no {kind} {name!r}; found {sorted(found)}"
    return found[name]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def workloads() -> list[dict[str, Any]]:
    return [d for _, d in documents() if d["kind"] in ("DaemonSet", "Deployment", "StatefulSet")]


def containers(spec: dict[str, Any], *, init: bool = True) -> Iterator[dict[str, Any]]:
    if init:
        yield from spec.get("initContainers", [])
    yield from spec["containers"]


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    for c in containers(spec):
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name!r} in the pod spec")


def volume(spec: dict[str, Any], name: str) -> dict[str, Any]:
    for v in spec.get("volumes", []):
        if v["name"] == name:
            return v
    raise AssertionError(f"no volume {name!r} in the pod spec")


def mount_for(spec: dict[str, Any], c: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    """The volumeMount whose mountPath holds ``path`` in container ``c``, and the rest."""
    target = PurePosixPath(path)
    best: dict[str, Any] | None = None
    for m in c.get("volumeMounts", []):
        mp = PurePosixPath(m["mountPath"])
        if (target == mp or mp in target.parents) and (
            best is None or len(mp.parts) > len(PurePosixPath(best["mountPath"]).parts)
        ):
            best = m
    assert best is not None, f"{path} is on no volume of container {c['name']!r}"
    rest = str(target.relative_to(best["mountPath"]))
    return best, rest


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion in args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), text)


def container_env(c: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet would set it, with stand-ins for
    the downward API and without optional Secrets (the base defines none)."""
    config = objects("ConfigMap")
    fields = {"status.podIP": "10.1.2.3", "spec.nodeName": "gpu-node-1"}
    env: dict[str, str] = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = expand(e["value"], env)
            continue
        source = e["valueFrom"]
        if "fieldRef" in source:
            env[e["name"]] = fields[source["fieldRef"]["fieldPath"]]
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            data = config.get(ref["name"], {}).get("data", {})
            if ref["key"] in data:
                env[e["name"]] = data[ref["key"]]
            else:
                assert ref.get("optional"), f"{e['name']}: ConfigMap key {ref} is missing"
    return env


def parse_cli(argv: list[str]) -> argparse.Namespace:
    """``argv`` through the real ``bdn`` parser; an unknown flag fails the test."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"`bdn {' '.join(argv)}` is rejected by the bdn CLI: {err.getvalue()}")


def flag(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


def bdn_commands() -> set[str]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


# -- the base as a whole ------------------------------------------------------------------


def test_kustomization_lists_exactly_the_files_of_the_base() -> None:
    listed = kustomization()["resources"]
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    missing = [r for r in listed if not (DEPLOY / r).is_file()]
    assert not missing, f"kustomization.yaml lists files that do not exist: {missing}"
    on_disk = sorted(str(p.relative_to(DEPLOY)) for p in BASE.iterdir() if p.is_file())
    assert sorted(listed) == on_disk, (
        "kustomization.yaml must list every file of deploy/base and nothing else: "
        f"listed {sorted(listed)}, on disk {on_disk}"
    )
    extra = sorted(p.name for p in DEPLOY.iterdir() if p.name not in ("kustomization.yaml", "base"))
    assert not extra, f"files outside the base in deploy/: {extra}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_a_valid_kubernetes_object(version: str) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is not installed; install the dev extra: "
                    "pip install -e '.[dev]'")
    failures = []
    for path, doc in documents():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            where = "/".join(str(p) for p in err.path)
            failures.append(f"{path.name}: {doc['kind']} {doc['metadata']['name']}: "
                            f"{where}: {err.message}")
    assert not failures, "\n".join(failures)


def test_strict_validation_rejects_unknown_fields() -> None:
    """Guards the check above: a misspelt field must not pass as an extension."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
               "spec": {"clusterIp": "None", "ports": [{"port": 7070}]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, KUBERNETES_VERSIONS[0], strict=True)


def test_the_base_builds_with_kustomize_when_it_is_installed() -> None:
    if shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize", str(DEPLOY)]
    elif shutil.which("kustomize"):
        cmd = ["kustomize", "build", str(DEPLOY)]
    else:
        pytest.skip("neither kubectl nor kustomize is installed; the listed files were "
                    "validated one by one instead")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    built = [d for d in yaml.safe_load_all(res.stdout) if d]
    assert len(built) == len(documents())
    image = kustomization()["images"][0]
    for d in built:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == kustomization()["namespace"], d["kind"]
        if d["kind"] in ("DaemonSet", "Deployment"):
            for c in containers(pod_spec(d)):
                assert c["image"] != image["name"], f"{c['name']}: image not rewritten"


def test_pods_do_not_mount_api_tokens_and_use_their_own_service_account() -> None:
    accounts = objects("ServiceAccount")
    assert not objects("Role") and not objects("ClusterRole"), (
        "nothing in BDN reads the Kubernetes API; a Role needs a reason in serviceaccounts.yaml"
    )
    used = set()
    for w in workloads():
        spec = pod_spec(w)
        assert spec.get("serviceAccountName") in accounts, w["metadata"]["name"]
        assert spec.get("automountServiceAccountToken") is False, w["metadata"]["name"]
        used.add(spec["serviceAccountName"])
    assert len(used) == len(workloads()), "each component gets its own ServiceAccount"


def test_every_container_has_requests_and_limits() -> None:
    for w in workloads():
        for c in containers(pod_spec(w)):
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                for what in ("cpu", "memory"):
                    assert what in res.get(part, {}), (
                        f"{w['metadata']['name']}/{c['name']}: no {part}.{what}"
                    )


def test_every_server_has_readiness_and_liveness_probes() -> None:
    for w in workloads():
        for c in containers(pod_spec(w), init=False):
            for probe in ("readinessProbe", "livenessProbe"):
                assert probe in c, f"{w['metadata']['name']}/{c['name']}: no {probe}"


def test_containers_are_locked_down_and_only_the_host_dirs_step_runs_as_root() -> None:
    for w in workloads():
        spec = pod_spec(w)
        assert spec["securityContext"].get("runAsNonRoot") is True, w["metadata"]["name"]
        for c in containers(spec):
            sc = c.get("securityContext", {})
            where = f"{w['metadata']['name']}/{c['name']}"
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("privileged"), where
            if sc.get("runAsUser") == 0:
                assert (w["kind"], c["name"]) == ("DaemonSet", "host-dirs"), (
                    f"{where} runs as root; only the agent's host-dirs step may"
                )
                assert c in spec["initContainers"]
                assert set(sc["capabilities"]["add"]) <= {"CHOWN", "FOWNER", "DAC_OVERRIDE"}


# -- secrets ------------------------------------------------------------------------------


def test_no_secret_value_is_in_the_base() -> None:
    for path, doc in documents():
        if doc["kind"] == "Secret":
            values = {**doc.get("data", {}), **doc.get("stringData", {})}
            for key, value in values.items():
                assert re.fullmatch(r"(REPLACE[-_A-Za-z]*|CHANGE[-_A-Za-z]*|)", str(value)), (
                    f"{path.name}: Secret {doc['metadata']['name']} key {key} holds a value"
                )
    for w in workloads():
        for c in containers(pod_spec(w)):
            for e in c.get("env", []):
                if "value" in e and _SECRETISH_NAME.search(e["name"]):
                    assert e["value"].startswith("/"), (
                        f"{c['name']}: {e['name']} is set inline; take it from a Secret"
                    )
    for path in [DEPLOY / "kustomization.yaml", *listed_files()]:
        text = path.read_text(encoding="utf-8")
        for pattern in _REAL_LOOKING:
            found = pattern.search(text)
            assert found is None, f"{path.name}: {found[0]!r} looks like a real credential"


def test_every_referenced_secret_comes_with_its_create_command() -> None:
    text = "\n".join(p.read_text(encoding="utf-8") for p in listed_files())
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    names = set(re.findall(r"secretName: (\S+)", text))
    names |= set(re.findall(r"secretKeyRef:\s+name: (\S+)", text))
    assert names, "the base references no Secret at all"
    for name in names:
        command = f"create secret generic {name}"
        assert command in text, f"no comment says how to create Secret {name}"
        assert command in readme, f"README.md does not say how to create Secret {name}"


# -- the agent ------------------------------------------------------------------------------


def _agent() -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    ds = one("DaemonSet", "bdn-agent")
    spec = pod_spec(ds)
    agent = container(spec, "agent")
    args = agent["args"]
    assert args[0] == "agent", "the agent container runs `bdn agent ...`"
    return spec, agent, args


def _daemon_args(daemon: dict[str, Any], tmp_path: Path) -> argparse.Namespace:
    """A daemon container's args parsed by ``bdn``'s parser, its env as the environment;
    the mounted token file is replaced by a test one (the Secret is not here)."""
    env = container_env(daemon)
    args = [expand(a, env) for a in daemon["args"]]
    token = tmp_path / "token"
    token.write_text("t" * 64)
    token_path = flag(args, "--token-file")
    ns = parse_cli([a if a != token_path else str(token) for a in args])
    ns.environ = env
    return ns


def test_agent_args_are_flags_bdn_agent_accepts_and_form_a_valid_config(
    tmp_path: Path,
) -> None:
    from bdn.cli.agent import agent_config

    _, agent, _ = _agent()
    # Raises ConfigError on any value the agent would refuse.
    config = agent_config(_daemon_args(agent, tmp_path))
    assert config.listen == ("0.0.0.0", 7070)
    assert config.advertise == "10.1.2.3:7070", "--advertise is the pod IP (downward API)"
    assert config.settings.store_uri == objects("ConfigMap")["bdn-config"]["data"]["BDN_STORE"]
    assert config.membership.dns_name == "bdn-agents"
    assert config.membership.peer_port == 7070


def test_agent_files_live_on_the_volumes_they_need() -> None:
    spec, agent, args = _agent()
    cache, _ = mount_for(spec, agent, flag(args, "--cache"))
    sock, _ = mount_for(spec, agent, flag(args, "--socket"))
    token, key = mount_for(spec, agent, flag(args, "--token-file"))
    assert volume(spec, cache["name"])["hostPath"]["path"] == "/var/lib/bdn"
    assert volume(spec, sock["name"])["hostPath"]["path"] == "/var/run/bdn"
    secret = volume(spec, token["name"])["secret"]
    assert key in {i["path"] for i in secret["items"]}
    # The agent materializes trees at paths pods give it, so its paths must be
    # the node's: each hostPath is mounted at its own path.
    for m in (cache, sock):
        assert m["mountPath"] == volume(spec, m["name"])["hostPath"]["path"]


def test_agent_listens_where_its_probes_port_and_headless_service_point() -> None:
    _, agent, args = _agent()
    port = int(flag(args, "--listen").rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in agent["ports"]}
    assert ports["peer"] == port
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert agent[probe]["httpGet"] == {"path": "/healthz", "port": "peer"}, probe
    svc = one("Service", flag(args, "--peers-dns"))
    assert svc["spec"]["clusterIP"] == "None", "peer discovery needs a headless Service"
    labels = one("DaemonSet", "bdn-agent")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert [p["port"] for p in svc["spec"]["ports"]] == [port]


def test_agent_runs_on_gpu_nodes() -> None:
    spec, _, _ = _agent()
    assert any("nvidia.com/gpu" in k for k in spec["nodeSelector"])
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
        spec["tolerations"]
    )


def test_grace_period_covers_the_agents_drain() -> None:
    spec, _, args = _agent()
    drain = float(flag(args, "--drain-timeout"))
    # Pulls, then each of the two servers, may each take up to --drain-timeout.
    assert spec["terminationGracePeriodSeconds"] >= 3 * drain + 1


def test_agent_runs_as_the_image_user_and_its_host_dirs_are_handed_to_it() -> None:
    spec, agent, _ = _agent()
    assert spec["securityContext"]["runAsUser"] == AGENT_UID
    assert spec["securityContext"]["runAsGroup"] == AGENT_UID
    prep = container(spec, "host-dirs")
    script = " ".join(prep["args"])
    assert f"chown {AGENT_UID}:{AGENT_UID}" in script
    for m in agent["volumeMounts"]:
        if "hostPath" in volume(spec, m["name"]):
            assert m["mountPath"] in script, f"{m['mountPath']} is not handed to the agent"


# -- the mirror server -----------------------------------------------------------------------


def test_mirror_server_listens_where_its_probes_and_service_point() -> None:
    dep = one("Deployment", "bdn-mirror")
    spec = pod_spec(dep)
    mirror = container(spec, "mirror")
    args = mirror["args"]
    assert args[0] == "mirror-server"
    port = int(flag(args, "--listen").rsplit(":", 1)[1])
    assert {p["name"]: p["containerPort"] for p in mirror["ports"]} == {"http": port}
    for probe in ("readinessProbe", "livenessProbe"):
        assert mirror[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    svc = one("Service", "bdn-mirror")
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    state, _ = mount_for(spec, mirror, flag(args, "--state-dir"))
    claim = volume(spec, state["name"])["persistentVolumeClaim"]["claimName"]
    assert claim in objects("PersistentVolumeClaim")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate", (
        "one server per state directory, and a ReadWriteOnce volume cannot attach twice"
    )
    token, key = mount_for(spec, mirror, flag(args, "--token-file"))
    assert key in {i["path"] for i in volume(spec, token["name"])["secret"]["items"]}


def test_mirror_server_args_are_flags_it_accepts_and_form_a_valid_config(
    tmp_path: Path,
) -> None:
    if "mirror-server" not in bdn_commands():
        pytest.skip("`bdn mirror-server` is not part of this checkout's CLI yet")
    from bdn.cli.mirror_server import server_config

    spec = pod_spec(one("Deployment", "bdn-mirror"))
    mirror = container(spec, "mirror")
    # Raises ConfigError on any value the server would refuse.
    config = server_config(_daemon_args(mirror, tmp_path))
    assert config.listen == ("0.0.0.0", 7080)
    assert config.settings.store_uri == objects("ConfigMap")["bdn-config"]["data"]["BDN_STORE"]
    # Running jobs get --drain-timeout, then the server closes within 5 s.
    assert spec["terminationGracePeriodSeconds"] >= config.drain_timeout + 10


# -- the example model ---------------------------------------------------------------------


def test_model_pod_pulls_through_the_agent_and_mounts_the_tree_read_only() -> None:
    agent_spec, agent, agent_args = _agent()
    spec = pod_spec(one("Deployment", "example-model"))
    init = container(spec, "weights")
    args = init["args"]
    assert args[0] == "pull"
    ns = parse_cli(args)
    # The socket: the agent's --socket, on the same host directory.
    assert ns.agent.startswith("unix://")
    sock = ns.agent[len("unix://"):]
    sock_mount, rest = mount_for(spec, init, sock)
    host_sock = PurePosixPath(volume(spec, sock_mount["name"])["hostPath"]["path"]) / rest
    assert str(host_sock) == flag(agent_args, "--socket")
    # uid/gid that may connect to the socket (0660, group of the agent).
    assert init["securityContext"]["runAsGroup"] == agent_spec["securityContext"]["runAsGroup"]
    # --to is a node path inside the agent's node-data volume (same filesystem
    # as its cache, so the tree is hardlinks), and the server mounts exactly that.
    to = PurePosixPath(ns.to)
    node_mount, _ = mount_for(agent_spec, agent, str(to))
    assert node_mount["mountPath"] == volume(agent_spec, node_mount["name"])["hostPath"]["path"]
    assert node_mount == mount_for(agent_spec, agent, flag(agent_args, "--cache"))[0]
    server = container(spec, "server")
    tree_mounts = [m for m in server["volumeMounts"] if "hostPath" in volume(spec, m["name"])]
    assert len(tree_mounts) == 1
    tree = tree_mounts[0]
    host = PurePosixPath(volume(spec, tree["name"])["hostPath"]["path"]) / tree.get("subPath", "")
    assert host == to, f"the server mounts {host}, the agent materializes {to}"
    assert tree.get("readOnly") is True, "model pods must mount the tree read-only"
    assert tree["mountPath"] in server["args"], "the server loads the mounted tree"
    for c in containers(spec):
        for m in c.get("volumeMounts", []):
            if m["name"] == tree["name"]:
                assert m.get("readOnly") is True, f"{c['name']} mounts the trees writable"


# -- the documentation ----------------------------------------------------------------------


def test_readme_settings_table_lists_every_bdn_variable_the_code_reads() -> None:
    code = "\n".join(p.read_text(encoding="utf-8")
                     for d in ("bdn", "agent") for p in (ROOT / d).rglob("*.py"))
    # BDN_SECRET_<NAME> is a family; its examples in docstrings are not settings.
    used = {v for v in re.findall(r"\bBDN_[A-Z0-9_]*[A-Z0-9]\b", code)
            if not v.startswith("BDN_SECRET_")}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("### Settings")
    table = readme[start:readme.index("\n## ", start)]
    rows = set(re.findall(r"^\| `(BDN_[A-Z0-9_<>]+)`", table, re.MULTILINE))
    assert "BDN_SECRET_<NAME>" in rows
    assert not used - rows, f"README.md's settings table lacks {sorted(used - rows)}"
    assert not rows - used - {"BDN_SECRET_<NAME>"}, (
        f"README.md's settings table names variables no code reads: {sorted(rows - used)}"
    )
