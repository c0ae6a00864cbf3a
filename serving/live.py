"""The service follows the model repository and Triton while it runs: no restart after a publish, a
rollback or a load.

Every ``refresh_s`` (and at once when a call finds a version gone) ``ModelWatcher`` reads, for each
configured model, the versions the repository serves (its ``config.pbtxt`` version_policy and version
folders: a few small files) and the state of every version on Triton (its repository index: one gRPC
call). A newly served version gets its entry (manifest, tokenizer, image pipeline), built in a thread;
the split is then recomputed (``serving.models.routable_split``): a new version is routed once Triton
has it ready, a version the repository no longer serves stops being routed as soon as another one is
ready, and the entry of a version that is neither served nor loaded is dropped.

Triton turns the old version UNLOADING at the very moment the new one is READY (measured: one load,
one index read apart), so a request already routed to the old one may find it gone: the request path
then marks it here (``version_gone``) and sends the request once more, to a version still routable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from core.errors import ToolkitError
from core.repository import Repository
from serving.models import ModelEntry, VersionEntry, read_version, routable_split
from serving.settings import ServiceSettings
from serving.triton_client import TritonGateway

log = logging.getLogger(__name__)


class ModelWatcher:
    """Keeps ``models`` (the service's ModelEntry per configured model) in step with the repository and
    Triton. ``start()`` inside the serving event loop; ``close()`` on shutdown."""

    def __init__(
        self, settings: ServiceSettings, models: dict[str, ModelEntry], gateway: TritonGateway
    ) -> None:
        self.settings = settings
        self.models = models
        self.gateway = gateway
        self.repository = Repository(settings.repository)
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._reported: dict[str, str] = {}  # per model or version: the problem last logged
        self.refreshes = 0

    def start(self) -> None:
        """Start polling in the running event loop (again if it stopped); a no-op while it runs."""
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="model-watcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def poke(self) -> None:
        """Refresh now rather than at the next interval."""
        if self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # a bug here must not stop the service following its repository
                log.exception("refreshing the models from %s failed", self.repository.root)
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.refresh_s)
            except TimeoutError:
                pass
            self._wake.clear()

    async def refresh(self) -> None:
        """Read the repository (in a thread: it may build tokenizers) and Triton's states, then apply."""
        known = {name: set(entry.versions) for name, entry in self.models.items()}
        found = await asyncio.to_thread(self._read_repository, known)
        states = await self.gateway.model_states()
        for name, entry in self.models.items():
            if name in found:
                served, built = found[name]
                self._apply(entry, served, built, states)
        self.refreshes += 1

    def _read_repository(
        self, known: dict[str, set[int]]
    ) -> dict[str, tuple[list[int], dict[int, VersionEntry]]]:
        """Per model: the served versions, and the entries of served versions the service lacks. A model
        the repository cannot be read for is left out (its problem logged once)."""
        found = {}
        for index, spec in enumerate(self.settings.models):
            where = f"models.{index} ({spec.name})"
            try:
                served = self.repository.served_versions(spec.name)
            except (ToolkitError, OSError, ValueError) as err:
                self._report(
                    spec.name, f"{where}: the repository cannot be read ({err}); keeping the versions known"
                )
                continue
            self._report(spec.name, None)
            built = {}
            for version in served:
                if version in known.get(spec.name, ()):
                    continue
                key = f"{spec.name}:{version}"
                try:
                    built[version] = read_version(self.repository, spec, version, self.settings.limits, where)
                except (ToolkitError, OSError, ValueError) as err:
                    self._report(key, f"{where}: version {version} is served but cannot be used: {err}")
                    continue
                self._report(key, None)
                log.info("%s: version %d published, read from %s", spec.name, version, self.repository.root)
            found[spec.name] = ([v for v in served if v in built or v in known.get(spec.name, ())], built)
        return found

    def _apply(
        self,
        entry: ModelEntry,
        served: list[int],
        built: dict[int, VersionEntry],
        states: dict[tuple[str, int], str] | None,
    ) -> None:
        versions = {**entry.versions, **built}
        ready = (
            None
            if states is None
            else frozenset(v for (n, v), s in states.items() if n == entry.name and s == "READY")
        )
        split = routable_split(entry.configured, served, ready, entry.split)
        split = {v: w for v, w in split.items() if v in versions}
        keep = set(served) | set(ready or ()) | set(split)
        entry.versions = {v: e for v, e in versions.items() if v in keep}
        entry.served, entry.ready = tuple(served), ready
        if split and split != entry.split:
            log.info(
                "%s: routing to %s (served by the repository: %s; ready on Triton: %s)",
                entry.name,
                _show(split),
                served,
                "not known" if ready is None else sorted(ready),
            )
            entry.split = split

    def version_gone(self, entry: ModelEntry, version: int) -> None:
        """Triton says ``version`` is not loaded: route around it now, and refresh soon."""
        ready = (entry.ready if entry.ready is not None else frozenset(entry.versions)) - {version}
        entry.ready = ready
        split = routable_split(entry.configured, entry.served, ready, entry.split)
        split = {v: w for v, w in split.items() if v in entry.versions}
        if split and split != entry.split:
            log.info(
                "%s: version %d is not loaded on Triton; routing to %s", entry.name, version, _show(split)
            )
            entry.split = split
        self.poke()

    def _report(self, key: str, problem: str | None) -> None:
        """Log a problem once (WARNING), and once more when it is gone."""
        before = self._reported.get(key)
        if problem == before:
            return
        if problem is None:
            self._reported.pop(key, None)
            log.info("%s: readable again", key)
        else:
            self._reported[key] = problem
            log.warning("%s", problem)


def _show(split: dict[int, float]) -> str:
    total = sum(split.values()) or 1.0
    return ", ".join(f"version {v} ({100 * w / total:.0f}%)" for v, w in sorted(split.items()))
