"""The core's dependencies, built once by the composition root (shipit.app).

Services take the session as a keyword argument (the entry point owns the
transaction) and this context for everything else: the cipher, the Kubernetes
clients, the registered notifiers and the tunables.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import readcache
from core.kube.client import KubeClients
from core.notices import Notifier
from storage.crypto import Cipher


@dataclass(kw_only=True)
class CoreConfig:
    revisions_kept: int = 10
    job_lease_seconds: float = 8.0
    job_poll_seconds: float = 0.5
    worker_concurrency: int = 8
    approval_ttl_seconds: float = 3600.0
    rollout_timeout_margin_seconds: float = 60.0
    default_ingress_class: str = "nginx"
    default_tls_issuer: str | None = None
    public_url: str = "http://127.0.0.1:8000"
    # Who may create projects: "admins" (global admins only) or "everyone" with a token.
    project_creators: str = "admins"
    # Registries: look tags up at deploy time and apply name@digest (off: by tag, no lookups).
    registry_pin_digests: bool = True
    # the whole digest lookup (token included) must answer within this, else deploy by tag.
    registry_timeout_seconds: float = 5.0
    # Registry hosts reached over plain HTTP (a registry on the cluster's own network, tests).
    registry_insecure_hosts: tuple[str, ...] = ()
    # The release phase: how long a release Job may run (None: the app's progress deadline) and how
    # long a finished one (and its pod, for a look at what happened) is kept.
    release_deadline_seconds: int | None = None
    release_ttl_seconds: int = 86400
    # A dry run asks the cluster while the caller waits: never longer than this.
    dry_run_timeout_seconds: float = 20.0
    # Add-ons: images, StorageClass (None: the cluster's default), seconds between readiness looks.
    addon_images: dict[str, str] = field(
        default_factory=lambda: {"postgres": "postgres:16", "redis": "redis:7"}
    )
    addon_storage_class: str | None = None
    addon_ready_poll_seconds: float = 10.0


class Broadcast:
    """Wake every waiter at once, each time it fires (an asyncio.Event is one-shot and shared).

    A waiter takes `listen()` BEFORE it reads the state it waits on, then awaits that event: a fire
    between the read and the wait is not lost.  In-process only; other replicas are not told.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def listen(self) -> asyncio.Event:
        return self._event

    def fire(self) -> None:
        fired, self._event = self._event, asyncio.Event()
        fired.set()


@dataclass(kw_only=True)
class Core:
    sessionmaker: async_sessionmaker[AsyncSession]
    cipher: Cipher
    kube: KubeClients
    config: CoreConfig = field(default_factory=CoreConfig)
    notifiers: dict[str, Notifier] = field(default_factory=dict)
    # Set when a job is committed in this process, so idle workers wake at once.
    jobs_ready: asyncio.Event = field(default_factory=asyncio.Event)
    # Fired when a transaction that changed a deployment row commits in this process (live pages).
    deploys_changed: Broadcast = field(default_factory=Broadcast)
    # Copies of read-mostly rows, checked against the database's version stamp (core.readcache).
    readcache: readcache.ReadCache = field(default_factory=readcache.ReadCache)

    def __post_init__(self) -> None:
        bind = self.sessionmaker.kw.get("bind")
        if bind is not None:
            readcache.configure(self.sessionmaker, bind, self.readcache)
