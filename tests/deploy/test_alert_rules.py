"""deploy/: the alert rules pass promtool's checks and unit tests; the dashboard and the rules
use only metrics the service exports, and the dashboard's queries parse."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from dvt_api.metrics import ApiMetrics

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "dvt-alerts.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "dvt-alerts.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dvt-service.json"
ALERTS = {"EngineDown", "ProjectionGapDetected", "ErrorRateHigh", "ProjectionLagHigh",
          "OutboxStuck", "WebhookFailing"}
#: Series Prometheus makes itself.
PROMETHEUS_OWN = {"up"}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum",
                                                            "_created"), "gauge": ("",)}


def exported_names() -> set[str]:
    """Every sample name the service's registry can expose."""
    names: set[str] = set()
    for family in ApiMetrics().registry.collect():
        names |= {family.name + s for s in SUFFIXES[family.type]}
    return names


def used_names(expr: str) -> set[str]:
    """The dvt metric names a PromQL expression reads."""
    return set(re.findall(r"\bdvt_[a-z_]+\b", expr))


def _run(promtool: str, *args: str, cwd: Path) -> str:
    done = subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _rules() -> list[dict[str, object]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def _dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p["targets"]]


def test_promtool_checks_the_rules(promtool: str) -> None:
    out = _run(promtool, "check", "rules", RULES.name, cwd=RULES.parent)
    assert f"SUCCESS: {len(ALERTS)} rules found" in out


def test_promtool_unit_tests_pass_and_cover_every_alert(promtool: str) -> None:
    out = _run(promtool, "test", "rules", RULE_TESTS.name, cwd=RULES.parent)
    assert "SUCCESS" in out
    tested = {c["alertname"] for t in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for c in t.get("alert_rule_test", []) if c.get("exp_alerts")}
    assert tested == ALERTS  # every alert is shown to fire somewhere


def test_rules_are_the_named_alerts_on_exported_metrics() -> None:
    rules = _rules()
    assert {str(r["alert"]) for r in rules} == ALERTS
    exported = exported_names()
    for rule in rules:
        names = used_names(str(rule["expr"]))
        assert names, rule["alert"]
        assert names <= exported, (rule["alert"], names - exported)


def test_dashboard_reads_exported_metrics_and_its_queries_parse(promtool: str,
                                                                tmp_path: Path) -> None:
    exprs = _dashboard_exprs()
    exported = exported_names()
    used = set().union(*(used_names(e) for e in exprs))
    assert used <= exported, used - exported
    for needed in ("dvt_runs_started_total", "dvt_step_duration_seconds_bucket",
                   "dvt_http_requests_total", "dvt_projection_lag_seconds_bucket",
                   "dvt_outbox_oldest_age_seconds", "dvt_webhook_attempts_total",
                   "dvt_limit_rejections_total"):
        assert needed in used, needed
    # Each query as a recording rule: promtool parses it (Grafana's $job made a regex).
    rules = [{"record": f"dashboard:query_{i}", "expr": e.replace("$job", ".*")}
             for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in _run(promtool, "check", "rules",
                                                        path.name, cwd=tmp_path)
