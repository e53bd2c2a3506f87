"""deploy/alerts.yml evaluated by ``promtool test rules`` over series written here (no Prometheus server)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO

PROMTOOL = shutil.which("promtool")
ALERTS = REPO / "deploy" / "alerts.yml"


def xid_alert(uuid: str, code: int) -> dict:
    [rule] = [
        r
        for g in yaml.safe_load(ALERTS.read_text())["groups"]
        for r in g["rules"]
        if r.get("alert") == "AltlasGpuXidError"
    ]
    return {
        "exp_labels": {"severity": "critical", "UUID": uuid, "Hostname": "node-1"},
        "exp_annotations": {
            "summary": f"GPU {uuid} on node-1 reported XID {code}",
            "description": rule["annotations"]["description"],
        },
    }


@pytest.mark.skipif(PROMTOOL is None, reason="Debian's promtool is not installed (`make system-deps`)")
def test_xid_alert_fires_on_a_new_xid_and_clears_after_recovery(tmp_path: Path):
    """dcgm-exporter's XID gauge keeps the last code: the alert must clear once no new XID came for 15 minutes
    (before, ``DCGM_FI_DEV_XID_ERRORS > 0`` stayed firing until a driver reload)."""
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    series = 'DCGM_FI_DEV_XID_ERRORS{UUID="%s",Hostname="node-1"}'
    tests = {
        "rule_files": ["alerts.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": series % "GPU-a", "values": "0x5 79x60"},  # XID 79 at minute 6, then quiet
                    {"series": series % "GPU-b", "values": "0x30 48x30"},  # XID 48 at minute 31
                ],
                "alert_rule_test": [
                    {"eval_time": "3m", "alertname": "AltlasGpuXidError", "exp_alerts": []},
                    {"eval_time": "10m", "alertname": "AltlasGpuXidError", "exp_alerts": [xid_alert("GPU-a", 79)]},
                    {"eval_time": "35m", "alertname": "AltlasGpuXidError", "exp_alerts": [xid_alert("GPU-b", 48)]},
                    {"eval_time": "55m", "alertname": "AltlasGpuXidError", "exp_alerts": []},  # both recovered
                ],
            }
        ],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    done = subprocess.run([PROMTOOL, "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
