"""The shipped alert rules and dashboard only use metrics the proxy exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from proxy.obs.metrics import Metrics, SinkMetrics

ROOT = Path(__file__).resolve().parents[2]


def exported() -> set[str]:
    names: set[str] = set()
    registries = (Metrics().registry, SinkMetrics().registry)
    for metric in (m for r in registries for m in r.collect()):
        for sample in metric.samples:
            names.add(sample.name)
        names.add(metric.name)
        names.add(metric.name + "_total")
        names.add(metric.name + "_bucket")
    return names


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(eup_[a-z0-9_]+)", expr))


def test_alert_rules_use_exported_metrics() -> None:
    doc = yaml.safe_load((ROOT / "ops" / "prometheus-alerts.yml").read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert len(rules) >= 8
    known = exported()
    for rule in rules:
        assert {"alert", "expr", "labels", "annotations"} <= set(rule)
        assert metric_names(rule["expr"]) <= known, rule["alert"]


def test_dashboard_uses_exported_metrics() -> None:
    doc = json.loads((ROOT / "ops" / "grafana-dashboard.json").read_text())
    known = exported()
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    assert len(exprs) >= 14
    for expr in exprs:
        assert metric_names(expr) <= known, expr


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(
        Path(__import__("sys").executable).parent / "hadolint"
    )
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert "USER 10001" in text
    assert "HEALTHCHECK" in text
