"""Set-up: .venv holds exactly the versions of requirements-lock.txt, and tools/setup_env.sh
installs through the lock (the newest versions only with --latest, into .venv-latest)."""
import os
import pathlib
import subprocess
import sys
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import REPO

LOCK = REPO / "requirements-lock.txt"


def read_lock(path=LOCK) -> dict:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"{path}: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def installed() -> dict:
    return {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}


def _stamp() -> str:
    path = pathlib.Path(sys.prefix) / ".installed"
    return path.read_text().split()[0] if path.exists() else ""


def test_the_lock_pins_everything_the_project_needs():
    pins, have = read_lock(), installed()
    todo, seen = ["cnn-toolkit"], set()
    while todo:  # the project's requirements, transitively, as installed here
        name = canonicalize_name(todo.pop())
        if name in seen or name not in have:
            continue
        seen.add(name)
        for spec in metadata.requires(name) or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": "test"}):
                todo.append(req.name)
    seen.discard("cnn-toolkit")
    missing = sorted(n for n in seen if n not in pins)
    assert not missing, f"requirements-lock.txt lacks {missing}: refresh it (tools/setup_env.sh --refresh-lock)"
    for name in ("torch", "torchvision", "opencv-python-headless", "numpy", "pytest"):
        assert name in pins


def test_this_environment_is_what_setup_env_installed():
    """.venv (tools/setup_env.sh): exactly the lock. .venv-latest (--latest): nothing older."""
    pins, have = read_lock(), installed()
    have.pop("cnn-toolkit", None)
    stamp = _stamp()
    assert stamp in ("locked", "latest"), f"{sys.prefix} was not made by tools/setup_env.sh"
    if stamp == "locked":
        wrong = {n: (v, pins.get(n)) for n, v in have.items() if pins.get(n) != v}
        assert not wrong, f"installed differs from requirements-lock.txt (installed, locked): {wrong}"
        assert set(pins) <= set(have), f"locked but not installed: {sorted(set(pins) - set(have))}"
    else:
        older = {n: (have[n], v) for n, v in pins.items() if n in have and Version(have[n]) < Version(v)}
        assert not older, f"--latest installed versions older than the lock: {older}"


FAKE_PIP = """#!/usr/bin/env bash
echo "pip $*" >> "$LOG"
if [ "$1" = freeze ]; then   # set up: exactly the lock (plus EXTRA, installed by hand since)
    if grep -q '^locked' "$(dirname "$0")/../.installed" 2>/dev/null; then grep '==' requirements-lock.txt; else printf 'numpy==9.9\\nsome-extra==1.0\\n'; fi
    [ -n "${EXTRA:-}" ] && echo "$EXTRA"
fi
exit 0
"""
FAKE_PYTHON = """#!/usr/bin/env bash
echo "python $*" >> "$LOG"
[ "$1" = "-c" ] && [ ! -f "$(dirname "$0")/../.installed" ] && exit 1   # 'import toolkit' until set up
exit 0
"""


def _fake_venv(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name, text in (("pip", FAKE_PIP), ("python", FAKE_PYTHON)):
        (venv / "bin" / name).write_text(text)
        (venv / "bin" / name).chmod(0o755)
    return venv


def _setup_env(tmp_path, *args, **env):
    log = tmp_path / "calls.log"
    full = dict(os.environ, LOG=str(log), **env)
    proc = subprocess.run(["bash", "tools/setup_env.sh", *args], cwd=REPO, env=full, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


def test_setup_env_installs_through_the_lock_and_removes_what_it_does_not_name(tmp_path):
    venv = _fake_venv(tmp_path)
    calls = _setup_env(tmp_path, VENV=str(venv))
    installs = [c for c in calls if c[:2] == ["pip", "install"]]
    assert len(installs) == 2
    for call in installs:
        assert call[call.index("-c") + 1] == "requirements-lock.txt"
    assert "--no-build-isolation" in installs[1] and ".[test]" in installs[1]
    assert ["pip", "uninstall", "-q", "-y", "some-extra"] in calls   # numpy is locked, some-extra not
    assert (venv / ".installed").read_text().startswith("locked ")
    again = _setup_env(tmp_path, VENV=str(venv))[len(calls):]
    assert again and not [c for c in again if c[0] == "pip" and c[1] != "freeze"]  # stamped, exact: nothing
    # a package installed by hand into a stamped .venv: the next set-up removes it
    later = _setup_env(tmp_path, VENV=str(venv), EXTRA="by-hand==2.0")[len(calls) + len(again):]
    assert ["pip", "uninstall", "-q", "-y", "by-hand"] in later


def test_setup_env_latest_ignores_the_lock_and_refresh_writes_it(tmp_path):
    venv = _fake_venv(tmp_path)
    calls = _setup_env(tmp_path, "--latest", VENV=str(venv))
    installs = [c for c in calls if c[:2] == ["pip", "install"]]
    assert installs and all("-c" not in c for c in installs)
    assert any("--upgrade" in c and ".[test]" in c for c in installs)
    lock = tmp_path / "lock.txt"
    _setup_env(tmp_path, "--refresh-lock", VENV=str(venv), LOCK_FILE=str(lock))
    assert read_lock(lock) == {"numpy": "9.9", "some-extra": "1.0"}


def test_setup_env_refuses_an_unknown_option():
    proc = subprocess.run(["bash", "tools/setup_env.sh", "--newest"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--newest" in proc.stderr


def test_test_sh_tests_the_folder_it_set_up(tmp_path):
    """VENV=DIR bash tools/test.sh sets up DIR and runs the suite with DIR's python (it ran .venv's)."""
    import hashlib
    import shutil
    repo = tmp_path / "clone"
    (repo / "tools").mkdir(parents=True)
    for name in ("tools/test.sh", "tools/setup_env.sh", "setup.py", "requirements-lock.txt",
                 "requirements-oracle.txt"):
        shutil.copy(REPO / name, repo / name)
    mx = repo / ".mxnet-venv" / "bin"
    mx.mkdir(parents=True)
    (mx / "python").write_text("#!/usr/bin/env bash\nexit 0\n")
    (mx / "python").chmod(0o755)
    (repo / ".mxnet-venv" / ".installed").write_text(
        hashlib.sha1((repo / "requirements-oracle.txt").read_bytes()).hexdigest() + "\n")
    venv = _fake_venv(tmp_path)
    log = tmp_path / "calls.log"
    proc = subprocess.run(["bash", "tools/test.sh", "-q"], cwd=repo, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, LOG=str(log), VENV=str(venv)))
    assert proc.returncode == 0, proc.stderr
    assert ["python", "-m", "pytest", "-n", "3", "-q"] in [line.split() for line in log.read_text().splitlines()]
