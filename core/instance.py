"""Who this worker process is, so that a restarted process can take over its own predecessor's jobs.

After `kill -9` (OOM, a crashed node agent, a power cut) the dead process's jobs stay `running` until
their lease runs out.  A restart on the same host and data dir need not wait: it holds the data dir's
lock file, which proves that every earlier process of this instance is gone.

The proof is flock(2) on `<data_dir>/worker.lock`, held for the life of the process: the kernel drops
it when the process dies, however it dies, and only one open file can hold it at a time (also within
one process).  A process that cannot take the lock (another live process uses this data dir) runs
without an instance and relies on leases alone.  Process ids prove nothing: in a container the server
is PID 1 after every restart, so a "dead pid" test would take jobs from a live process.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_FILE = "worker.lock"


@dataclass(kw_only=True)
class Instance:
    """Held by one live process; `prefix` starts the lease_owner of every job its worker claims."""

    prefix: str  # "<host>/<id of this data dir>/"
    path: Path
    _fd: int | None = field(default=None, repr=False)

    def owner(self) -> str:
        """A fresh lease owner under this instance: unique per worker, never reused."""
        return f"{self.prefix}{secrets.token_hex(6)}:{os.getpid()}"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file drops the lock
            self._fd = None


def acquire(data_dir: Path) -> Instance | None:
    """Take the data dir's worker lock, or None if another live process holds it (or it cannot be had)."""
    path = Path(data_dir) / LOCK_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by child processes (PEP 446)
    except OSError as e:
        log.info("no worker lock in %s (%s): interrupted jobs resume when their lease runs out", path, e)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        log.info("another live process holds %s: this one resumes interrupted jobs by lease only", path)
        return None
    # Under the lock: read the data dir's id, or write one on first use.
    ident = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    if not ident.isalnum():
        ident = secrets.token_hex(8)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (ident + "\n").encode(), 0)
        os.fsync(fd)
    # The host name too: a data dir copied to another machine must not make its jobs look like ours.
    return Instance(prefix=f"{socket.gethostname()}/{ident}/", path=path, _fd=fd)
