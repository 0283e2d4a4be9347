"""Inbound mail parsing in worker processes, driven by the event loop (issue 4).

``concurrent.futures.ProcessPoolExecutor`` cost as much CPU as the parse itself (1.03 ms of
worker CPU per 20 KB message for a 0.54 ms parse, plus as much again in the relay): a call
queue and a result queue, a feeder thread and a manager thread, their locks and semaphores,
several wake-ups per call. This pool keeps only what the gateway needs:

* N long-lived worker processes, started by the **forkserver**: the relay process is threaded
  and must never fork itself.
* Two pipes per worker, its own: requests (the raw message) and answers (the pickled result).
  A frame is an 8-byte big-endian length, then the payload; one syscall each way per call in
  the common case (``writev`` of length and payload).
* The event loop writes without ever blocking (a message can be 42 MB: when the pipe is full
  the rest waits for ``add_writer``) and reads with ``add_reader``; no thread in the relay.
* One call per worker at a time; the others wait in a FIFO.
* A worker that dies (end of file on its answers, EPIPE on its requests) fails the call it had
  with :class:`ParserUnavailable`, which the gateway answers ``451`` (the sender retries); a
  new worker takes its place and the other calls go on.
* A cancelled call's answer is still read, then dropped: the pipes stay in step.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import struct
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from relay.mail.dsn import Bounce, is_delivery_report, read_bounce
from relay.mail.errors import DecryptionFailed, MailError, MalformedMessage
from relay.mail.limits import MailLimits, ParsedMessage, parse_message
from relay.mail.smime import open_enveloped
from relay.workers import exit_with

__all__ = ["Parsed", "ParserPool", "ParserUnavailable", "init_worker", "parse_inbound"]

log = logging.getLogger("relais.smtp")


class ParserUnavailable(Exception):
    """No parser process could answer: the one parsing this message died, or the pool is
    closed. A temporary local failure (the gateway answers ``451 4.3.0``): the message itself
    was not judged."""


# --- parsing, in the worker processes --------------------------------------------------------

_smime_paths: tuple[str, str] | None = None
_relay_key: Any = None
_relay_cert: x509.Certificate | None = None


def init_worker(cert_path: str, key_path: str, relay_pid: int) -> None:
    """Worker start: remember where the relay's S/MIME certificate and key are (read at the
    first encrypted mail), and end this worker when the relay process ends, however it ends
    (``kill -9`` included)."""
    global _smime_paths
    exit_with(relay_pid)
    _smime_paths = (cert_path, key_path)


def _smime_identity() -> tuple[Any, x509.Certificate] | None:
    global _relay_key, _relay_cert
    if _relay_cert is None and _smime_paths is not None:
        try:
            cert = x509.load_pem_x509_certificate(Path(_smime_paths[0]).read_bytes())
            key = load_pem_private_key(Path(_smime_paths[1]).read_bytes(), password=None)
        except (OSError, ValueError):
            return None  # not issued yet (first start) or unreadable
        _relay_cert, _relay_key = cert, key
    if _relay_cert is None:
        return None
    return _relay_key, _relay_cert


Parsed = tuple[ParsedMessage, bool, Bounce | None]
"""What the parser processes return: the message, whether it was decrypted, and the delivery
report it is, if it is one."""


def parse_inbound(raw: bytes, limits: MailLimits) -> Parsed:
    """Parse under limits; decrypt when S/MIME-enveloped; read a delivery report (RFC 3464)
    when the message declares itself one.

    Raises MailError (picklable: it crosses the process boundary); anything unexpected from
    the parser on hostile input is a malformed message, not a crash.
    """
    try:
        parsed = parse_message(raw, limits)
        if not parsed.smime_enveloped:
            return parsed, False, _bounce(raw, parsed, limits)
        identity = _smime_identity()
        if identity is None:
            raise DecryptionFailed("The relay has no S/MIME certificate yet")
        return open_enveloped(raw, identity[0], identity[1], limits), True, None
    except MailError:
        raise
    except Exception:
        raise MalformedMessage("The message could not be parsed") from None


def _bounce(raw: bytes, parsed: ParsedMessage, limits: MailLimits) -> Bounce | None:
    """The report a message is, or None: an unreadable report is still a mail (kept for
    postmaster), never a reason to refuse it."""
    try:
        if is_delivery_report(parsed.raw_headers):
            return read_bounce(raw, limits)
    except Exception:  # MailError included: the report only goes unread
        return None
    return None


# --- the pipe protocol -----------------------------------------------------------------------

_LENGTH: Final = struct.Struct("!Q")
# Larger pipes than Linux's 64 KiB: a 30 MB message crosses in 30 wake-ups rather than 500.
_PIPE_BYTES: Final = 1 << 20
_READ_BYTES: Final = 1 << 18
_CLOSE_WAIT: Final = 5.0  # seconds close() waits for the workers before killing them
_UNPICKLE_IN_THREAD_BYTES: Final = 1 << 20  # answers from this size are unpickled off the loop


def _unwritten(views: list[memoryview], written: int) -> list[memoryview]:
    """What is left of ``views`` once their first ``written`` bytes went out."""
    left = []
    for view in views:
        if written >= len(view):
            written -= len(view)
        else:
            left.append(view[written:])
            written = 0
    return left


def _frame(payload: bytes) -> list[memoryview]:
    return [memoryview(_LENGTH.pack(len(payload))), memoryview(payload)]


def _read_exactly(fd: int, size: int) -> bytes | None:
    """``size`` bytes from a blocking pipe; None at end of file."""
    first = os.read(fd, size) if size else b""
    if len(first) == size:
        return first  # a 20 KB message: one read, no copy
    if not first:
        return None
    buffer = bytearray(size)
    buffer[: len(first)] = first
    view, got = memoryview(buffer), len(first)
    while got < size:
        count = os.readv(fd, [view[got:]])
        if count == 0:
            return None
        got += count
    return bytes(buffer)


def _answer(raw: bytes, limits: MailLimits) -> bytes:
    """The pickled answer to one request: ``(True, parsed)`` or ``(False, MailError)``."""
    try:
        result: tuple[bool, object] = (True, parse_inbound(raw, limits))
    except MailError as error:
        result = (False, error)
    try:
        return pickle.dumps(result, pickle.HIGHEST_PROTOCOL)
    except Exception:  # a MailError subclass that does not pickle
        return pickle.dumps((False, MalformedMessage("The message could not be parsed")))


def _serve(
    requests: Connection,
    answers: Connection,
    cert_path: str,
    key_path: str,
    relay_pid: int,
    limits: MailLimits,
) -> None:
    """A worker's life: answer each request until the relay closes the pipe (or dies)."""
    # Ctrl-C reaches the whole process group: the relay, not the terminal, ends its workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    init_worker(cert_path, key_path, relay_pid)
    rfd, wfd = requests.fileno(), answers.fileno()
    while True:
        head = _read_exactly(rfd, _LENGTH.size)
        raw = _read_exactly(rfd, _LENGTH.unpack(head)[0]) if head is not None else None
        if raw is None:
            return
        views = _frame(_answer(raw, limits))
        try:
            while views:
                views = _unwritten(views, os.writev(wfd, views))
        except BrokenPipeError:
            return  # the relay closed the pool while this parse ran


# --- the pool, in the relay process ----------------------------------------------------------


@dataclass(eq=False)
class _Call:
    raw: bytes
    future: asyncio.Future[Parsed]
    retried: bool = False


@dataclass(eq=False)
class _Worker:
    """One parser process and the relay's ends of its pipes (non-blocking)."""

    process: BaseProcess
    requests: int
    answers: int
    call: _Call | None = None
    unsent: list[memoryview] = field(default_factory=list)
    head: bytes = b""  # the start of an answer shorter than its length prefix (rare)
    body: bytearray | None = None  # an answer larger than one read, being filled
    got: int = 0


def _unpickle(payload: memoryview) -> tuple[bool, Any]:
    try:
        ok, value = pickle.loads(payload)  # noqa: S301 - from our own worker
    except Exception:
        return False, None
    return bool(ok), value


def _resolve(call: _Call, ok: bool, value: Any) -> None:
    if call.future.done():  # cancelled while it ran: the answer is dropped
        return
    if ok:
        call.future.set_result(value)
    elif isinstance(value, MailError):
        call.future.set_exception(value)
    else:
        call.future.set_exception(MalformedMessage("The message could not be parsed"))


def _settle(call: _Call, payload: memoryview) -> None:
    ok, value = _unpickle(payload)
    _resolve(call, ok, value)


def _grow_pipe(fd: int) -> None:
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or over the user's quota
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)


class ParserPool:
    """Parser processes for inbound mail (module docstring); create it on the event loop
    that calls :meth:`parse`, and :meth:`close` it from that loop's thread."""

    def __init__(self, workers: int, cert_path: Path, key_path: Path, limits: MailLimits) -> None:
        self._size = max(1, workers)
        self._args = (str(cert_path), str(key_path), os.getpid(), limits)
        self.limits = limits
        self._loop = asyncio.get_running_loop()
        # forkserver: never fork the threaded server process itself.
        self._context = multiprocessing.get_context("forkserver")
        self._workers: list[_Worker] = []
        self._idle: list[_Worker] = []
        self._waiting: collections.deque[_Call] = collections.deque()
        self._ended: list[BaseProcess] = []  # dead or dying, not yet reaped by the forkserver
        self._scratch = bytearray(_READ_BYTES)
        self._unpickling: set[asyncio.Task[None]] = set()
        self._closed = False
        for _ in range(self._size):
            self._spawn()

    @property
    def pids(self) -> tuple[int, ...]:
        """The worker processes' ids."""
        return tuple(w.process.pid for w in self._workers if w.process.pid is not None)

    @property
    def waiting(self) -> int:
        """Calls not yet handed to a worker."""
        return len(self._waiting)

    async def parse(self, raw: bytes) -> Parsed:
        """Parse ``raw`` in a worker: MailError for a refused message, ParserUnavailable when
        the worker died meanwhile or the pool is closed."""
        if self._closed:
            raise ParserUnavailable("the mail parser pool is closed")
        call = _Call(raw, self._loop.create_future())
        self._waiting.append(call)
        self._dispatch()
        try:
            return await call.future
        except asyncio.CancelledError:
            # Still waiting: leave the queue now, not when it reaches the head (under load,
            # with SMTP timeouts, cancelled calls would hold their messages meanwhile).
            with contextlib.suppress(ValueError):
                self._waiting.remove(call)
            raise

    def close(self) -> None:
        """End the workers: an idle one reads end of file and exits; one still parsing (for
        a call nobody will read) is terminated. Waits for them (a few ms), then kills what is
        left after a few seconds. Calls not answered yet fail with ParserUnavailable."""
        self._closed = True
        while self._waiting:
            self._fail(self._waiting.popleft(), "the mail parser pool is closed")
        for worker in list(self._workers):
            busy = worker.call is not None
            self._detach(worker, "the mail parser pool is closed")
            if busy:
                worker.process.terminate()
        deadline = time.monotonic() + _CLOSE_WAIT
        for process in self._ended:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                process.kill()
                process.join()
            process.close()
        self._ended.clear()

    # --- workers -----------------------------------------------------------------------------

    def _spawn(self) -> _Worker:
        requests_r, requests_w = os.pipe()
        answers_r, answers_w = os.pipe()
        for fd in (requests_w, answers_r):
            _grow_pipe(fd)
            os.set_blocking(fd, False)
        # The worker's ends travel as Connections: the forkserver passes them by SCM_RIGHTS.
        theirs = (Connection(requests_r, writable=False), Connection(answers_w, readable=False))
        try:
            process = self._context.Process(
                target=_serve, args=(*theirs, *self._args), name="relais-mail-parser", daemon=True
            )
            process.start()
        except BaseException:
            os.close(requests_w)
            os.close(answers_r)
            raise
        finally:
            for end in theirs:
                end.close()  # only the worker holds them: its death is end of file here
        worker = _Worker(process, requests_w, answers_r)
        self._workers.append(worker)
        self._idle.append(worker)
        self._loop.add_reader(answers_r, self._readable, worker)
        return worker

    def _detach(self, worker: _Worker, why: str) -> _Call | None:
        """Forget ``worker`` (closing its pipes ends it if it lives); its call, if any, fails."""
        self._loop.remove_reader(worker.answers)
        self._loop.remove_writer(worker.requests)
        os.close(worker.answers)
        os.close(worker.requests)
        self._workers.remove(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        self._ended.append(worker.process)
        call, worker.call = worker.call, None
        if call is not None:
            self._fail(call, why)
        return call

    def _lost(self, worker: _Worker, why: str) -> None:
        """A worker died, or broke the protocol: fail its call, replace it."""
        call = self._detach(worker, why)
        if worker.process.is_alive():
            worker.process.kill()  # it broke the protocol: nothing it says can be trusted
        log.error("a mail parser process ended (%s)", why)
        for process in [p for p in self._ended if p.exitcode is not None]:
            process.close()  # reaped by the forkserver: release its sentinel
            self._ended.remove(process)
        # Replaced now if it died working; one that dies idle (at start-up, say) is replaced
        # when a call needs it, so that a broken worker cannot respawn in a loop.
        if call is not None and not self._closed:
            try:
                self._spawn()
            except Exception as exc:
                log.error("could not start a mail parser process (%s)", type(exc).__name__)

    def _fail(self, call: _Call, why: str) -> None:
        if not call.future.done():
            with contextlib.suppress(RuntimeError):  # the loop already closed: nobody waits
                call.future.set_exception(ParserUnavailable(why))

    # --- the loop's side of the pipes --------------------------------------------------------

    def _dispatch(self) -> None:
        """Hand waiting calls to idle workers, first come first served."""
        while self._waiting:
            if self._waiting[0].future.done():  # cancelled while it waited
                self._waiting.popleft()
                continue
            if not self._idle:
                if self._closed or len(self._workers) >= self._size:
                    return
                try:
                    self._spawn()
                except Exception as exc:
                    log.error("could not start a mail parser process (%s)", type(exc).__name__)
                    self._fail(self._waiting.popleft(), "no mail parser process")
                    continue
            self._send(self._idle.pop(), self._waiting.popleft())

    def _send(self, worker: _Worker, call: _Call) -> None:
        worker.call = call
        views = _frame(call.raw)
        try:
            written = os.writev(worker.requests, views)
        except BlockingIOError:
            written = 0
        except OSError as error:
            # Died idle, before we noticed: nothing of the call was read, so another worker
            # takes it (once: a message is never tried on worker after worker).
            worker.call = None
            if not call.retried:
                call.retried = True
                self._waiting.appendleft(call)
            else:
                self._fail(call, "the mail parser process died")
            self._lost(worker, f"its pipe: {error.strerror}")
            return
        worker.unsent = _unwritten(views, written)
        if worker.unsent:  # a large message: the rest as the worker reads
            self._loop.add_writer(worker.requests, self._writable, worker)

    def _writable(self, worker: _Worker) -> None:
        try:
            written = os.writev(worker.requests, worker.unsent)
        except BlockingIOError:
            return
        except OSError as error:
            self._lost(worker, f"died reading a message ({error.strerror})")
            self._dispatch()
            return
        worker.unsent = _unwritten(worker.unsent, written)
        if not worker.unsent:
            self._loop.remove_writer(worker.requests)

    def _readable(self, worker: _Worker) -> None:
        try:
            if worker.body is None:
                count = os.readv(worker.answers, [self._scratch])
            else:
                count = os.readv(worker.answers, [memoryview(worker.body)[worker.got :]])
        except BlockingIOError:
            return
        except OSError:
            count = 0
        if count == 0:
            self._lost(worker, "died while parsing" if worker.call else "died while idle")
            self._dispatch()
            return
        if worker.body is not None:
            worker.got += count
            if worker.got == len(worker.body):
                body, worker.body = worker.body, None
                self._answered(worker, memoryview(body))
            return
        data = memoryview(self._scratch)[:count]
        if worker.head:  # rare: the length prefix came in pieces
            data = memoryview(worker.head + data)
            worker.head = b""
        if len(data) < _LENGTH.size:
            worker.head = bytes(data)
            return
        (size,) = _LENGTH.unpack_from(data)
        payload = data[_LENGTH.size :]
        if len(payload) == size:
            self._answered(worker, payload)  # the common case: the whole answer in one read
            return
        if len(payload) > size:
            self._lost(worker, "it answered out of turn")
            self._dispatch()
            return
        worker.body = bytearray(size)
        worker.body[: len(payload)] = payload
        worker.got = len(payload)

    def _answered(self, worker: _Worker, payload: memoryview) -> None:
        if worker.call is None or worker.unsent:
            self._lost(worker, "it answered out of turn")
            self._dispatch()
            return
        call, worker.call = worker.call, None
        self._idle.append(worker)
        if len(payload) >= _UNPICKLE_IN_THREAD_BYTES and payload.obj is not self._scratch:
            # (never a view of the shared read buffer, which the next read reuses)
            # A large answer (attachments) takes ~0.6 ms per MB to unpickle: in a thread,
            # so the loop does not stall (measured 20 ms for a 33 MB mail on the loop).
            task = self._loop.create_task(self._answer_from_thread(call, payload))
            self._unpickling.add(task)
            task.add_done_callback(self._unpickling.discard)
        else:
            _settle(call, payload)
        self._dispatch()

    async def _answer_from_thread(self, call: _Call, payload: memoryview) -> None:
        ok, value = await asyncio.to_thread(_unpickle, payload)
        _resolve(call, ok, value)
