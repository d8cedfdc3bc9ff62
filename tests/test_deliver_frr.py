"""FRR's delivery in routing.mode bgp (issue 16): cloud-init installs Debian's frr and enables bgpd, the push checks
frr.conf with FRR itself before activation and (re)loads FRR after swanctl. A static stack's user data, commands and
files are unchanged (the goldens: tests/test_render.py, tests/test_program*.py)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import test_deliver_push as push_tests
import yaml
from test_deliver_program import FAKE_PSKS, T_GATEWAY_CONFIG, T_INSTANCE, _dev_config, _private_key, _run
from test_deliver_push import on_gateway

from hostconfig import gateway_paths as gp
from hostconfig.cloudinit import BGP_PACKAGES, PACKAGES, render_user_data
from hostconfig.deliver import CommandFailed, DesiredFile, push_files
from hostconfig.deliver import gateway as gw
from hostconfig.deliver.changes import Command
from hostconfig.deliver.sshd_lab import SshdLab
from hostconfig.plan import GatewayPlan
from hostconfig.render import render_frr_daemons, render_gateway_files

lab, root = push_tests.lab, push_tests.root  # fixtures

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "host_config.default.json"
DEBIAN_DAEMONS = Path("/etc/frr/daemons")  # Debian 12's frr 8.4.4 conffile (scripts/setup-machine installs frr)
needs_frr = pytest.mark.skipif(not (shutil.which(gp.VTYSH) and Path(gp.FRR_BGPD).exists()),
                               reason="FRR is not installed (scripts/setup-machine installs Debian's frr)")


def bgp_plan() -> GatewayPlan:
    obj = json.loads(FIXTURE.read_text())
    obj["routing"] = {"mode": "bgp", "customer_asn": 65010, "amazon_side_asn": 64512}
    return GatewayPlan.from_host_config(obj)


def _keys(tmp_path: Path) -> tuple[str, str]:
    key = tmp_path / "ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hybrid-vpn-dev-gw", "-f", str(key)],
                   check=True)
    return key.read_text(), key.with_suffix(".pub").read_text()


# ------------------------------------------------------------------------------------------------------ cloud-init

def test_bgp_user_data_installs_frr_and_enables_bgpd_and_cloud_init_accepts_it(tmp_path):
    if not shutil.which("cloud-init"):
        pytest.skip("cloud-init is not installed")
    private, public = _keys(tmp_path)
    static = render_user_data(hostname="hybrid-vpn-dev-gw", ssh_host_ed25519_private=private,
                              ssh_host_ed25519_public=public)
    bgp = render_user_data(hostname="hybrid-vpn-dev-gw", ssh_host_ed25519_private=private,
                           ssh_host_ed25519_public=public, bgp=True)
    assert render_user_data(hostname="hybrid-vpn-dev-gw", ssh_host_ed25519_private=private,
                            ssh_host_ed25519_public=public, bgp=False) == static
    assert "frr" not in static and "defer" not in static
    doc = yaml.safe_load(bgp)
    assert doc["packages"] == [*PACKAGES, *BGP_PACKAGES]
    daemons = next(f for f in doc["write_files"] if f["path"] == gp.FRR_DAEMONS.path)
    # Deferred: written in cloud-init's final stage, after the package (and its own daemons conffile) is installed.
    assert daemons["defer"] is True and daemons["permissions"] == f"{gp.FRR_DAEMONS.mode:04o}"
    assert daemons["content"] == render_frr_daemons() and "\nbgpd=yes\n" in daemons["content"]
    assert doc["runcmd"][-2:] == [["systemctl", "enable", gp.FRR_UNIT], ["systemctl", "restart", gp.FRR_UNIT]]
    # Everything else is the static user data's.
    static_doc = yaml.safe_load(static)
    assert {k: v for k, v in doc.items() if k not in ("packages", "write_files", "runcmd")} == {
        k: v for k, v in static_doc.items() if k not in ("packages", "write_files", "runcmd")}
    assert doc["write_files"][:-1] == static_doc["write_files"] and doc["runcmd"][:-2] == static_doc["runcmd"]

    path = tmp_path / "user-data.yaml"
    path.write_text(bgp)
    checked = subprocess.run(["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True,
                             timeout=120)
    assert checked.returncode == 0 and "Valid cloud-config" in checked.stdout, checked.stdout + checked.stderr
    # Control: the schema does check write_files' keys (defer must be a boolean).
    path.write_text(bgp.replace("defer: true", "defer: later"))
    refused = subprocess.run(["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode != 0, refused.stdout


def _shell_settings(text: str) -> dict[str, str]:
    """The variables a daemons file sets, as frrinit.sh sees them (it sources the file with the shell)."""
    script = f"set -a\n{text}\nenv -0"
    out = subprocess.run(["env", "-i", "sh", "-c", script], capture_output=True, check=True, timeout=30).stdout
    return dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)


def test_the_daemons_file_is_debians_with_bgpd_enabled():
    if not DEBIAN_DAEMONS.exists():
        pytest.skip("Debian's frr is not installed (no /etc/frr/daemons to compare with)")
    ours, debians = _shell_settings(render_frr_daemons()), _shell_settings(DEBIAN_DAEMONS.read_text())
    daemons = {k for k, v in debians.items() if v in ("yes", "no")} - {"vtysh_enable"}
    assert daemons and daemons <= set(ours)  # every daemon FRR 8.4 knows is switched explicitly
    assert ours["bgpd"] == "yes" and all(ours[d] == "no" for d in daemons - {"bgpd"})
    for key in ("vtysh_enable", "zebra_options", "bgpd_options", "staticd_options"):
        assert ours[key] == debians[key], key


def test_bgp_renders_the_daemons_file_beside_frr_conf_and_static_renders_neither():
    bgp = {f.path: f for f in render_gateway_files(bgp_plan())}
    assert bgp[gp.FRR_DAEMONS.path].mode == gp.FRR_DAEMONS.mode and not bgp[gp.FRR_DAEMONS.path].secret
    assert bgp[gp.FRR_DAEMONS.path].content == render_frr_daemons().encode()
    static = {f.path for f in render_gateway_files(GatewayPlan.from_host_config(json.loads(FIXTURE.read_text())))}
    assert not {gp.FRR_CONF.path, gp.FRR_DAEMONS.path} & static


# ------------------------------------------------------------------------------------------- commands and order

def test_static_commands_are_unchanged_and_bgp_adds_frr_after_swanctl():
    assert gw.activation_order() == gw.activation_order(bgp=False) == gw.ACTIVATION_ORDER
    assert gw.validation_commands() == gw.validation_commands(bgp=False)
    assert not any(gp.FRR_CONF.path in c.when_changed for c in gw.validation_commands() + gw.activation_commands())
    names = [s.name for s in gw.activation_order(bgp=True)]
    assert names == [*[s.name for s in gw.ACTIVATION_ORDER[:5]], "restart-frr", "reload-frr", "reload-sshd"]
    assert names.index("restart-frr") == names.index("load-swanctl") + 1
    assert [s.name for s in gw.activation_steps([gp.FRR_CONF.path], bgp=True)] == ["reload-frr"]
    assert [s.name for s in gw.activation_steps([gp.FRR_DAEMONS.path, gp.FRR_CONF.path, gp.SWANCTL_CONF.path],
                                                bgp=True)] == ["restart-agent", "load-swanctl", "restart-frr",
                                                               "reload-frr"]
    assert gw.activation_steps([gp.FRR_CONF.path]) == []  # a static gateway never touches FRR
    frr_check = gw.validation_commands(bgp=True)[-1]
    assert frr_check == Command((gp.VTYSH, "--dryrun", "-f", "{root}" + gp.FRR_CONF.path), (gp.FRR_CONF.path,))


def test_the_program_passes_frr_commands_and_user_data_only_in_bgp_mode(tmp_path):
    key = _private_key(tmp_path)
    static = _run(_dev_config(tmp_path, ssh_private_key=key))
    config = _dev_config(tmp_path, ssh_private_key=key)
    config["hybrid-vpn:routing"] = {"mode": "bgp", "customer_asn": 65010}
    bgp = _run(config)

    def commands(run, kind):
        return [tuple(c["argv"]) for c in run.one(T_GATEWAY_CONFIG).inputs[kind]]

    def user_data(run):
        return base64.b64decode(run.one(T_INSTANCE).inputs["metadatas"][0]["userData"]).decode()

    assert commands(static, "validate") == [c.argv for c in gw.validation_commands()]
    assert commands(static, "activate") == [c.argv for c in gw.activation_commands()]
    assert commands(bgp, "validate") == [c.argv for c in gw.validation_commands(bgp=True)]
    assert commands(bgp, "activate") == [c.argv for c in gw.activation_commands(bgp=True)]
    assert "frr" not in user_data(static) and "- \"frr\"" in user_data(bgp)
    files = {f["path"] for f in bgp.one(T_GATEWAY_CONFIG).inputs["files"]}
    assert {gp.FRR_CONF.path, gp.FRR_DAEMONS.path} <= files
    assert not any(p in user_data(bgp) for p in FAKE_PSKS)


# --------------------------------------------------------------------------------------- the push, real sshd

STAND_IN_SYSTEMCTL = '#!/bin/sh\necho "systemctl $*" >> "$ACTIVATION_LOG"\n'


def _frr_files() -> list[DesiredFile]:
    return [DesiredFile.from_rendered(f) for f in render_gateway_files(bgp_plan())
            if f.path in (gp.FRR_CONF.path, gp.FRR_DAEMONS.path)]


@pytest.mark.root
@needs_frr
def test_push_validates_frr_conf_with_frr_and_reloads_frr_after_the_change(lab: SshdLab, root: Path):
    bindir = root / "stand-in-bin"  # no systemd in a network namespace: a systemctl that logs what it was asked
    bindir.mkdir()
    (bindir / "systemctl").write_text(STAND_IN_SYSTEMCTL)
    (bindir / "systemctl").chmod(0o755)
    log = root / "activation.log"
    wrap = ("env", f"PATH={bindir}:/usr/sbin:/usr/bin:/sbin:/bin", f"ACTIVATION_LOG={log}")
    activate = [Command((*wrap, *c.argv), c.when_changed) for c in gw.activation_commands(bgp=True)]
    validate = gw.validation_commands(bgp=True)
    files = _frr_files()

    first = push_files(lab.target(), files, validate=validate, activate=activate, remote_root=str(root))
    assert first.validated == [f"{gp.VTYSH} --dryrun -f {root}{gp.FRR_CONF.path}"]  # real vtysh, on the pushed file
    assert log.read_text().splitlines() == ["systemctl restart frr", "systemctl reload-or-restart frr"]
    assert on_gateway(root, gp.FRR_DAEMONS.path).stat().st_mode & 0o7777 == gp.FRR_DAEMONS.mode

    conf = next(f for f in files if f.path == gp.FRR_CONF.path)
    edited = DesiredFile(conf.path, conf.content + b"! edited\n", conf.mode)
    others = [f for f in files if f.path != conf.path]
    push_files(lab.target(), [*others, edited], validate=validate, activate=activate, remote_root=str(root))
    assert log.read_text().splitlines()[2:] == ["systemctl reload-or-restart frr"]  # frr.conf only: no restart

    broken = DesiredFile(conf.path, conf.content.replace(b"router bgp 65010", b"router bgp 65010 bogus-word"),
                         conf.mode)
    assert broken.content != conf.content
    with pytest.raises(CommandFailed) as failure:
        push_files(lab.target(), [*others, broken], validate=validate, activate=activate, remote_root=str(root))
    assert failure.value.stage == "validation" and failure.value.rolled_back
    assert gp.VTYSH in failure.value.argv
    assert on_gateway(root, conf.path).read_bytes() == edited.content  # the previous file stays
    assert len(log.read_text().splitlines()) == 3  # nothing reloaded FRR with the refused file
