"""The supervisor: runs many runnables (pillows, bridges, relays, and the error retry runner)
as child processes.

Each child is a plain ``changefeed run NAME`` process, so a runnable behaves the same under
the supervisor as when started by hand, and a crash takes down one child, not all. A child that
exits unexpectedly is restarted after an exponential backoff (reset once it has stayed up for
a while); SIGTERM or SIGINT stops every child with SIGTERM, which lets each finish and
checkpoint its batch, and kills the ones that do not exit in time.

Health has two parts: liveness (is the child process running) and progress ("stuck": no
checkpoint has moved for ``stuck_after`` seconds while the lag grew), read from
`changefeed.status.pillow_status` like every other view of a pillow.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socket import AF_INET6
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from changefeed.backoff import Backoff
from changefeed.clock import SYSTEM_CLOCK, Clock
from changefeed.lifecycle import StopFlag
from changefeed.retry_runner import RETRY_RUNNER

__all__ = [
    "RESTART_BACKOFF",
    "RETRY_RUNNER",
    "Backoff",
    "Child",
    "ChildSpec",
    "ProgressTracker",
    "Supervisor",
    "changefeed_command",
    "pillow_children",
    "serve_health",
]

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from changefeed.app import App
    from changefeed.pillow import Pillow
    from changefeed.status import PillowStatus

log = logging.getLogger("changefeed.supervisor")


CLI_BOOT = "from changefeed.cli import main; main()"


def changefeed_command(*args: str, global_args: Sequence[str] = ()) -> list[str]:
    """argv running the ``changefeed`` CLI with this interpreter (no reliance on PATH)."""
    return [sys.executable, "-c", CLI_BOOT, *global_args, *args]


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """A child process: a name, its command, and the pillow it runs (for progress checks)."""

    name: str
    argv: tuple[str, ...]
    pillow: str | None = None
    env: Mapping[str, str] | None = None


def pillow_children(
    pillow_names: Sequence[str],
    *,
    runnables: Sequence[str] = (),
    global_args: Sequence[str] = (),
    run_args: Sequence[str] = (),
    retry_runner: bool = True,
    retry_interval: float = 5.0,
) -> list[ChildSpec]:
    """One ``changefeed run NAME`` child per pillow and per other runnable (``runnables``:
    bridges, relays), plus the retry runner over their error queues (pillows, the Couch bridge). Only pillows get
    progress checks: they are the ones with checkpoints per partition to compare."""

    def run(name: str) -> tuple[str, ...]:
        return tuple(changefeed_command("run", *run_args, name, global_args=global_args))

    children = [ChildSpec(name, run(name), name) for name in pillow_names]
    children += [ChildSpec(name, run(name)) for name in runnables]
    retried = [*pillow_names, *runnables]  # the runner skips those that queue nothing
    if retry_runner and retried:
        argv = changefeed_command(
            RETRY_RUNNER, "--interval", str(retry_interval), *retried, global_args=global_args
        )
        children.append(ChildSpec(RETRY_RUNNER, tuple(argv)))
    return children


RESTART_BACKOFF = Backoff(base=1.0, factor=2.0, cap=60.0)
"""How long a crashed child waits before its restart (the one `Backoff` policy)."""

RESET_AFTER = 60.0
"""A child that stayed up this many seconds counts as healthy again: its next crash starts
the backoff over (a supervisor setting, not part of the policy)."""


class ProgressTracker:
    """Decides whether a pillow is stuck: no checkpoint progress for ``stuck_after`` seconds
    while its lag grew past what it was at the last progress."""

    def __init__(self, stuck_after: float) -> None:
        self.stuck_after = stuck_after
        self._offsets: tuple[Any, ...] | None = None
        self._progress_at = 0.0
        self._lag_at_progress = 0
        self.stuck = False
        self.lag = 0

    def observe(self, status: PillowStatus, now: float) -> bool:
        offsets = tuple((p.topic, p.partition, p.checkpoint) for p in status.partitions)
        self.lag = status.lag
        if offsets != self._offsets:
            self._offsets = offsets
            self._progress_at = now
            self._lag_at_progress = self.lag
            self.stuck = False
        else:
            self.stuck = (
                now - self._progress_at >= self.stuck_after and self.lag > self._lag_at_progress
            )
        return self.stuck

    def restarted(self, now: float) -> None:
        """A fresh process gets a full ``stuck_after`` to show progress."""
        self._progress_at = now
        self._lag_at_progress = self.lag
        self.stuck = False


@dataclass
class Child:
    """A child's runtime state."""

    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    starts: int = 0
    failures: int = 0
    """Consecutive unexpected exits (drives the backoff)."""
    last_exit: int | None = None
    next_start: float = 0.0
    delays: list[float] = field(default_factory=list)
    """Every restart delay applied, for health output and tests."""
    progress: ProgressTracker | None = None
    kill_at: float | None = None
    """When a child asked to stop (stuck) must be gone; it is killed after that."""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


class Supervisor:
    """Starts, watches, restarts and stops child processes."""

    def __init__(
        self,
        children: Sequence[ChildSpec],
        *,
        app: App | None = None,
        backoff: Backoff = RESTART_BACKOFF,
        reset_after: float = RESET_AFTER,
        stuck_after: float = 300.0,
        restart_stuck: bool = False,
        health_interval: float = 5.0,
        stop_timeout: float = 30.0,
        poll_interval: float = 0.1,
        env: Mapping[str, str] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        on_exit: Callable[[Child], None] | None = None,
    ) -> None:
        names = [c.name for c in children]
        if len(set(names)) != len(names):
            raise ValueError("child names must be unique")
        self.children = [Child(spec) for spec in children]
        self.app = app
        self.backoff = backoff
        self.reset_after = reset_after
        self.stuck_after = stuck_after
        self.restart_stuck = restart_stuck
        self.health_interval = health_interval
        self.stop_timeout = stop_timeout
        self.poll_interval = poll_interval
        self.env = dict(env) if env is not None else None
        self.clock = clock
        self.on_exit = on_exit
        self._stop = StopFlag()
        self._lock = threading.Lock()
        self._pillows: dict[str, Pillow] = {}
        self._next_health = 0.0
        self.started_at = clock.monotonic()
        for child in self.children:
            if child.spec.pillow is not None:
                child.progress = ProgressTracker(stuck_after)

    # -- lifecycle ---------------------------------------------------------------------

    def _spawn(self, child: Child) -> None:
        env = dict(os.environ if self.env is None else self.env)
        if child.spec.env:
            env.update(child.spec.env)
        child.proc = subprocess.Popen(list(child.spec.argv), env=env)
        child.started_at = self.clock.monotonic()
        child.starts += 1
        if child.progress is not None:
            child.progress.restarted(child.started_at)
        log.info("supervisor: started %s (pid %d)", child.spec.name, child.proc.pid)

    def start(self) -> None:
        with self._lock:
            for child in self.children:
                if not child.alive:
                    self._spawn(child)

    def poll_once(self) -> None:
        """Reap exited children, restart the due ones, and check progress when it is time."""
        now = self.clock.monotonic()
        with self._lock:
            for child in self.children:
                proc = child.proc
                if proc is not None and proc.poll() is not None:
                    self._exited(child, proc.returncode, now)
                elif proc is None and not self._stop.is_set() and now >= child.next_start:
                    self._spawn(child)
                elif proc is not None and child.kill_at is not None and now >= child.kill_at:
                    log.error("supervisor: %s did not stop in time; killing it", child.spec.name)
                    proc.kill()
        if self.app is not None and now >= self._next_health:
            self._next_health = now + self.health_interval
            self.check_progress()

    def _exited(self, child: Child, code: int, now: float) -> None:
        child.last_exit = code
        child.proc = None
        child.kill_at = None
        if self.on_exit is not None:
            self.on_exit(child)
        if self._stop.is_set():
            return
        if now - child.started_at >= self.reset_after:
            child.failures = 0
        child.failures += 1
        delay = self.backoff.delay(child.failures)
        child.delays.append(delay)
        child.next_start = now + delay
        log.warning(
            "supervisor: %s exited with code %s; restarting in %.2fs (failure %d in a row)",
            child.spec.name,
            code,
            delay,
            child.failures,
        )

    def check_progress(self) -> None:
        """Update the stuck state of every pillow child (and restart stuck ones if asked)."""
        from changefeed.status import pillow_status

        assert self.app is not None
        now = self.clock.monotonic()
        for child in self.children:
            tracker, name = child.progress, child.spec.pillow
            if tracker is None or name is None:
                continue
            try:
                pillow = self._pillows.get(name)
                if pillow is None:
                    pillow = self._pillows[name] = self.app.get_pillow(name)
                stuck = tracker.observe(pillow_status(self.app, pillow), now)
            except Exception as exc:  # noqa: BLE001 - health checks must not kill the supervisor
                log.warning("supervisor: status of %s failed: %s", name, exc)
                continue
            if stuck:
                log.warning(
                    "supervisor: pillow %s is stuck: no checkpoint progress for %.0fs, lag %d",
                    name,
                    self.stuck_after,
                    tracker.lag,
                )
                if self.restart_stuck and child.alive and child.kill_at is None:
                    self._terminate(child)
                    child.kill_at = now + self.stop_timeout

    def _terminate(self, child: Child) -> None:
        if child.proc is not None and child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)

    def run(self) -> int:
        """Supervise until stopped; returns 0 when every child stopped cleanly."""
        self.start()
        while not self._stop.is_set():
            self.poll_once()
            self._stop.sleep(self.poll_interval)
        return self.shutdown()

    def stop(self) -> None:
        """Ask the supervisor to stop (thread- and signal-safe; run it under
        `changefeed.runner.stop_on_signals` so SIGTERM/SIGINT do this)."""
        self._stop.set()

    def shutdown(self) -> int:
        """SIGTERM every child, wait up to ``stop_timeout`` for each to finish its batch, kill
        the rest. Returns 0 when all exited cleanly or were ended by the SIGTERM while still
        starting, 1 when one failed or had to be killed."""
        self._stop.set()
        with self._lock:
            running = [c for c in self.children if c.proc is not None]
            for child in running:
                self._terminate(child)
            deadline = time.monotonic() + self.stop_timeout
            clean = True
            for child in running:
                proc = child.proc
                assert proc is not None
                try:
                    code = proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.error("supervisor: %s did not stop in time; killing it", child.spec.name)
                    proc.kill()
                    code = proc.wait()
                child.last_exit = code
                child.proc = None
                if self.on_exit is not None:
                    self.on_exit(child)
                # Ended by our SIGTERM itself: it came before the child installed its
                # handler (still starting, nothing in hand), not a failed stop.
                clean = clean and code in (0, -signal.SIGTERM)
        return 0 if clean else 1

    # -- health ------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Liveness and progress of every child; ``ok`` only when all are alive, not stuck."""
        now = self.clock.monotonic()
        children = []
        ok = True
        for child in self.children:
            alive = child.alive
            tracker = child.progress
            stuck = bool(tracker and tracker.stuck)
            ok = ok and alive and not stuck
            children.append(
                {
                    "name": child.spec.name,
                    "pillow": child.spec.pillow,
                    "pid": child.pid,
                    "alive": alive,
                    "stuck": stuck,
                    "lag": tracker.lag if tracker else None,
                    "starts": child.starts,
                    "restarts": max(0, child.starts - 1),
                    "last_exit": child.last_exit,
                    "uptime": round(now - child.started_at, 1) if alive else None,
                    "next_start_in": round(max(0.0, child.next_start - now), 1)
                    if not alive and not self._stop.is_set()
                    else None,
                }
            )
        return {"ok": ok, "stopping": self._stop.is_set(), "children": children}


def serve_health(
    supervisor: Supervisor,
    port: int,
    host: str = "127.0.0.1",
    registry: CollectorRegistry | None = None,
    token: str | None = None,
) -> ThreadingHTTPServer:
    """Serve ``/healthz`` (JSON; 200 when healthy, 503 otherwise), ``/livez`` (200 while the
    supervisor runs) and, with a registry, ``/metrics`` on a daemon thread.

    With ``token`` every request must carry it (``Authorization: Bearer TOKEN`` or
    ``?token=TOKEN``; 401 otherwise), as a single pillow's ``/metrics`` does: the health
    document names every child, its pid and its errors, which a host reachable from other
    machines should not tell anyone who asks. (The CLI refuses a non-loopback host without
    one.)"""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path, _, query = self.path.partition("?")
            if token is not None and not _token_given(
                self.headers.get("Authorization", ""), query, token
            ):
                self._send(401, b"token required\n", "text/plain", bearer=True)
                return
            if path == "/healthz":
                health = supervisor.health()
                self._send(
                    200 if health["ok"] else 503, json.dumps(health).encode(), "application/json"
                )
            elif path == "/livez":
                self._send(200, b"ok\n", "text/plain")
            elif path == "/metrics" and registry is not None:
                from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, code: int, body: bytes, content_type: str, bearer: bool = False) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            if bearer:
                self.send_header("WWW-Authenticate", "Bearer")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("health server: " + format, *args)

    class Server(ThreadingHTTPServer):
        address_family = AF_INET6 if ":" in host else ThreadingHTTPServer.address_family

    server = Server((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="changefeed-health", daemon=True).start()
    return server


def _token_given(authorization: str, query: str, token: str) -> bool:
    """Whether a request carries ``token`` as a bearer header or ``?token=`` (compared in
    constant time, so response times do not reveal how much of a guess was right)."""
    given = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
    if not given:
        values = parse_qs(query).get("token", [])
        given = values[0] if values else ""
    return hmac.compare_digest(given.encode(), token.encode())
