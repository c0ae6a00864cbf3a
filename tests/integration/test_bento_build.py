"""Packaging: the pinned requirements the bento installs, a plain ``bentoml build`` in a network
namespace with no network (``unshare -n``), and the Dockerfile the bento holds, checked with hadolint
(``bentoml containerize`` needs a Docker daemon, not here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# What the bento ships besides service.py: every module of these packages (bentofile.yaml's include).
SHIPPED_PACKAGES = ("core", "serving")
BIN = Path(sys.executable).parent

# What service.py and the packages it ships import at run time (requirements-service.in; the closure
# of these is what the bento installs, requirements-service.txt).
SERVICE_ROOTS = tuple(
    line.strip()
    for line in (ROOT / "requirements-service.in").read_text().splitlines()
    if line.strip() and not line.startswith("#")
)

# hadolint findings of the Dockerfile BentoML generates, each ignored for a stated reason. Every line
# of that file comes from BentoML's template (bentofile.yaml can only choose distro/Python/packages).
HADOLINT_IGNORED = {
    "DL3008": "apt-get install without version pins: BentoML's base block installs ca-certificates, "
    "gnupg2, bash, build-essential, git from the python:3.11-slim image's Debian, whose point releases "
    "retire exact versions",
    "DL3013": "`pip install uv` unpinned: BentoML's fallback, run only when the base image has no uv; "
    "our own packages are installed pinned, from requirements-service.txt",
    "DL3042": "the same `pip install uv` line keeps pip's cache: one small tool, in BentoML's template",
    "DL3046": "useradd without -l: the template's user has UID 1034, too low for the large-lastlog problem",
    "SC3020": "`command -v groupadd &>/dev/null` in the template's user step: under /bin/sh (dash) `&>` "
    "backgrounds the test instead of redirecting it, so the `if` takes groupadd's branch, which is the "
    "one Debian needs anyway",
}


def _offline_namespace() -> list[str]:
    """``unshare -n`` (a network namespace with only a downed loopback), when this machine allows it."""
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"unshare -n is not allowed here (needs root or user namespaces): {probe.stderr.strip()}")
    return ["unshare", "-n"]


def closure(roots: tuple[str, ...]) -> list[str]:
    """Canonical names of ``roots`` and everything they require in this venv (markers and extras
    evaluated)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: dict[str, set[str]] = {}
    pending = [Requirement(r) for r in roots]
    while pending:
        req = pending.pop()
        name = canonicalize_name(req.name)
        if name in seen and set(req.extras) <= seen[name]:
            continue
        extras = seen[name] = seen.get(name, set()) | set(req.extras)
        for raw in metadata.distribution(req.name).requires or []:
            sub = Requirement(raw)
            environments = [{"extra": e} for e in (extras or {""})]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in environments):
                pending.append(sub)
    return sorted(seen)


def pins(path: Path) -> dict[str, str]:
    """Name -> specifier of each requirement of a requirements file (hashed ones included: a requirement
    continues over lines ending in a backslash, its ``--hash`` options after it)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found = {}
    text = re.sub(r"\\\n", " ", path.read_text())
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            req = Requirement(line.split(" --hash", 1)[0].strip())
            found[canonicalize_name(req.name)] = str(req.specifier)
    return found


def hashes(path: Path) -> dict[str, set[str]]:
    """Name -> the sha256 hashes a hashed requirements file gives it."""
    from packaging.utils import canonicalize_name

    found = {}
    for block in re.sub(r"\\\n", " ", path.read_text()).splitlines():
        if block.strip() and not block.strip().startswith("#"):
            name = re.match(r"[A-Za-z0-9_.-]+", block.strip()).group(0)
            # A name given twice (BentoML appends its own unhashed `bentoml==` line): the hashes of both.
            found.setdefault(canonicalize_name(name), set()).update(
                re.findall(r"--hash=(sha256:[0-9a-f]{64})", block)
            )
    return found


def test_service_requirements_are_the_closure_at_the_lock_pins():
    service = pins(ROOT / "requirements-service.txt")
    lock = pins(ROOT / "requirements.lock")
    expected = closure(SERVICE_ROOTS)
    assert sorted(service) == expected, (
        f"missing: {sorted(set(expected) - set(service))}, extra: {sorted(set(service) - set(expected))}"
    )
    assert {n: s for n, s in service.items() if lock.get(n) != s} == {}
    assert "torch" not in service and "onnxruntime" not in service
    # Hashed, with the lock's hashes: pip checks them when the image installs the bento.
    service_hashes, lock_hashes = (
        hashes(ROOT / "requirements-service.txt"),
        hashes(ROOT / "requirements.lock"),
    )
    assert all(service_hashes.values()), [n for n, h in service_hashes.items() if not h]
    assert {n: h for n, h in service_hashes.items() if h != lock_hashes[n]} == {}


@pytest.fixture(scope="module")
def built_bento(tmp_path_factory) -> Path:
    """``bentoml build`` as users type it (no feature flags), in a network namespace without network:
    it must need nothing from the network (BentoML 1.4 wants uv; the venv has it)."""
    home = tmp_path_factory.mktemp("bentoml_home")
    env = {key: value for key, value in os.environ.items() if not key.startswith("BENTOML_")}
    env["BENTOML_HOME"] = str(home)
    done = subprocess.run(
        [*_offline_namespace(), str(BIN / "bentoml"), "build", "--output", "tag"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    tag = done.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    bento = home / "bentos" / name / version
    assert bento.is_dir(), f"{tag}: no {bento}"
    return bento


def test_offline_namespace_really_has_no_network():
    """The namespace the build runs in reaches nothing: a connection to the package index fails there."""
    probe = "import socket; socket.create_connection(('pypi.org', 443), timeout=5)"
    done = subprocess.run(
        [*_offline_namespace(), sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "Errno" in done.stderr or "gaierror" in done.stderr, done.stderr[-500:]


def test_make_bento_is_a_plain_bentoml_build():
    recipe = (ROOT / "Makefile").read_text().split("bentos/.built: ", 1)[1].split("\n\n", 1)[0]
    assert "BENTOML_HOME=bentos $(VENV)/bin/bentoml build --output tag" in recipe
    assert "BENTOML_ENABLE_FEATURES" not in recipe


def test_bento_carries_what_the_service_needs(built_bento, tmp_path):
    src = built_bento / "src"
    files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    # The service, its configuration, and the packages it imports, whole: no hand-kept file list.
    packages = sorted(
        p.relative_to(ROOT).as_posix() for package in SHIPPED_PACKAGES for p in (ROOT / package).rglob("*.py")
    )
    assert files == sorted(["bentofile.yaml", "service.py", "service.yaml", *packages])
    info = yaml.safe_load((built_bento / "bento.yaml").read_text())
    assert info["service"] == "service:ModelService"
    # Nothing locked or resolved at build time: the image installs exactly our pins (BentoML adds its
    # own pin, bentoml==1.4.39, which the list already holds).
    ours = pins(ROOT / "requirements-service.txt")
    assert pins(built_bento / "env" / "python" / "requirements.txt") == ours
    listed = tmp_path / "python_requirements.txt"
    listed.write_text(info["image"]["python_requirements"])
    assert pins(listed) == ours
    # The hashes survive BentoML's rewrite of the file and its image's list (uv checks them when the
    # image installs it).
    ours_hashes = hashes(ROOT / "requirements-service.txt")
    for kept in (hashes(built_bento / "env" / "python" / "requirements.txt"), hashes(listed)):
        assert {n: h for n, h in ours_hashes.items() if kept[n] != h} == {}

    # The bento's own source imports with nothing from the checkout, and its configuration is valid.
    check = (
        "import service, core, serving.settings; "
        f"assert core.__file__.startswith({str(src)!r}), core.__file__; "
        f"assert serving.settings.__file__.startswith({str(src)!r}), serving.settings.__file__; "
        "print(serving.settings.read_settings('service.yaml').models[0].name)"
    )
    done = subprocess.run(
        [sys.executable, "-c", check],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "minilm"


def hadolint(dockerfile: Path, ignored: dict[str, str]) -> subprocess.CompletedProcess:
    argv = [str(BIN / "hadolint"), "--no-color", "--failure-threshold", "warning"]
    for rule in ignored:
        argv += ["--ignore", rule]
    return subprocess.run([*argv, str(dockerfile)], capture_output=True, text=True, timeout=60)


def test_bento_dockerfile_passes_hadolint(built_bento):
    dockerfile = built_bento / "env" / "docker" / "Dockerfile"
    text = dockerfile.read_text()
    assert "EXPOSE 3000" in text and "USER bentoml" in text
    # The service binds 127.0.0.1 unless told otherwise; in the container it is told (issue 15).
    assert "ARG BENTOML_HOST=0.0.0.0" in text and "ENV BENTOML_HOST=$BENTOML_HOST" in text
    assert "pip install -r $BENTO_PATH/env/python/requirements.txt" in text  # the pinned closure

    linted = hadolint(dockerfile, HADOLINT_IGNORED)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    # The ignores are exactly what is needed: each one hides a finding that is really there.
    unfiltered = hadolint(dockerfile, {})
    assert unfiltered.returncode != 0
    for rule in HADOLINT_IGNORED:
        assert rule in unfiltered.stdout, f"{rule} is ignored but hadolint no longer reports it; drop it"
