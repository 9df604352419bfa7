"""Every alert fires on the series that must fire it, and not on quiet ones: the rules are
loaded into promtool's unit-test runner (``promtool test rules``), one test group per alert.
Every alert has a runbook."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "ops" / "prometheus-alerts.yml"

# alert: (series that fire it, when it is evaluated, the same series quiet, rendered summary
# where the summary is a template)
FIRING: dict[str, tuple[dict[str, str], str, dict[str, str], str | None]] = {
    "ExtraUsageProxyRedisErrors": (
        {'eup_redis_errors_total{script="admit"}': "0+60x20"},
        "10m",
        {'eup_redis_errors_total{script="admit"}': "0x20"},
        "Redis errors on the usage store (1/s)",
    ),
    "ExtraUsageProxyFailOpen": (
        {"eup_fail_open_requests_total": "0+60x20"},
        "10m",
        {"eup_fail_open_requests_total": "0x20"},
        None,
    ),
    "ExtraUsageProxyJournalDropped": (
        {'eup_journal_entries_total{outcome="torn"}': "0 0 1 1 1 1"},
        "5m",
        {'eup_journal_entries_total{outcome="torn"}': "0x6"},
        None,
    ),
    "ExtraUsageProxyLateReplayRefused": (
        {'eup_late_replays_total{outcome="refused"}': "0 1 1 1 1 1"},
        "5m",
        {'eup_late_replays_total{outcome="refused"}': "0x6"},
        None,
    ),
    "ExtraUsageProxySettleFailures": (
        {'eup_settle_failures_total{reason="recharged"}': "0+1x20"},
        "15m",
        {'eup_settle_failures_total{reason="journaled"}': "0+1x20"},
        None,
    ),
    "ExtraUsageProxyHighOverhead": (
        {
            'eup_proxy_overhead_seconds_bucket{le="0.005"}': "0x30",
            'eup_proxy_overhead_seconds_bucket{le="0.025"}': "0+60x30",
            'eup_proxy_overhead_seconds_bucket{le="+Inf"}': "0+60x30",
        },
        "20m",
        {
            'eup_proxy_overhead_seconds_bucket{le="0.005"}': "0+60x30",
            'eup_proxy_overhead_seconds_bucket{le="0.025"}': "0+60x30",
            'eup_proxy_overhead_seconds_bucket{le="+Inf"}': "0+60x30",
        },
        None,
    ),
    "ExtraUsageProxyUpstreamErrors": (
        {
            'eup_upstream_errors_total{kind="connect"}': "0+60x20",
            'eup_requests_total{route="messages",outcome="200"}': "0+60x20",
        },
        "15m",
        {
            'eup_upstream_errors_total{kind="connect"}': "0x20",
            'eup_requests_total{route="messages",outcome="200"}': "0+60x20",
        },
        None,
    ),
    "ExtraUsageProxyOvershoot": (
        {'eup_reservation_overshoot_usd_total{policy="estimate"}': "0+10x70"},
        "65m",
        {'eup_reservation_overshoot_usd_total{policy="estimate"}': "0+0.1x70"},
        None,
    ),
    "ExtraUsageProxyReloadWebhookFailing": (
        {'eup_auto_reloads_total{outcome="webhook_failed"}': "0 0 1 2 3 4"},
        "5m",
        {'eup_auto_reloads_total{outcome="webhook_failed"}': "0x6"},
        None,
    ),
    "ExtraUsageProxyUnknownModels": (
        {'eup_unknown_model_requests_total{line="opus"}': "0 1 1 1 1 1"},
        "5m",
        {'eup_unknown_model_requests_total{line="opus"}': "0x6"},
        None,
    ),
    "ExtraUsageLedgerSinkStalled": (
        {"eup_sink_last_pass_timestamp_seconds": "0x20"},
        "10m",
        {"eup_sink_last_pass_timestamp_seconds": "0+60x20"},
        None,
    ),
    "ExtraUsageLedgerSinkLagging": (
        {"eup_sink_lag_seconds": "3600x20"},
        "10m",
        {"eup_sink_lag_seconds": "5x20"},
        "The oldest charge not yet in PostgreSQL is 1h 0m 0s old",
    ),
    "ExtraUsageLedgerDeadLetters": (
        {"eup_sink_dead_letters_total": "0 1 1 1 1 1"},
        "5m",
        {"eup_sink_dead_letters_total": "0x6"},
        None,
    ),
    "ExtraUsageRedisRestartedWithLedgerRepair": (
        {"eup_sink_redis_restarts_total": "0 1 1 1 1 1"},
        "5m",
        {"eup_sink_redis_restarts_total": "0x6"},
        None,
    ),
    "ExtraUsageProxyDown": (
        {'up{job="extra-usage-proxy"}': "0x10"},
        "5m",
        {'up{job="extra-usage-proxy"}': "1x10"},
        None,
    ),
    "ExtraUsageProxyWorkerLost": (
        {"eup_worker_restarts_total": "0 1 1 1 1 1"},
        "5m",
        {"eup_worker_restarts_total": "0x6"},
        None,
    ),
    "ExtraUsageLedgerSinkDown": (
        {'up{job="extra-usage-ledger-sink"}': "0x10"},
        "5m",
        {'up{job="extra-usage-ledger-sink"}': "1x10"},
        None,
    ),
}


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def group(
    rule: dict[str, Any], series: dict[str, str], at: str, fires: bool, summary: str | None
) -> dict[str, Any]:
    expected: list[dict[str, Any]] = []
    if fires:
        labels = dict(rule["labels"])
        for name in series:  # a vector's own labels (up{job=...}) stay on the alert
            if name.startswith("up{"):
                labels.update(dict(p.split("=") for p in name[3:-1].split(",")))
                labels = {k: v.strip('"') for k, v in labels.items()}
        annotations = dict(rule["annotations"])
        if summary is not None:
            annotations["summary"] = summary
        expected.append({"exp_labels": labels, "exp_annotations": annotations})
    return {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "alert_rule_test": [{"eval_time": at, "alertname": rule["alert"], "exp_alerts": expected}],
    }


def test_every_alert_fires_when_it_must_and_not_otherwise(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by ./scripts/setup (Debian's prometheus)"
    tests = []
    for rule in rules():
        firing, at, quiet, summary = FIRING[rule["alert"]]
        tests.append(group(rule, firing, at, True, summary))
        tests.append(group(rule, quiet, at, False, None))
    shutil.copy(RULES, tmp_path / RULES.name)
    spec = {"rule_files": [RULES.name], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "alerts.test.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
    done = subprocess.run(
        [promtool, "test", "rules", "alerts.test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_tested_and_has_a_runbook() -> None:
    names = [r["alert"] for r in rules()]
    assert sorted(names) == sorted(FIRING)
    for rule in rules():
        url = rule["annotations"]["runbook_url"]
        assert (ROOT / url).is_file(), url
        assert "**What to do.**" in (ROOT / url).read_text()
