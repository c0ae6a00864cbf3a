"""`serve`, `status`, `load`, `unload`: a local Triton server for the model repository.

    python -m converters serve [--repository DIR] [--http-port P] [--grpc-port P] [--metrics-port P]
                               [--cache-size SIZE]
    python -m converters status [--url HOST:PORT] [--json]
    python -m converters load NAME [--url HOST:PORT] [--json]   # a new version goes live, no restart
                                                                # (with NAME_tokenizer and NAME_text, if any)
    python -m converters unload NAME [--url HOST:PORT] [--json]

`serve` runs until Ctrl-C or SIGTERM and then stops tritonserver and its stub processes. While it
runs, it records its addresses in ``runs/triton/serve.json`` so that `status`, `load` and `unload`
find it without ``--url``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from core.cli import add_json_flag, emit
from core.errors import InvalidArgument, Unavailable
from core.repository import add_repository_flag

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
STATE_FILE = ROOT / "runs" / "triton" / "serve.json"
DEFAULT_LOG = ROOT / "runs" / "triton" / "tritonserver.log"
DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}  # Triton's own defaults
# Triton's local response cache: ~40,000 MiniLM embeddings (1.5 kB each plus the cache's overhead).
DEFAULT_CACHE_SIZE = "64M"
_SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}


def parse_size(text: str) -> int:
    """``64M``, ``512K``, ``1G`` (binary units) or a number of bytes; ``0`` for none."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (value[:-1], value[-1]) if value and value[-1] in _SIZE_UNITS else (value, "")
    if not number.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write e.g. 64M, 512K, 1G or 0 (no cache)")
    return int(number) * _SIZE_UNITS[unit]


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run a local Triton server on the model repository (Ctrl-C stops it)",
        description="Start tritonserver on 127.0.0.1 with explicit model control, load the repository's "
        "models, wait until they are ready, and serve until Ctrl-C or SIGTERM.",
    )
    add_repository_flag(serve)
    for kind, port in DEFAULT_PORTS.items():
        serve.add_argument(
            f"--{kind}-port",
            type=int,
            default=port,
            metavar="P",
            help=f"(default {port}; 0 picks a free port)",
        )
    serve.add_argument(
        "--model",
        dest="models",
        action="append",
        metavar="NAME",
        help="load only this model (repeatable; default: every model in the repository)",
    )
    serve.add_argument(
        "--cache-size",
        type=parse_size,
        default=parse_size(DEFAULT_CACHE_SIZE),
        metavar="SIZE",
        help=f"Triton's local response cache, for the entries whose config enables it (the converters' "
        f"--response-cache): 64M, 1G, ... or 0 for none (default {DEFAULT_CACHE_SIZE})",
    )
    serve.add_argument("--log", type=Path, default=DEFAULT_LOG, help="server log file (default %(default)s)")
    serve.add_argument(
        "--timeout", type=float, default=180.0, help="seconds to wait for readiness (default %(default)s)"
    )
    add_json_flag(serve)
    serve.set_defaults(func=run_serve)

    for name, helptext, func in (
        ("status", "show a running server's health and the state of every model", run_status),
        ("load", "(re)load a model on a running server: a new version goes live without restart", run_load),
        ("unload", "unload a model from a running server", run_unload),
    ):
        parser = subparsers.add_parser(name, help=helptext, description=helptext)
        if name != "status":
            parser.add_argument("name", metavar="NAME", help="model name in the repository")
        parser.add_argument(
            "--url",
            default=None,
            metavar="HOST:PORT",
            help="the server's HTTP address (default: the running `serve`, else 127.0.0.1:8000)",
        )
        add_json_flag(parser)
        if name == "load":
            parser.add_argument(
                "--timeout",
                type=float,
                default=None,
                metavar="S",
                help="give up on a load still running after S seconds, naming the version and the "
                "server's log line (default 120)",
            )
        parser.set_defaults(func=func)


# ---- serve ------------------------------------------------------------------------------------------


def _stop_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt


def run_serve(args: argparse.Namespace) -> int:
    from core import processes
    from core.repository import Repository, default_repository
    from local_triton.server import TritonServer

    # TritonServer refuses a repository that is not a directory (NotFound, naming --repository).
    server = TritonServer(
        args.repository or default_repository(),
        http_port=args.http_port or None,
        grpc_port=args.grpc_port or None,
        metrics_port=args.metrics_port or None,
        models=args.models,
        log_path=args.log,
        die_with_parent=True,
        cache_size=args.cache_size,
    )
    repository = server.repository
    repo = Repository(repository)
    names = repo.models()
    if args.models:
        unknown = sorted(set(args.models) - set(names))
        if unknown:
            raise InvalidArgument(
                f"--model: {', '.join(unknown)} not in {repository} "
                f"(it has {', '.join(names) or 'no models'})",
                field="model",
            )
        # A text entry comes with its companions (NAME_tokenizer, NAME_text), so text can be sent.
        wanted = list(dict.fromkeys(m for name in args.models for m in (name, *repo.companions(name))))
        server.models = wanted
    elif not names:
        log.warning("%s holds no model (no */config.pbtxt): serving an empty repository", repository)

    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    state_pid = None
    try:
        server.start(timeout=args.timeout)
        state_pid = _write_state(server)
        served = ", ".join(server.models or names) or "no models"
        emit(
            {
                "models": list(server.models or names),
                "repository": str(repository),
                "http_url": server.http_url,
                "grpc_url": server.grpc_url,
                "metrics_url": f"http://{server.metrics_url}/metrics",
                "log": str(server.log_path),
                "pid": server.pid,
                "cache_size": server.cache_size,
            },
            as_json=args.json,
            human=lambda: (
                f"serving {served} from {repository}\n"
                f"  http    {server.http_url}\n  grpc    {server.grpc_url}\n"
                f"  metrics http://{server.metrics_url}/metrics\n  log     {server.log_path}\n"
                f"  cache   {_size_text(server.cache_size)}\n"
                "Ctrl-C stops it."
            ),
        )
        while server.running:
            time.sleep(0.5)
        # It ended under us (a crash, or killed): say how, then end its stubs at once; stop() would
        # give them a grace period they do not need with their server gone.
        reason = server.explain(f"{processes.exit_status(server.returncode)} while serving")
        server.kill()
        raise Unavailable(reason)
    except KeyboardInterrupt:
        print("stopping tritonserver", file=sys.stderr, flush=True)
        return 0
    finally:
        server.stop()
        _remove_state(state_pid)
        signal.signal(signal.SIGTERM, previous)


def _size_text(size: int | None) -> str:
    if not size:
        return "none"
    for unit in ("G", "M", "K"):
        if size % _SIZE_UNITS[unit] == 0:
            return f"{size // _SIZE_UNITS[unit]}{unit} (local response cache)"
    return f"{size} bytes (local response cache)"


def _remove_state(pid: int | None) -> None:
    """Remove the state file if it is still ours: another `serve` started meanwhile may own it now."""
    try:
        if pid is not None and json.loads(STATE_FILE.read_text()).get("pid") == pid:
            STATE_FILE.unlink(missing_ok=True)
    except (OSError, ValueError, AttributeError):
        pass


def _write_state(server) -> int:
    """Record the server's addresses for `status`, `load` and `unload`; returns the pid recorded."""
    STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "pid": server.pid,
        "repository": str(server.repository),
        "http_url": server.http_url,
        "grpc_url": server.grpc_url,
        "metrics_url": server.metrics_url,
        "log": str(server.log_path),
    }
    tmp = STATE_FILE.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, STATE_FILE)
    return server.pid


def _running_serve() -> dict | None:
    """The state of the `serve` that is running (its addresses and log), or None."""
    try:
        state = json.loads(STATE_FILE.read_text())
        os.kill(int(state["pid"]), 0)
        return state if isinstance(state.get("http_url"), str) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _url(args: argparse.Namespace) -> str:
    """--url, else the address of the `serve` that is running, else Triton's default HTTP port."""
    if args.url:
        return args.url
    state = _running_serve()
    return state["http_url"] if state else f"127.0.0.1:{DEFAULT_PORTS['http']}"


def _log_of(url: str) -> str | None:
    """The log of the running `serve` when ``url`` is its address (for the error of a stalled load)."""
    state = _running_serve()
    return state.get("log") if state and state["http_url"] == url else None


# ---- status / load / unload -------------------------------------------------------------------------


def run_status(args: argparse.Namespace) -> int:
    from local_triton.server import server_status

    status = server_status(_url(args))
    if args.json:
        print(json.dumps(status, indent=2))
        return 0 if status["ready"] else 1
    print(
        f"Triton {status['version']} at {status['url']}: "
        f"{'live' if status['live'] else 'not live'}, {'ready' if status['ready'] else 'NOT READY'}"
    )
    rows = [
        (m["name"], m.get("version", "-"), m.get("state", "-"), m.get("reason", "")) for m in status["models"]
    ]
    if not rows:
        print("no models in the repository")
    width = max([len(r[0]) for r in rows] + [5])
    for name, version, state, reason in [("MODEL", "VERSION", "STATE", "REASON"), *rows]:
        print(f"{name:<{width}}  {version:<7}  {state:<11}  {reason}".rstrip())
    return 0 if status["ready"] else 1


def run_load(args: argparse.Namespace) -> int:
    from local_triton.server import LOAD_TIMEOUT_S, load_model

    if args.timeout is not None and not args.timeout > 0:
        raise InvalidArgument(
            f"--timeout: must be a positive number of seconds, got {args.timeout}", field="timeout"
        )
    url = _url(args)
    versions = load_model(url, args.name, timeout_s=args.timeout or LOAD_TIMEOUT_S, log_path=_log_of(url))
    emit(
        {"name": args.name, "ready": True, "versions": versions},
        as_json=args.json,
        human=lambda: (
            f"{args.name}: ready, serving version{'s' if len(versions) != 1 else ''} {', '.join(versions)}"
        ),
    )
    return 0


def run_unload(args: argparse.Namespace) -> int:
    from local_triton.server import unload_model

    unload_model(_url(args), args.name)
    emit({"name": args.name, "unloaded": True}, as_json=args.json, human=lambda: f"{args.name}: unloaded")
    return 0
