"""The Grafana dashboard in deploy/ names only metrics the farm exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from app.api.metrics import FAMILIES

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "modelfarm.json"
# A histogram family is queried through its _bucket, _count and _sum series.
SUFFIXES = ("_bucket", "_count", "_sum")


def _exported(name: str) -> bool:
    if name in FAMILIES:
        return True
    return any(name.endswith(s) and name.removesuffix(s) in FAMILIES for s in SUFFIXES)


def test_every_metric_the_dashboard_uses_is_exported() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    names = {n for e in exprs for n in re.findall(r"\bmodelfarm_[a-z_]+", e)}
    assert names, "the dashboard queries no modelfarm metric"
    assert {n for n in names if not _exported(n)} == set()


def test_the_dashboard_shows_what_operators_alert_on() -> None:
    text = DASHBOARD.read_text()
    for family in (
        "modelfarm_queue_depth",
        "modelfarm_workers",
        "modelfarm_items_processed_total",
        "modelfarm_job_duration_seconds_bucket",
        "modelfarm_webhook_backlog",
        "modelfarm_webhook_failures_total",
    ):
        assert family in text
