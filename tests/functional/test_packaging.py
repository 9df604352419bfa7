"""The installed wheel carries the Lua scripts and the price table, not only a checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def build_wheel(source: Path, out: Path) -> Path:
    """The project's wheel, built from ``source`` with the build tools of this venv."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(source),
            "-w",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    return next(out.glob("extra_usage_proxy-*.whl"))


def test_wheel_ships_scripts_and_defaults(tmp_path: Path) -> None:
    wheel = build_wheel(ROOT, tmp_path)
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(site)
    for script in ("lib", "admit", "settle", "release", "purchase", "write", "credential", "whois"):
        assert f"proxy/lua/{script}.lua" in names
    assert "proxy/defaults/prices.toml" in names
    assert {
        "proxy/static/admin.html",
        "proxy/static/admin.js",
        "proxy/static/admin.css",
        "proxy/static/admin/api.js",
        "proxy/static/admin/members.js",
        "proxy/migrations/001_ledger.sql",
    } <= names
    code = (
        "import proxy, proxy.storage.store, proxy.config;"
        f"assert proxy.__file__.startswith({str(site)!r}), proxy.__file__;"
        "src = proxy.storage.store.script_source('settle'); assert 'XADD' in src;"
        "print(len(proxy.config.load_config(None, env={}).prices.families))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
    )
    assert int(out.stdout.strip()) > 10


def test_the_dockerfile_build_stage_copies_everything_the_wheel_needs(tmp_path: Path) -> None:
    """No Docker engine here: rebuild the image's first stage by hand from its COPY lines."""
    context = tmp_path / "src"
    context.mkdir()
    build_stage = (ROOT / "Dockerfile").read_text().split("\nFROM ", 2)[1]
    for line in build_stage.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            *sources, _dest = line.split()[1:]
            for src in sources:
                path = ROOT / src
                target = context / src
                if path.is_dir():
                    shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    target.write_bytes(path.read_bytes())
    wheel = build_wheel(context, tmp_path / "w")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    for needed in (
        "proxy/lua/admit.lua",
        "proxy/defaults/prices.toml",
        "proxy/migrations/001_ledger.sql",
        "proxy/static/admin.js",
    ):
        assert needed in names


def test_the_image_installs_only_what_the_lockfile_pins() -> None:
    """The Dockerfile installs its dependencies from requirements.lock with --require-hashes,
    and the lockfile pins every runtime dependency of pyproject.toml."""
    import tomllib

    text = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes -r requirements.lock" in text
    assert "--no-index" in text
    lock = (ROOT / "requirements.lock").read_text()
    pinned = {line.split("==")[0].lower() for line in lock.splitlines() if "==" in line}
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        name = dep.split(";")[0].split(">")[0].split("=")[0].split("[")[0].strip().lower()
        assert name in pinned, f"{name} is not pinned in requirements.lock"
    assert "--hash=sha256:" in lock
