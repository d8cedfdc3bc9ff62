"""Secrets audit after a lab run: the PSKs (from the lab's host_config) and the operator's SSH private key are in no
log (the lab's processes, both charons), no `vpnctl` output, no process's argv or environment, and in no gateway file
under /etc, /run, /var except the 0600 root swanctl.conf. Runs last in the session (the name sorts after the others),
after rekeys, failovers and restarts have written their logs. Plain stack outputs and the cloud-init user data of the
program are audited without the VM by tests/hardening/test_hardening_secrets_audit.py.
"""

from __future__ import annotations

import json
import sys

import pytest

from lab import driver

pytestmark = [pytest.mark.vm, pytest.mark.root]


def test_no_secret_in_logs_outputs_processes_or_open_files(lab):
    r = driver.lab("exec", "root", sys.executable, str(driver.REPO / "tests/e2e/lab_secrets_audit.py"), timeout=1200)
    assert r.rc == 0, f"audit failed:\n{r.out[-3000:]}\n{r.err[-3000:]}"
    report = json.loads(r.out.strip().splitlines()[-1])
    print(json.dumps(report["checked"]))
    assert report["needles"] == ["operator private key", "psk of tunnel1", "psk of tunnel2"]
    # positive controls: the audit really read things
    assert report["checked"]["processes"] >= 10 and report["checked"]["gateway files"] >= 5
    assert report["checked"]["charon log bytes"] > 1000 and report["checked"]["vpnctl status --json bytes"] > 100
    assert not report["findings"], "secrets found:\n" + "\n".join(report["findings"])
