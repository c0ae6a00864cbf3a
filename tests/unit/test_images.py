"""deploy.images and deploy.podman without podman: where the local base's mirror comes from, what
the build options refuse, what the image inputs digest notices, the CPU image's build context."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from core.errors import InvalidArgument, MissingDependency, NotFound
from deploy import images, podman


def test_mirror_is_the_one_apt_uses(tmp_path):
    one_line = tmp_path / "sources.list"
    one_line.write_text(
        "# deb http://example.org/commented/debian bookworm main\n"
        "deb [signed-by=/k.gpg] http://mirror.example.net/debian/ bookworm main\n"
    )
    assert images.apt_mirror((one_line,)) == "http://mirror.example.net/debian"

    folder = tmp_path / "sources.list.d"
    folder.mkdir()
    (folder / "debian.sources").write_text(
        "Types: deb\nURIs: http://deb.example.com/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://deb.example.com/debian\nSuites: bookworm\n"
    )
    assert images.apt_mirror((tmp_path / "absent.list", folder)) == "http://deb.example.com/debian"
    assert images.apt_mirror((tmp_path / "absent.list",)) == images.DEFAULT_MIRROR


def test_unknown_base_choice_names_the_flag():
    with pytest.raises(InvalidArgument, match=r"--base: 'alpine' is not one of auto, standard, local"):
        images.choose_bases("alpine", "docker.io/library/python:3.11-slim", None)


def test_missing_ca_bundle_names_the_flag(tmp_path):
    with pytest.raises(NotFound, match=r"--ca-bundle: .*nope.pem is not a file"):
        images.ca_volume(tmp_path / "nope.pem")
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    assert images.ca_volume(bundle) == [f"{bundle}:/etc/ssl/certs/ca-certificates.crt:ro"]
    assert images.ca_volume(None) == []


def test_without_podman_the_error_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingDependency, match=r"podman: not found on PATH; run `make images`"):
        podman.podman("version")


def test_tree_digest_follows_content_not_caches(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("b")
    first = podman.tree_digest(tmp_path)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    assert podman.tree_digest(tmp_path) == first
    (tmp_path / "sub" / "b.txt").write_text("c")
    assert podman.tree_digest(tmp_path) != first
    (tmp_path / "sub" / "b.txt").rename(tmp_path / "sub" / "c.txt")
    assert podman.tree_digest(tmp_path) != first


def test_triton_context_holds_the_set_up_the_entry_point_and_the_pinned_wheel(tmp_path):
    wheel, sha256 = images.pinned_wheel()
    assert wheel.startswith("nvidia_pytriton-0.7.0-") and len(sha256) == 64
    if not (images.ROOT / ".cache" / "wheels" / wheel).is_file():
        pytest.skip(f"{wheel} is not downloaded (make setup downloads it)")
    context = tmp_path / "context"
    context.mkdir()
    images.stage_triton_context(context)
    assert sorted(images.triton_context_files()) == sorted(
        p.relative_to(context).as_posix() for p in context.rglob("*") if p.is_file()
    )
    files = {p.relative_to(context).as_posix() for p in context.rglob("*") if p.is_file()}
    assert {
        "local_triton/setup.sh",
        "local_triton/entrypoint.py",
        "local_triton/server.py",
        "local_triton/backends/requirements.txt",
        "local_triton/backends/onnxruntime/model.py",
        "core/__init__.py",
        "core/errors.py",
        f".cache/wheels/{wheel}",
    } <= files
    assert not any("__pycache__" in f for f in files)
    # What the entry point imports is all there: it imports with nothing but the context and the
    # standard library on sys.path (no site-packages: the image's python has none of ours).
    assert os.access(context / "local_triton" / "setup.sh", os.R_OK)
    probe = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            f"import sys; sys.path.insert(0, {str(context)!r}); import local_triton.entrypoint",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr


def test_image_names_carry_the_project_version():
    version = images.project_version()
    assert images.image_names() == {
        "triton-cpu": f"localhost/modelpack-triton-cpu:{version}",
        "bento": f"localhost/modelpack-bento:{version}",
    }


def test_local_base_changes_keep_python_image_conventions():
    assert 'CMD ["python3"]' in images.LOCAL_BASE_CHANGES
    assert any(c.startswith("ENV SSL_CERT_FILE=") for c in images.LOCAL_BASE_CHANGES)
    assert "libpython3.11" in images.DEBIAN_PACKAGES  # the python backend stub links it


def test_built_bento_is_named_with_the_fix(tmp_path):
    with pytest.raises(NotFound, match=r"no bento built; run `make bento`"):
        images.built_bento(tmp_path)
    (tmp_path / ".built").write_text("modelpack:abc\n")
    with pytest.raises(NotFound, match=r"bento modelpack:abc: .* is missing; run `make bento` again"):
        images.built_bento(tmp_path)


def test_module_imports_nothing_heavy():
    import subprocess
    import sys

    heavy = ("torch", "bentoml", "tritonclient", "sentence_transformers")
    code = f"import sys, deploy.images; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=images.ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_auto_ca_bundle_is_ssl_cert_file_else_the_system_one(tmp_path):
    bundle = tmp_path / "proxy-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    assert images.host_ca_bundle({"SSL_CERT_FILE": str(bundle)}) == bundle
    system = images.DEBIAN_CA_BUNDLE if images.DEBIAN_CA_BUNDLE.is_file() else None
    assert images.host_ca_bundle({"SSL_CERT_FILE": str(tmp_path / "gone.pem")}) == system
    assert images.host_ca_bundle({}) == system


def test_an_image_is_stale_when_what_it_is_made_of_changed_since_its_revision():
    """Against this checkout's own history (real git): the revision that last changed serving/ is
    stale for the bento once anything of it changed later, and current for the Triton image when
    local_triton/ and its files did not change since."""
    head = subprocess.run(
        ["git", "-C", str(images.ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(images.ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if dirty:
        pytest.skip("uncommitted changes: every revision compares as changed")
    assert images.changed_since("bento", head, "img") is None
    assert images.changed_since("triton-cpu", head, "img") is None
    first = subprocess.run(
        ["git", "-C", str(images.ROOT), "rev-list", "--max-parents=0", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[-1]
    reason = images.changed_since("bento", first, "img")
    assert reason is not None and reason.startswith(f"img was built at {first[:12]}; ")
    assert "a revision this checkout does not have" in images.changed_since("bento", "0" * 40, "img")
    assert images.changed_since("bento", head + "-dirty", "img") == "img was built from uncommitted changes"
    assert images.changed_since("bento", "", "img") == "img was built from no known revision"
