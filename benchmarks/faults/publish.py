"""Publishes killed at each moment of a commit, for real: the publish runs in a child process that stops
at a hook point (``core.repository.HOOK_POINTS``) and says so; the parent SIGKILLs it there. The
repository must then be byte-identical either to what it was before (killed before the atomic step) or
to the same publish run to its end (killed after it): never anything in between. The next publish
must succeed and clear what the killed one left in the workspace.

The child: ``python -m benchmarks.faults.publish REPOSITORY NAME POINT {same-config,new-config}``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.faults.swaps import publish_copy
from core.repository import HISTORY, HOOK_POINTS, MANIFEST, Repository

MODES = ("same-config", "new-config")
ROOT = Path(__file__).resolve().parents[2]


def tree_digest(root: Path) -> str:
    """sha256 over every entry under ``root``: relative path, type, mode and, for files, the bytes (a
    manifest's ``created_at`` and the served history's times, the only things two runs of one publish
    write differently, left out)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        digest.update(f"{path.relative_to(root).as_posix()}\0{info.st_mode:o}\0".encode())
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if path.name == MANIFEST:
                manifest = json.loads(data)
                manifest.pop("created_at", None)
                data = json.dumps(manifest, sort_keys=True).encode()
            elif path.name == HISTORY:  # its entries' times, likewise
                history = json.loads(data)
                for entry in history.get("entries", []):
                    entry.pop("at", None)
                data = json.dumps(history, sort_keys=True).encode()
            digest.update(data)
    return digest.hexdigest()


def copy_tree(source: Path, target: Path) -> None:
    """A copy whose files are hard links (a publish never writes into an existing file)."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, copy_function=os.link)


def publish_child(repository: Path, name: str, point: str, mode: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.faults.publish", str(repository), name, point, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        start_new_session=True,
    )


def kill_at(
    repository: Path, name: str, point: str, mode: str, states: dict[str, str], timeout_s: float = 60.0
) -> dict:
    """One publish of ``name`` SIGKILLed at ``point``; ``states`` maps the digests of the acceptable
    outcomes ("unchanged", "published") to their names."""
    child = publish_child(repository, name, point, mode)
    reached = False
    try:
        ready, _, _ = select.select([child.stdout], [], [], timeout_s)
        if ready:  # the child prints one line at the hook point, then waits to be killed
            reached = child.stdout.readline().strip() == f"at {point}".encode()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        stderr = child.stderr.read().decode(errors="replace")[-800:]
        child.stdout.close()
        child.stderr.close()
    state = states.get(tree_digest(repository), "partial")
    return {
        "point": point,
        "mode": mode,
        "killed_at_point": reached,
        "state": state,
        "exit": child.returncode,
        **({} if reached else {"child_error": stderr}),
    }


def run_kills(scratch: Path, name: str, log) -> dict:
    """Every hook point x both modes, each from the same starting repository; then one publish that
    must succeed and leave no staging folder behind."""
    pristine = scratch.with_name(scratch.name + "-pristine")
    reference = scratch.with_name(scratch.name + "-reference")
    copy_tree(scratch, pristine)
    kills = []
    for mode in MODES:
        copy_tree(pristine, reference)
        done = publish_child(reference, name, "none", mode)
        done.communicate(timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"the reference publish ({mode}) failed: exit {done.returncode}")
        states = {tree_digest(pristine): "unchanged", tree_digest(reference): "published"}
        for point in HOOK_POINTS:
            copy_tree(pristine, scratch)
            started = time.monotonic()
            result = kill_at(scratch, name, point, mode, states)
            result["seconds"] = round(time.monotonic() - started, 2)
            log.info("publish killed at %s (%s): repository %s", point, mode, result["state"])
            kills.append(result)
    copy_tree(pristine, scratch)
    repo = Repository(scratch)
    latest = repo.versions(name)[-1]
    after = publish_copy(repo, name, latest)
    staging = sorted(p.name for p in repo.workspace().glob("staging-*"))
    for folder in (pristine, reference):
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "kills": kills,
        "unchanged": sum(k["state"] == "unchanged" for k in kills),
        "published": sum(k["state"] == "published" for k in kills),
        "partial": sum(k["state"] == "partial" for k in kills),
        "killed_at_point": sum(k["killed_at_point"] for k in kills),
        "next_publish_version": after,
        "next_publish_ok": after == latest + 1 and not staging,
        "staging_left": staging,
    }


def _child(repository: str, name: str, point: str, mode: str) -> None:
    """Publish the latest version of ``name`` again (a new config too in ``new-config`` mode), and stop
    at ``point``: say so on stdout, then wait to be killed."""

    def hook(at: str) -> None:
        if at == point:
            sys.stdout.write(f"at {point}\n")
            sys.stdout.flush()
            time.sleep(600)

    repo = Repository(repository, hook=hook)
    config = repo.config(name)
    if mode == "new-config":
        config.max_batch_size = config.max_batch_size + 1
    publish_copy(repo, name, repo.versions(name)[-1], config)
    sys.stdout.write("published without being killed\n")


if __name__ == "__main__":
    _child(*sys.argv[1:5])
