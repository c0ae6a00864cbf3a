"""Live version swaps under load: versions published, rolled back and loaded on the running Triton
while clients keep calling the Bento, which is never restarted."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from core.repository import MANIFEST, Repository


def publish_copy(repository: Repository, name: str, source: int, config: mc.ModelConfig | None = None) -> int:
    """Publish version ``source`` of ``name`` again, as the next version, through the repository's own
    atomic publish (staged, locked, renamed into place) with ``config`` (default: the entry's config
    unchanged). The files are
    hard-linked from the source version (the staging folder is on the repository's filesystem), so a
    hundred swaps cost no disk; the manifest is written anew by the publish. Returns the new version."""
    source_dir = repository.version_dir(name, source)
    manifest = json.loads((source_dir / MANIFEST).read_text(encoding="utf-8"))
    for key in ("name", "version", "size_bytes", "created_at"):
        manifest.pop(key, None)
    config = repository.config(name) if config is None else config
    with repository.stage(name) as staged:
        for path in sorted(source_dir.rglob("*")):
            if path.name == MANIFEST and path.parent == source_dir:
                continue
            target = staged.dir / path.relative_to(source_dir)
            if path.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(path, target)
        repository.commit(staged, config, manifest)
    return staged.version


def version_files(repository: Repository, name: str, version: int) -> list[Path]:
    return sorted(p for p in repository.version_dir(name, version).rglob("*") if p.is_file())


def swaps(stack, name: str, count: int, *, clients: int, log) -> dict:
    """``count`` swaps of ``name`` under load, alternating: publish a new version (policy latest) and
    load it; roll back to the version before (policy ``specific``, as ``converters rollback --to``
    writes) and load. Each swap is timed from the repository change to the first answer the Bento gives
    from the new version; the clients' answers are checked throughout."""
    import threading
    import time

    from benchmarks.faults.load import Load, summarise

    repository = Repository(stack.repository)
    load = Load(stack.bento.url, stack.expected, clients=clients, timeout_s=stack.timeout_s + 30).start()
    records = []
    current = repository.served_versions(name)[-1]
    previous = current
    error = None
    try:
        for index in range(count):
            started = time.monotonic()
            if index % 2 == 0:
                repository.set_version_policy(name, "latest")
                target, kind = publish_copy(repository, name, current), "publish"
                previous = current
            else:
                repository.set_version_policy(name, [previous])  # `converters rollback --to PREVIOUS`
                target, kind = previous, "rollback"
            loaded = threading.Thread(target=stack.triton.load, args=(name,), daemon=True)
            loaded.start()
            loaded.join(120)
            load_s = time.monotonic() - started
            if loaded.is_alive():
                error = f"swap {index + 1}: Triton's load of {name} did not return within 120 s"
                break
            routed = stack.wait_for_version(target, timeout_s=60)
            if routed is None:
                error = f"swap {index + 1}: the Bento did not route to version {target} within 60 s"
                break
            records.append(
                {
                    "swap": index + 1,
                    "kind": kind,
                    "version": target,
                    "load_s": round(load_s, 3),
                    "seconds": round(routed - started, 3),
                }
            )
            current = target
            log.info("swap %d (%s -> version %d): %.2f s", index + 1, kind, target, routed - started)
    finally:
        outcomes = load.stop()
    times = sorted(r["seconds"] for r in records)
    summary = summarise(outcomes, hung_s=stack.timeout_s + 1.0)
    return {
        "requested": count,
        "swaps": len(records),
        **summary,
        "failed": summary["requests"] - summary["statuses"].get("200", 0),
        "versions_answering": sorted({o.version for o in outcomes if o.version is not None}),
        "swap_s_median": times[len(times) // 2] if times else None,
        "swap_s_max": times[-1] if times else None,
        "error": error,
        "bento_restarted": stack.bento_restarted(),
        "records": records,
    }
