"""The Kubernetes manifests (ops/k8s: a Kustomize base and a production overlay) render with
``kubectl kustomize`` offline, every object of a core kind validates against the Kubernetes
schemas (``kubernetes-validate``, strict: no unknown field), the operator's custom resources
have their shape, the config they mount passes the proxy's own loader, the drain's numbers
fit the pod's grace, and the PrometheusRule is the shipped alert rules."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from proxy.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.30.0"


def rendered(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is installed by ./scripts/setup (Debian's kubernetes-client)"
    out = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "ops" / "k8s" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


@pytest.mark.parametrize("overlay", ["base", "overlays/production"])
def test_the_manifests_render_and_validate(overlay: str) -> None:
    docs = rendered(overlay)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "PodDisruptionBudget",
            "PrometheusRule",
            "Service",
            "Service",
            "ServiceMonitor",
            "StatefulSet",
        ]
    )
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            assert {"apiVersion", "kind", "metadata", "spec"} <= set(doc)
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_proxy_pods_drain_within_their_grace_and_read_secrets_from_files() -> None:
    docs = rendered("overlays/production")
    proxy = by_kind(docs, "StatefulSet", "extra-usage-proxy")
    assert proxy["spec"]["replicas"] == 3
    pod = proxy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config = by_kind(docs, "ConfigMap", "extra-usage-proxy-config")
    toml = config["data"]["proxy.toml"]
    server = tomllib.loads(toml)["server"]
    # the process is gone within drain_delay_s + shutdown_grace_s + 3 s of SIGTERM, which
    # comes after the preStop hook
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + (
        server["drain_delay_s"] + server["shutdown_grace_s"] + 3
    )
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["image"] == "registry.example.com/extra-usage-proxy:0.1.0"
    env = {e["name"]: e["value"] for e in container["env"]}
    for secret in ("OPERATOR_TOKEN", "SERVICE_TOKEN", "UPSTREAM_API_KEY", "REDIS_URL"):
        assert env[f"{secret}_FILE"].startswith("/var/run/secrets/")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["journal"] == tomllib.loads(toml)["policy"]["journal_dir"].rsplit("/", 1)[0]
    assert proxy["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "journal"
    assert pod["securityContext"]["runAsUser"] == 10001
    # the config the pods mount is one the proxy loads
    loaded = parse_config(tomllib.loads(toml), "<k8s>", {})
    assert loaded.server.metrics_port == 9464 and loaded.ledger.metrics_port == 9465
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": loaded.server.port, "metrics": loaded.server.metrics_port}
    sink = by_kind(docs, "Deployment", "extra-usage-ledger-sink")
    (sink_container,) = sink["spec"]["template"]["spec"]["containers"]
    assert sink_container["livenessProbe"]["httpGet"]["port"] == "metrics"
    assert sink_container["ports"][0]["containerPort"] == loaded.ledger.metrics_port


def test_the_prometheus_rule_is_the_shipped_alert_rules() -> None:
    rule = by_kind(rendered("base"), "PrometheusRule", "extra-usage-proxy")
    shipped = yaml.safe_load((ROOT / "ops" / "prometheus-alerts.yml").read_text())
    assert rule["spec"] == shipped, "regenerate ops/k8s/base/prometheusrule.yaml"
