"""Batch jobs: a file of texts or image paths through the service's batch endpoints, results in order.

    python -m serving.batch INPUT OUTPUT [--url http://127.0.0.1:3000] [--route /embed/batch]
        [--field text] [--batch-size 32] [--concurrency 4] [--model NAME] [--version N] [--top-k K]

A client of the running service (HTTP only: no model, no torch here). ``INPUT`` is JSON Lines (each
line an object whose ``--field`` holds the text or the image path, or a bare JSON string) or CSV (a
header row naming the columns) by its suffix or ``--format``; an ``id`` field/column, when there is
one, is carried into the output. Image paths are relative to the input file's folder.

Records are sent ``--batch-size`` at a time to ``--route`` (``/embed/batch``, ``/classify/batch``,
``/predict/batch``), at most ``--concurrency`` requests at once, and written to ``OUTPUT`` (JSON
Lines) in input order, one line per input record: ``{"index", "id"?, "model", "version",
"embedding" | "predictions"}``, or ``{"index", "id"?, "error", "status"}`` for a record the service
refused (a batch answered 400/413/500 is split in halves until the bad records are alone, so the others
still get their results). Nothing is dropped: every record gets exactly one line.

Resuming: the lines already in ``OUTPUT`` are kept and their records not sent again. Run the same
command after a crash, a kill or Ctrl-C and it goes on from the first record without a line (a line
cut short by a kill is dropped and redone). ``OUTPUT.batch.json`` records the input's digest and the
options: a changed input or other options are refused rather than mixed into one output.
503 and 429 are waited out (``Retry-After``) and retried, up to ``--retries`` times per request;
then the job stops with exit 1, and the same command resumes it.

Progress goes to stderr when it is a terminal, nothing otherwise; a summary (JSON) goes to stdout.
``--api-key`` (or ``$MODELPACK_API_KEY``) is sent as ``Authorization: Bearer``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from core.errors import InvalidArgument, ToolkitError, Unavailable
from core.tasks import ROUTES

API_KEY_ENV = "MODELPACK_API_KEY"
STATE_SUFFIX = ".batch.json"
# Answers worth waiting out and retrying: the service is busy, restarting, or the key's rate limit.
RETRIED = (429, 502, 503, 504)


@dataclass(frozen=True)
class BatchRoute:
    """What a batch route takes and gives: the request's list field and how one item's result reads."""

    path: str
    kind: str  # "text" or "image" (the task registry's input kind)
    request_field: str  # "texts" or "images"
    reply: str  # the task registry's reply name: "embeddings", "results" or "entity_results"

    @property
    def answer_field(self) -> str:
        """The answer's list, one element per item: ``embeddings``, else ``results``."""
        return "embeddings" if self.reply == "embeddings" else "results"


# The replies of the routes that take a list (serving/tasks.py REPLIES), and the input kinds a file of
# texts or image paths gives; feature rows and named tensors are not read from such files.
BATCH_REPLIES = ("embeddings", "results", "entity_results")
BATCH_KINDS = {"text": "texts", "image": "images"}


def batch_routes() -> dict[str, BatchRoute]:
    """The service's routes that take a list of texts or images, from the task registry
    (``core/tasks.py``)."""
    found = {}
    for path, (task, route) in ROUTES.items():
        if route.reply in BATCH_REPLIES and task.input_kind in BATCH_KINDS:
            found[path] = BatchRoute(path, task.input_kind, BATCH_KINDS[task.input_kind], route.reply)
    return found


@dataclass
class Record:
    index: int  # position among the input's records, from 0
    id: object = None  # the input's `id`, when it has one
    value: str | None = None  # the text, or the image file as base64
    error: str | None = None  # why the record cannot be sent (bad line, missing file)


# ---- reading the input ----------------------------------------------------------------------------


def input_format(path: Path, given: str | None) -> str:
    if given:
        return given
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    raise InvalidArgument(
        f"--format: cannot tell the format of {path.name} from its suffix; pass --format jsonl or csv",
        field="format",
    )


def read_records(path: Path, fmt: str, field_name: str, kind: str) -> Iterator[Record]:
    """Every record of the input, in order; a record that cannot be read carries its error instead."""
    if fmt == "jsonl":
        raw = _jsonl_values(path, field_name)
    else:
        raw = _csv_values(path, field_name)
    for index, (record_id, value, error) in enumerate(raw):
        record = Record(index, record_id, None, error)
        if error is None and kind == "image":
            image = Path(value)
            image = image if image.is_absolute() else path.parent / image
            try:
                record.value = base64.b64encode(image.read_bytes()).decode("ascii")
            except OSError as err:
                record.error = f"{field_name}: cannot read image {value!r}: {err.strerror or err}"
        elif error is None:
            record.value = value
        yield record


def _jsonl_values(path: Path, field_name: str) -> Iterator[tuple[object, str | None, str | None]]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as err:
                yield None, None, f"line {number}: not JSON ({err.msg}); write one JSON object per line"
                continue
            if isinstance(data, str):
                yield None, data, None
            elif isinstance(data, dict) and isinstance(data.get(field_name), str):
                yield data.get("id"), data[field_name], None
            else:
                keys = sorted(data) if isinstance(data, dict) else type(data).__name__
                yield (
                    data.get("id") if isinstance(data, dict) else None,
                    None,
                    f"line {number}: no string field {field_name!r} (has {keys}); pass --field NAME",
                )


def _csv_values(path: Path, field_name: str) -> Iterator[tuple[object, str | None, str | None]]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, dialect="excel-tab" if path.suffix.lower() == ".tsv" else "excel")
        if reader.fieldnames is None or field_name not in reader.fieldnames:
            raise InvalidArgument(
                f"--field: {path.name} has no column {field_name!r} (columns: {reader.fieldnames}); "
                "pass --field NAME",
                field="field",
            )
        for row in reader:
            value = row.get(field_name)
            if value is None:
                yield row.get("id"), None, f"row {reader.line_num}: no {field_name!r} value"
            else:
                yield row.get("id"), value, None


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- the output and its resume state ---------------------------------------------------------------


def completed_lines(output: Path) -> int:
    """How many records ``output`` already holds, after cutting a last line that a kill left unfinished;
    InvalidArgument when a line is not the record expected there (another job's output)."""
    if not output.exists():
        return 0
    data = output.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):  # the kill came in the middle of a line: drop it, its record is redone
        with open(output, "r+b") as handle:
            handle.truncate(end)
    count = 0
    for number, line in enumerate(data[:end].splitlines(), start=1):
        try:
            index = json.loads(line)["index"]
        except (json.JSONDecodeError, KeyError, TypeError):
            index = None
        if index != count:
            raise InvalidArgument(
                f"{output}: line {number} is not the result of record {count} (index {index!r}); this file "
                "is not this job's output: remove it or choose another OUTPUT",
                field="output",
            )
        count += 1
    return count


def job_state(args: argparse.Namespace, digest: str) -> dict:
    return {
        "input": str(args.input.resolve()),
        "input_sha256": digest,
        "route": args.route,
        "field": args.field,
        "model": args.model,
        "version": args.version,
        "top_k": args.top_k,
    }


def check_state(path: Path, state: dict, resuming: bool) -> None:
    """Refuse to add to an output that another input or other options started."""
    if not resuming or not path.exists():
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return
    changed = [k for k in state if k != "input" and previous.get(k) != state[k]]
    if changed:
        what = ", ".join(f"{k} {previous.get(k)!r} -> {state[k]!r}" for k in changed)
        raise InvalidArgument(
            f"{path}: the output was started with another input or options ({what}); resume with the same "
            "command, or remove the output and its .batch.json to start again",
            field="output",
        )


# ---- sending ----------------------------------------------------------------------------------------


@dataclass
class Progress:
    total: int | None
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    shown: float = 0.0
    tty: bool = False

    def add(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.tty and now - self.shown >= 0.5:
            self.shown = now
            self.show()

    def show(self, end: str = "") -> None:
        rate = self.done / max(time.monotonic() - self.started, 1e-9)
        of = f"/{self.total} ({100 * self.done / self.total:.0f}%)" if self.total else ""
        sys.stderr.write(f"\r{self.done}{of} records, {rate:.0f}/s{end}")
        sys.stderr.flush()


class Job:
    """One run: records in, requests out (bounded), results written in order."""

    def __init__(self, args: argparse.Namespace, route: BatchRoute, output, progress: Progress) -> None:
        self.args = args
        self.route = route
        self.output = output
        self.progress = progress
        self.sent_items = 0
        self.errors = 0
        self.requests = 0
        self._pending: dict[int, list[bytes]] = {}  # batch number -> its lines, until written in order
        self._next = 0
        self._written = asyncio.Condition()

    def body(self, values: list[str]) -> dict:
        body: dict = {self.route.request_field: values}
        for name in ("model", "version", "top_k"):
            if getattr(self.args, name) is not None:
                body[name] = getattr(self.args, name)
        return body

    async def post(self, client, values: list[str]):
        """The service's answer to one request, waiting out 503/429/connection failures
        (``--retries`` times, ``Retry-After`` or a growing pause); Unavailable after that."""
        import httpx

        attempt = 0
        while True:
            self.requests += 1
            try:
                response = await client.post(self.route.path, json=self.body(values))
                if response.status_code not in RETRIED:
                    return response
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
                wait = float(response.headers.get("retry-after") or 0) or min(0.5 * 2**attempt, 10.0)
            except httpx.TransportError as err:
                problem = f"{type(err).__name__}: {err}"
                wait = min(0.5 * 2**attempt, 10.0)
            attempt += 1
            if attempt > self.args.retries:
                raise Unavailable(
                    f"{self.args.url}{self.route.path} failed {attempt} times, last: {problem}; the output "
                    "holds every record done so far: run the same command to resume"
                )
            await asyncio.sleep(wait)

    async def results(self, client, records: list[Record]) -> list[dict]:
        """One output record per input record: the result, or the error that record alone gets."""
        out: list[dict | None] = [None] * len(records)
        sendable = []
        for i, record in enumerate(records):
            if record.error is not None:
                self.errors += 1
                out[i] = {"error": record.error, "status": None}
            else:
                sendable.append(i)
        await self._send(client, records, sendable, out)
        return [{**_head(record), **result} for record, result in zip(records, out, strict=True)]

    async def _send(self, client, records: list[Record], positions: list[int], out: list) -> None:
        if not positions:
            return
        response = await self.post(client, [records[i].value for i in positions])
        if response.status_code == 200:
            self.sent_items += len(positions)
            body = orjson.loads(response.content)
            head = {"model": body.get("model"), "version": body.get("version")}
            items = body.get(self.route.answer_field)
            if not isinstance(items, list) or len(items) != len(positions):
                raise ToolkitError(
                    f"{self.args.url}{self.route.path} answered 200 without {len(positions)} "
                    f"{self.route.answer_field!r}: {response.text[:200]}"
                )
            for i, item in zip(positions, items, strict=True):
                out[i] = {**head, "embedding": item} if self.route.reply == "embeddings" else {**head, **item}
            return
        if response.status_code in (401, 403, 404):  # every request would fail the same way
            raise InvalidArgument(
                f"{self.args.url}{self.route.path}: HTTP {response.status_code}: {_error_text(response)}",
                field="url" if response.status_code == 404 else "api_key",
            )
        if len(positions) == 1:  # this record alone is refused: its line says why
            self.errors += 1
            out[positions[0]] = {"error": _error_text(response), "status": response.status_code}
            self.sent_items += 1
            return
        half = len(positions) // 2  # a record of the batch is refused: find it, the others go through
        await self._send(client, records, positions[:half], out)
        await self._send(client, records, positions[half:], out)

    async def write(self, number: int, lines: list[bytes]) -> None:
        """Write batch ``number`` once every batch before it is written (input order)."""
        async with self._written:
            self._pending[number] = lines
            while self._next in self._pending:
                chunk = self._pending.pop(self._next)
                self.output.write(b"".join(chunk))
                self.output.flush()
                os.fsync(self.output.fileno())
                self.progress.add(len(chunk))
                self._next += 1
            self._written.notify_all()

    async def wait_room(self, number: int, ahead: int) -> None:
        """Hold batch ``number`` back while ``ahead`` batches before it wait to be written (memory)."""
        async with self._written:
            await self._written.wait_for(lambda: number - self._next < ahead)


def _head(record: Record) -> dict:
    return {"index": record.index} | ({"id": record.id} if record.id is not None else {})


def _error_text(response) -> str:
    try:
        return str(response.json().get("error") or response.text[:300])
    except ValueError:
        return response.text[:300]


def _batches(records: Iterator[Record], size: int) -> Iterator[list[Record]]:
    batch: list[Record] = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


async def run_job(
    args: argparse.Namespace, route: BatchRoute, fmt: str, skip: int, progress: Progress
) -> Job:
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    records = read_records(args.input, fmt, args.field, route.kind)
    for _ in range(skip):  # done in an earlier run: their lines are in the output already
        next(records, None)
    with open(args.output, "ab") as output:
        job = Job(args, route, output, progress)
        async with httpx.AsyncClient(
            base_url=args.url, headers=headers, timeout=args.timeout, limits=limits
        ) as client:
            slots = asyncio.Semaphore(args.concurrency)
            tasks: set[asyncio.Task] = set()
            failure: list[BaseException] = []

            async def one(number: int, batch: list[Record]) -> None:
                try:
                    results = await job.results(client, batch)
                    await job.write(number, [orjson.dumps(r) + b"\n" for r in results])
                except BaseException as err:  # noqa: BLE001 - the first failure stops the job, below
                    failure.append(err)
                finally:
                    slots.release()

            for number, batch in enumerate(_batches(records, args.batch_size)):
                await job.wait_room(number, 4 * args.concurrency)
                await slots.acquire()
                if failure:
                    slots.release()
                    break
                task = asyncio.create_task(one(number, batch))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
            if failure:
                raise failure[0]
    return job


def build_parser() -> argparse.ArgumentParser:
    routes = batch_routes()
    parser = argparse.ArgumentParser(
        prog="python -m serving.batch",
        description="Send a JSONL or CSV file of texts or image paths through the service's batch endpoints "
        "and write the results in input order; run the same command again to resume after a crash or kill.",
    )
    parser.add_argument("input", type=Path, metavar="INPUT", help="JSON Lines (.jsonl) or CSV (.csv, .tsv)")
    parser.add_argument(
        "output", type=Path, metavar="OUTPUT", help="results, JSON Lines (resumed when it exists)"
    )
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="the service (default %(default)s)")
    parser.add_argument(
        "--route", default="/embed/batch", choices=sorted(routes), help="batch endpoint (default %(default)s)"
    )
    parser.add_argument(
        "--field",
        default=None,
        help="the field/column holding the text or image path (default: text or image)",
    )
    parser.add_argument("--format", choices=("jsonl", "csv"), default=None, help="default: by the suffix")
    parser.add_argument(
        "--batch-size", type=int, default=32, help="records per request (default %(default)s)"
    )
    parser.add_argument("--concurrency", type=int, default=4, help="requests at once (default %(default)s)")
    parser.add_argument("--model", default=None, help="a configured model (default: the route's only one)")
    parser.add_argument("--version", type=int, default=None, help="pin a version")
    parser.add_argument("--top-k", type=int, default=None, help="labels per item (classifiers)")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV), help=f"default: ${API_KEY_ENV}")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds per request (default %(default)s)"
    )
    parser.add_argument(
        "--retries", type=int, default=8, help="retries of a request answered 503/429 (default %(default)s)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ToolkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command to resume", file=sys.stderr)
        return 130


def run(args: argparse.Namespace) -> int:
    route = batch_routes()[args.route]
    args.field = args.field or ("text" if route.kind == "text" else "image")
    for name in ("batch_size", "concurrency"):
        if getattr(args, name) < 1:
            flag = "--" + name.replace("_", "-")
            raise InvalidArgument(f"{flag}: must be 1 or more, got {getattr(args, name)}", field=name)
    if args.retries < 0:
        raise InvalidArgument(f"--retries: must be 0 or more, got {args.retries}", field="retries")
    if not args.input.is_file():
        raise InvalidArgument(f"INPUT: {args.input} is not a file", field="input")
    fmt = input_format(args.input, args.format)
    state_path = args.output.with_name(args.output.name + STATE_SUFFIX)
    state = job_state(args, file_digest(args.input))
    skip = completed_lines(args.output)
    check_state(state_path, state, resuming=skip > 0)
    if skip == 0 or not state_path.exists():
        args.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = state_path.with_name(state_path.name + ".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, state_path)
    tty = sys.stderr.isatty()
    total = sum(1 for _ in read_records(args.input, fmt, args.field, "text")) if tty else None
    progress = Progress(total, done=skip, tty=tty)
    started = time.monotonic()
    job = asyncio.run(run_job(args, route, fmt, skip, progress))
    seconds = time.monotonic() - started
    if tty:
        progress.show(end="\n")
    print(
        json.dumps(
            {
                "input": str(args.input),
                "output": str(args.output),
                "route": args.route,
                "records": progress.done,
                "resumed_after": skip,
                "sent_items": job.sent_items,
                "requests": job.requests,
                "errors": job.errors,
                "seconds": round(seconds, 3),
                "items_per_s": round(job.sent_items / seconds, 2) if seconds > 0 else None,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
