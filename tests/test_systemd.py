"""The service units as systemd reads them, their installer, and the pre-start check."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from support.onnx_models import wrong_shape_model


def staged_units(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    res = subprocess.run([str(REPO / "tools/install-service.sh")], env={"DESTDIR": str(root), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert res.returncode == 0, res.stderr
    return root


def test_installer_stages_units_and_config(tmp_path: Path) -> None:
    root = staged_units(tmp_path)
    unit = (root / "etc/systemd/system/vigil.service").read_text()
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "ExecStart=/opt/vigil/.venv/bin/vigil run" in unit
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit  # `systemctl reload vigil`: live config reload
    cfg = (root / "etc/vigil/vigil.yaml").read_text()
    assert "/opt/vigil/engines/yolov3-tiny-coco.onnx" in cfg


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    root = staged_units(tmp_path)
    units = []
    for name in ("vigil-engine.service", "vigil.service"):
        text = (root / "etc/systemd/system" / name).read_text().replace("/opt/vigil/.venv/bin/vigil", "/bin/true")
        (tmp_path / name).write_text(text)
        units.append(f"./{name}")
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", *units], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr
    sec = subprocess.run(["systemd-analyze", "security", "--offline=yes", "./vigil.service"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    score = float(sec.stdout.split("Overall exposure level for vigil.service:")[1].split()[0])
    assert score <= 2.5, sec.stdout[-500:]


def test_check_command(tiny_model: Path, tmp_path: Path) -> None:
    check = [sys.executable, "-m", "app", "check"]
    default = ["--config", str(REPO / "configs/default.yaml"), "--set", f"model.path={tiny_model}"]
    ok = subprocess.run([*check, *default], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.startswith("ok: config valid"), ok.stderr
    bad = wrong_shape_model(tmp_path / "bad.onnx")
    args = [*check, "--set", "cameras.0.name=a", "--set", "cameras.0.source=x", "--set", f"model.path={bad}"]
    res = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "has shape [1, 10]" in res.stderr
    args = [*check, *default, "--set", "mqtt.username=u", "--set", f"mqtt.password_file={tmp_path / 'none'}"]
    res = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "password_file" in res.stderr
