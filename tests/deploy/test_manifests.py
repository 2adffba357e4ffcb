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

_CLUSTER_SCOPED = ("Namespace", "CSIDriver")
"""Kinds kustomize leaves without a namespace."""

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
    fields = {"status.podIP": "10.1.2.3", "status.hostIP": "192.0.2.10",
              "spec.nodeName": "gpu-node-1"}
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
        if d["kind"] not in _CLUSTER_SCOPED:
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


_ROOT_CONTAINERS = {
    # Creates the agent's host directories and hands them to its user.
    ("DaemonSet", "host-dirs"),
    # Writes its registration socket in kubelet's root-owned plugins_registry.
    ("DaemonSet", "node-driver-registrar"),
}
_PRIVILEGED_CONTAINERS = {
    # `bdn csi` mounts trees into pods: root, CAP_SYS_ADMIN, and Bidirectional
    # mount propagation, which Kubernetes allows only to a privileged container.
    ("DaemonSet", "csi"),
}


def test_containers_are_locked_down_and_only_the_host_dirs_step_runs_as_root() -> None:
    for w in workloads():
        spec = pod_spec(w)
        assert spec["securityContext"].get("runAsNonRoot") is True, w["metadata"]["name"]
        for c in containers(spec):
            sc = c.get("securityContext", {})
            where = f"{w['metadata']['name']}/{c['name']}"
            if (w["kind"], c["name"]) in _PRIVILEGED_CONTAINERS:
                assert sc.get("privileged") is True and sc.get("readOnlyRootFilesystem"), where
                assert c["args"][0] == "csi", f"{where} runs something else than `bdn csi`"
                continue
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("privileged"), where
            if sc.get("runAsUser") == 0:
                assert (w["kind"], c["name"]) in _ROOT_CONTAINERS, (
                    f"{where} runs as root; only {sorted(_ROOT_CONTAINERS)} may"
                )
                assert set(sc["capabilities"].get("add", [])) <= {
                    "CHOWN", "FOWNER", "DAC_OVERRIDE"}


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
    # Trees go beside the cache, never in it (issue #11): the init script makes the dir.
    assert config.allowed_trees_roots == (Path("/var/lib/bdn/trees"),)
    assert "/var/lib/bdn/trees" in " ".join(container(pod_spec(one("DaemonSet", "bdn-agent")),
                                                      "host-dirs")["args"])


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


def test_agents_starting_together_find_each_other_before_any_is_ready() -> None:
    # Each agent waits for the peers DNS lists before it serves pulls; an answer
    # of ready pods only would hide the agents that start with it (issue #10).
    _, _, args = _agent()
    svc = one("Service", flag(args, "--peers-dns"))
    assert svc["spec"].get("publishNotReadyAddresses") is True


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
    # An explicit allowlist, never the pod's own files (docs/SECURITY.md); the
    # README's walkthrough mirrors a Qwen model through it.
    assert config.sources.rules and not any(
        r.startswith(("file:", "/")) for r in config.sources.rules)
    from bdn.config.weights import parse_source

    assert config.sources.allows(parse_source("hf://Qwen/Qwen2.5-0.5B-Instruct@main"))
    assert 0 < config.job_retention <= 30 * 86400


# -- the example model ---------------------------------------------------------------------


def _csi_plugin() -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    spec = pod_spec(one("DaemonSet", "bdn-agent"))
    plugin = container(spec, "csi")
    env = container_env(plugin)
    return spec, plugin, [expand(a, env) for a in plugin["args"]]


def test_csi_driver_is_ephemeral_inline_with_pod_info_and_no_attach() -> None:
    [driver] = objects("CSIDriver").values()
    spec = driver["spec"]
    assert spec["volumeLifecycleModes"] == ["Ephemeral"]
    assert spec["podInfoOnMount"] is True, "holds record the pod (csi.storage.k8s.io/pod.*)"
    assert spec["attachRequired"] is False, "there is no controller to attach with"
    assert spec["fsGroupPolicy"] == "None", "kubelet must never chown a read-only shared tree"


def test_csi_plugin_args_form_a_valid_config_wired_to_the_agent(tmp_path: Path) -> None:
    from bdn.cli.csi import csi_config

    spec, plugin, args = _csi_plugin()
    _, agent, agent_args = _agent()
    assert args[0] == "csi"
    config = csi_config(parse_cli(args))  # Raises ConfigError on a value it would refuse.
    [driver] = objects("CSIDriver")
    assert config.driver_name == driver
    assert config.node_id == "gpu-node-1", "--node-id is the node name (downward API)"
    # The agent it asks: the agent's own socket, on the same host directory.
    assert config.agent == "unix://" + flag(agent_args, "--socket")
    sock, _ = mount_for(spec, plugin, flag(agent_args, "--socket"))
    assert volume(spec, sock["name"])["hostPath"]["path"] == "/var/run/bdn"
    # Trees: under the agent's --trees-root, seen at the same path by both, in
    # the volume that holds the cache (hardlinks need one filesystem).
    assert str(config.trees_root) == flag(agent_args, "--trees-root")
    trees, _ = mount_for(spec, plugin, str(config.trees_root))
    assert trees == mount_for(spec, agent, flag(agent_args, "--cache"))[0]
    # Holds survive restarts: the state dir is on a hostPath.
    state, _ = mount_for(spec, plugin, str(config.state_dir))
    assert "hostPath" in volume(spec, state["name"])
    # Mounts into pods reach the node: kubelet's directory, Bidirectional.
    kubelet, _ = mount_for(spec, plugin, "/var/lib/kubelet/pods")
    assert kubelet.get("mountPropagation") == "Bidirectional"
    assert volume(spec, kubelet["name"])["hostPath"]["path"] == kubelet["mountPath"]


def test_registrar_registers_the_socket_the_plugin_serves() -> None:
    spec, plugin, args = _csi_plugin()
    endpoint = flag(args, "--endpoint")
    ep_mount, _ = mount_for(spec, plugin, endpoint)
    host_dir = volume(spec, ep_mount["name"])["hostPath"]["path"]
    [driver] = objects("CSIDriver")
    assert host_dir == f"/var/lib/kubelet/plugins/{driver}"
    reg = container(spec, "node-driver-registrar")
    opts = dict(a.lstrip("-").split("=", 1) for a in reg["args"])
    # Kubelet dials the node path; the registrar reaches the same socket in its mount.
    assert opts["kubelet-registration-path"] == endpoint
    reg_mount, rest = mount_for(spec, reg, opts["csi-address"])
    assert volume(spec, reg_mount["name"])["hostPath"]["path"] == host_dir
    assert str(PurePosixPath(host_dir) / rest) == endpoint
    registration, _ = mount_for(spec, reg, "/registration")
    assert volume(spec, registration["name"])["hostPath"]["path"] == (
        "/var/lib/kubelet/plugins_registry")


def test_model_pod_gets_its_weights_as_a_read_only_csi_volume() -> None:
    from bdn.csi.attributes import parse_volume

    spec = pod_spec(one("Deployment", "example-model"))
    assert not spec.get("initContainers"), "kubelet and the CSI plugin replace the initContainer"
    assert not [v for v in spec["volumes"] if "hostPath" in v], "model pods need no hostPath"
    [weights] = [v for v in spec["volumes"] if "csi" in v]
    [driver] = objects("CSIDriver")
    assert weights["csi"]["driver"] == driver
    assert weights["csi"]["readOnly"] is True
    # The attributes are a weights entry the plugin accepts (raises ConfigError if not).
    want = parse_volume(weights["csi"]["volumeAttributes"])
    assert not isinstance(want.target, str)
    assert want.target.source == "hf://Qwen/Qwen2.5-0.5B-Instruct@main", (
        "the README's walkthrough mirrors this source; a different one is never found")
    server = container(spec, "server")
    [m] = [m for m in server["volumeMounts"] if m["name"] == weights["name"]]
    assert m.get("readOnly") is True and "subPath" not in m
    assert m["mountPath"] in server["args"], "the server loads the mounted tree"


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
