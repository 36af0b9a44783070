"""Multi-process JAX: start the distributed runtime, and agree on host-side decisions.

Everything else about scale lives in JAX itself: `sharding.Placement` puts a 1-D `data` mesh over
`jax.devices()` (all devices of all processes), replicates the state and the device-resident
data, and shards each batch over the mesh, so the same code runs on 1 CPU, 8 GPUs or a pod.

Every decision that changes which collectives run (fresh or resumed, which checkpoint, nothing
to do, refused) is taken once, by process 0, and followed by all (`from_process_0`), or agreed
(`first_error`, `any_process`): processes that start at different moments, or see a shared
directory at different moments, still take one path. A failed collective whose cause is a dead
peer is said as such (`raise_if_peer_lost`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging

from mnist_jax.errors import PeerLost, UserError


def auto_detected() -> bool:
    """Whether the environment describes a multi-process job JAX can configure itself from
    (a TPU pod slice, or a SLURM job of more than one task)."""
    tasks = os.environ.get("SLURM_NTASKS", "1")
    if not tasks.isdigit() or int(tasks) < 1:
        raise UserError(f"SLURM_NTASKS={tasks!r}: expected a positive number of tasks")
    if int(tasks) > 1:
        return True
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return "," in hosts


def check_flags(coordinator_address: str, num_processes: int, process_id: int, timeout_s: int):
    """Refuses distributed flags that cannot start a run, before anything starts."""
    if timeout_s < 1:
        raise UserError(f"--initialization_timeout={timeout_s}: must be at least 1 second")
    if not coordinator_address:
        if num_processes or process_id != -1:
            raise UserError(
                "--num_processes and --process_id need --coordinator_address=HOST:PORT "
                "(process 0's address)"
            )
        return
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise UserError(
            f"--coordinator_address needs --num_processes >= 1 and 0 <= --process_id < "
            f"num_processes (got {num_processes}, {process_id})"
        )
    host, _, port = coordinator_address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--coordinator_address={coordinator_address!r}: expected HOST:PORT")


def check_coordinator(coordinator_address: str, process_id: int, timeout_s: int) -> None:
    """Process 0: its port must be free (JAX would abort on a taken one). The others: wait
    up to `timeout_s` for the coordinator to listen, rather than abort after it."""
    host, _, port = coordinator_address.rpartition(":")
    host = host.strip("[]")
    if process_id == 0:
        family = socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner.
            try:
                s.bind(("::" if family == socket.AF_INET6 else "", int(port)))
            except OSError as e:
                raise UserError(
                    f"coordinator port {port} is in use ({e.strerror}): pick another "
                    f"--coordinator_address port for all processes"
                ) from None
        return
    deadline = time.time() + timeout_s
    why = "nothing answers"
    while time.time() < deadline:
        try:
            if _speaks_grpc(host, int(port)):
                return
            why = "something else listens there"
        except OSError as e:
            why = e.strerror or type(e).__name__
        time.sleep(0.5)
    raise UserError(
        f"no JAX coordinator at {coordinator_address} after {timeout_s}s ({why}): start "
        "process 0 with the same --coordinator_address, on a free port"
    )


def _speaks_grpc(host: str, port: int) -> bool:
    """Whether the server at host:port answers HTTP/2 (JAX's coordinator is a gRPC server):
    to the client preface it replies with a SETTINGS frame."""
    with socket.create_connection((host, port), timeout=2) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
        try:
            header = s.recv(9)
        except TimeoutError:
            return False
    return len(header) == 9 and header[3] == 4


def initialize(
    coordinator_address: str = "",
    num_processes: int = 0,
    process_id: int = -1,
    timeout_s: int = 300,
    peer_timeout_s: float = 30.0,
) -> None:
    """Calls `jax.distributed.initialize` when flags or the environment ask for several
    processes, and starts the `Watchdog`; a no-op for a single-process run. Must run before
    any JAX computation (the command line calls it: it is process-wide)."""
    if peer_timeout_s <= 0:
        raise UserError(f"--peer_timeout={peer_timeout_s:g}: must be positive")
    check_flags(coordinator_address, num_processes, process_id, timeout_s)
    if coordinator_address:
        check_coordinator(coordinator_address, process_id, timeout_s)
        kwargs = {
            "coordinator_address": coordinator_address,
            "num_processes": num_processes,
            "process_id": process_id,
        }
    elif auto_detected():
        kwargs = {}
    else:
        return
    joined = threading.Event()
    _never_joined_watch(joined, coordinator_address, num_processes, process_id, timeout_s)
    try:
        jax.distributed.initialize(**kwargs, initialization_timeout=timeout_s)
    except Exception as e:  # JAX raises RuntimeError/XlaRuntimeError on timeouts.
        raise UserError(f"jax.distributed.initialize failed: {str(e).splitlines()[0]}") from None
    finally:
        joined.set()
    if num_processes and jax.process_count() != num_processes:  # The coordinator's count won.
        raise UserError(
            f"--num_processes={num_processes}, but the coordinator at {coordinator_address} runs "
            f"{jax.process_count()} processes: give every process the same --num_processes"
        )
    logging.info(
        "process %d of %d; %d local of %d devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    Watchdog(peer_timeout_s).start()


def _never_joined_watch(
    joined: threading.Event, address: str, num_processes: int, process_id: int, timeout_s: int
) -> None:
    """A thread that ends this process with one line, exit 1, when `joined` is not set within
    `timeout_s` (+1 s): JAX itself aborts in C++ (SIGABRT, rc 134) at about twice the timeout
    when a process never joins, with no word that says which."""

    def watch() -> None:
        if joined.wait(timeout_s + 1.0):
            return
        from mnist_jax.cli import one_line  # The address is the user's: one line, escaped.

        where = f"the coordinator at {one_line(address)}" if address else "the job's coordinator"
        me = f"process {process_id}" if process_id >= 0 else "this process"
        count = f"{num_processes} processes" if num_processes else "the job's processes"
        sys.stderr.write(
            f"error: a peer never joined: {where} waits for {count} and not all joined "
            f"within --initialization_timeout={timeout_s}s ({me} waited; a peer was never "
            "started, or was given another --coordinator_address or --num_processes): start "
            "every process with the same flags; nothing was written\n"
        )
        sys.stderr.flush()
        os._exit(1)

    threading.Thread(target=watch, name="mnist_jax-join-watch", daemon=True).start()


class Watchdog:
    """Each process beats once a second in JAX's key-value store; a peer whose beat stops for
    `timeout_s` (killed, or its host lost) ends this process at once with one line, exit 1,
    instead of a hang in a collective and then JAX's C++ abort. A process that exits normally
    says so first, and is not waited for."""

    def __init__(self, timeout_s: float):
        from jax._src import distributed as jax_distributed  # The runtime's client.

        self.client = jax_distributed.global_state.client
        self.timeout_s, self.me, self.n = timeout_s, jax.process_index(), jax.process_count()
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="mnist_jax-watchdog", daemon=True).start()
        atexit.register(self.stop)  # Runs before JAX's own shutdown (registered earlier).

    def stop(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            with contextlib.suppress(Exception):  # The coordinator may be gone already.
                self.client.key_value_set(f"mnist_jax/done/{self.me}", "1", allow_overwrite=True)

    def _run(self) -> None:
        beats, seen = 0, {p: (None, time.time()) for p in range(self.n) if p != self.me}
        while not self._stop.wait(1.0):
            beats += 1
            try:
                self.client.key_value_set(f"mnist_jax/beat/{self.me}", str(beats), True)
                for p in list(seen):
                    if self._value(f"mnist_jax/done/{p}"):
                        del seen[p]
                        continue
                    beat = self._value(f"mnist_jax/beat/{p}")
                    if beat != seen[p][0]:
                        seen[p] = (beat, time.time())
                    elif time.time() - seen[p][1] > self.timeout_s:
                        self._lost(f"process {p}")
            except Exception:  # The key-value store is process 0's: it is gone.
                if not self._stop.is_set():
                    self._lost("process 0 (the coordinator)")

    def _value(self, key: str) -> str | None:
        try:
            return self.client.key_value_try_get(key)
        except Exception as e:
            if "not found" in str(e).lower():
                return None
            raise

    def _lost(self, who: str) -> None:
        if self._stop.is_set():
            return
        sys.stderr.write(
            f"error: {who} stopped responding (peer lost) for {self.timeout_s:g}s: every "
            "process must be restarted; the checkpoints saved so far are intact and the same "
            "command resumes from them\n"
        )
        sys.stderr.flush()
        os._exit(1)


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is true on any (e.g. one host got SIGTERM), so that all
    processes take the same branch and no collective is left waiting."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def min_over_processes(value: int) -> int:
    """The smallest of every process's `value` (all processes must agree on loop bounds)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(np.min(multihost_utils.process_allgather(np.int64(value))))


def from_process_0(read: Callable[[], Any]) -> Any:
    """Process 0's `read()` (a JSON value) on every process; a UserError it raised is raised
    on all. The others do not call `read`: they follow process 0's reading."""
    if jax.process_count() == 1:
        return read()
    payload: dict[str, Any] = {}
    if jax.process_index() == 0:
        try:
            payload = {"value": read()}
        except UserError as e:
            payload = {"error": str(e)}
    payload = _broadcast_json(payload, source=0)
    if "error" in payload:
        raise UserError(payload["error"])
    return payload["value"]


def first_error(error: UserError | None) -> UserError | None:
    """The error of the first process that had one (None if none did), on every process, so
    that all refuse, or all go on, together."""
    if jax.process_count() == 1:
        return error
    from jax.experimental import multihost_utils

    failed = np.asarray(multihost_utils.process_allgather(np.int32(error is not None)))
    if not failed.any():
        return None
    source = int(np.argmax(failed))
    message = _broadcast_json({"error": str(error)}, source=source)["error"]
    return UserError(message if source == 0 else f"process {source}: {message}")


def _broadcast_json(obj: Any, source: int) -> Any:
    from jax.experimental import multihost_utils

    me = jax.process_index() == source
    data = np.frombuffer(json.dumps(obj).encode(), np.uint8) if me else np.zeros(0, np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.int64(data.size), is_source=me))
    buffer = np.zeros(size, np.uint8)
    if me:
        buffer[:] = data
    buffer = np.asarray(multihost_utils.broadcast_one_to_all(buffer, is_source=me))
    return json.loads(buffer.tobytes())


# What JAX's transports say when the other end of a collective is gone.
_PEER_GONE = ("connection reset by peer", "connection closed by peer", "broken pipe",
              "heartbeat", "gloo", "socket closed", "unavailable")  # fmt: skip


def raise_if_peer_lost(error: BaseException, step: int) -> None:
    """In a multi-process run, raises PeerLost for an error that a dead peer causes (a
    collective, or orbax's save, that lost its other end); else returns."""
    n = jax.process_count()
    text = str(error).lower()
    if n == 1 or not any(s in text for s in _PEER_GONE):
        return
    who = f"process {1 - jax.process_index()}" if n == 2 else "another process"
    raise PeerLost(
        f"{who} stopped responding (peer lost) at step {step}: every process must be restarted; "
        "the checkpoints saved so far are intact and the same command resumes from them"
    ) from None
