"""Watching: rollouts and release Jobs followed to a verdict, and pod logs.

Rollouts are followed with the watch API from a list's resourceVersion, so a watcher started
after a crash sees the cluster's current state first and returns at once when the rollout
already finished.  What the streams say is judged by the pure rules (core.kube.rules).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiohttp
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import watch as k8s_watch
from kubernetes_asyncio.client import exceptions as k8s_exceptions

from core import errors
from core.kube import render
from core.kube.api_errors import CONNECTION_ERRORS, api_exception_error, connection_error
from core.kube.connection import Connection, api_path
from core.kube.objects import as_list, as_str, dig, truncate
from core.kube.rules import (
    JOB_UID_LABEL,
    Failure,
    ReleaseResult,
    RolloutProgress,
    RolloutResult,
    evaluate_release,
    evaluate_rollout,
    failing_container,
    is_current_pod,
    label_selector,
    progress_of,
    release_failure,
    template_identity,
    why_not_started,
)

logger = logging.getLogger(__name__)

LOG_TAIL_LINES = 20
FAILURE_LOG_TIMEOUT = 5.0


@dataclasses.dataclass(frozen=True)
class _WatchEvent:
    source: str  # "deployment" | "pod"
    type: str  # ADDED, MODIFIED, DELETED, or END / ERROR from our pump
    obj: dict[str, Any] | None = None
    error: BaseException | None = None


@dataclasses.dataclass(frozen=True)
class _Stream:
    source: str  # names the events it yields
    list_func: Callable[..., Any]  # the list call the watch streams
    query: dict[str, Any]  # namespace, selector, resource_version


# A verdict: failed ones get the failing pod's log lines.
_V = TypeVar("_V", RolloutResult, ReleaseResult)


class _Relist(Exception):
    """The watch lost its place (410 Gone, stream ended, template changed): list again."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class LogLine:
    """One line of an app's pod log: the pod and container that wrote it, and its text as written."""

    pod: str
    container: str
    line: str
    several: bool  # the app has several pods: its text form names the pod

    @property
    def text(self) -> str:
        """The line as `logs` prints it: prefixed with its pod when the app has several."""
        return f"{self.pod}: {self.line}" if self.several else self.line


class Watcher:
    """Follows rollouts and release Jobs, and reads pod logs, through one cluster's connection."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._apps = k8s_client.AppsV1Api(conn.api)
        self._core = k8s_client.CoreV1Api(conn.api)

    # -- logs ----------------------------------------------------------------

    async def _list_pods(self, *, namespace: str, selector: str) -> dict[str, Any]:
        return await self._conn.request(
            "GET",
            f"/api/v1/namespaces/{namespace}/pods",
            what=f"list pods in {namespace}",
            query=[("labelSelector", selector)],
        )

    async def _pod_log_lines(
        self,
        *,
        namespace: str,
        pod: str,
        container: str | None,
        tail_lines: int,
        previous: bool = False,
        follow: bool = False,
        request_timeout: float | None = None,
    ) -> AsyncIterator[str]:
        query = [("tailLines", str(tail_lines))]
        if container:
            query.append(("container", container))
        if previous:
            query.append(("previous", "true"))
        if follow:
            query.append(("follow", "true"))
        what = f"read logs of pod {namespace}/{pod}"
        if follow:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=None)
        elif request_timeout is not None:
            timeout = aiohttp.ClientTimeout(total=request_timeout)
        else:
            timeout = self._conn.timeout
        response = await self._conn.open(
            "GET",
            f"/api/v1/namespaces/{namespace}/pods/{pod}/log",
            what=what,
            query=query,
            accept="*/*",
            request_timeout=timeout,
        )
        try:
            async for raw in response.content:
                yield raw.decode(errors="replace").rstrip("\r\n")
        except CONNECTION_ERRORS as e:
            raise connection_error(e, what=what) from e
        finally:
            response.release()

    async def pod_logs(
        self,
        *,
        namespace: str,
        app: str,
        tail_lines: int = 100,
        follow: bool = False,
        shared_tail: bool = False,
        selector: str | None = None,
        container: str | None = None,
    ) -> AsyncGenerator[LogLine, None]:
        """Log lines of the app's pods (or of those `selector` picks, their `container`), each with its pod and container (`text` prefixes the pod when
        there are several).

        tail_lines is per pod, or with shared_tail the app's total, shared out evenly among its pods:
        the last N lines of the app then show every pod, not only the last pod listed.
        With follow, lines of all pods interleave as they come, until every stream ends.
        """
        listing = await self._list_pods(
            namespace=namespace, selector=selector or f"{render.LABEL_NAME}={app}"
        )
        logged = container or app
        pods = sorted(as_str(dig(p, "metadata", "name")) for p in as_list(listing.get("items")))
        if not pods:
            raise errors.NotFound(f"app {app} has no pods in namespace {namespace}")
        several = len(pods) > 1
        tails = dict.fromkeys(pods, tail_lines)
        if shared_tail:
            each, extra = divmod(tail_lines, len(pods))
            tails = {pod: each + (i < extra) for i, pod in enumerate(pods)}

        async def lines_of(pod: str) -> AsyncIterator[LogLine]:
            try:
                async for line in self._pod_log_lines(
                    namespace=namespace, pod=pod, container=logged, tail_lines=tails[pod], follow=follow
                ):
                    yield LogLine(pod=pod, container=logged, line=line, several=several)
            except (errors.PermanentError, errors.NotFound) as e:
                # e.g. 400 "container is waiting to start", or a node that serves no logs (kwok):
                # say so and go on with the other pods.
                yield LogLine(pod=pod, container=logged, line=f"(no logs: {e})", several=several)

        if not follow:
            for pod in pods:
                async for line in lines_of(pod):
                    yield line
            return

        queue: asyncio.Queue[LogLine | BaseException | None] = asyncio.Queue(maxsize=1000)

        async def pump(pod: str) -> None:
            try:
                async for line in lines_of(pod):
                    await queue.put(line)
            except Exception as e:
                await queue.put(e)
            finally:
                await queue.put(None)

        tasks = [asyncio.create_task(pump(pod)) for pod in pods]
        try:
            running = len(tasks)
            while running:
                item = await queue.get()
                if item is None:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _failure_logs(
        self, *, namespace: str, failure: Failure | None, pods: Mapping[str, Any]
    ) -> list[str]:
        """The last lines of the failing pod, or one line saying why there are none."""
        pod = failure.pod if failure else None
        container = failure.container if failure else None
        if pod is None:
            # No container in a known failure state (e.g. progress deadline): take an unready pod.
            for name in sorted(pods):
                ready = [
                    c
                    for c in as_list(dig(pods[name], "status", "conditions"))
                    if dig(c, "type") == "Ready" and dig(c, "status") == "True"
                ]
                if not ready:
                    pod = name
                    break
        if pod is None:
            return ["(no logs: no failing pod found)"]
        if failure is None:
            never_started = why_not_started(pods[pod])
            if never_started is not None:
                return [f"(no logs: {never_started})"]
        if failure is not None and failure.reason in {"ImagePullBackOff", "ErrImagePull", "InvalidImageName"}:
            return [f"(no logs: the container never started: {failure.reason})"]
        attempts = [True, False] if failure is not None and failure.reason == "CrashLoopBackOff" else [False]
        last_error = ""
        for previous in attempts:
            try:
                lines = [
                    line
                    async for line in self._pod_log_lines(
                        namespace=namespace,
                        pod=pod,
                        container=container,
                        tail_lines=LOG_TAIL_LINES,
                        previous=previous,
                        # Logs only decorate a failure report: never let them hold it up for long.
                        request_timeout=FAILURE_LOG_TIMEOUT,
                    )
                ]
            except errors.ShipitError as e:
                last_error = str(e)
                continue
            return lines[-LOG_TAIL_LINES:] if lines else [f"(no logs: pod {pod} wrote nothing)"]
        return [f"(no logs from pod {pod}: {truncate(last_error)})"]

    # -- the watch skeleton ------------------------------------------------------------

    async def _watch_until(
        self,
        *,
        what: str,
        timeout: float,  # noqa: ASYNC109 - a budget for the whole wait, not one call
        follow: Callable[[float | None], Awaitable[_V]],
    ) -> _V | None:
        """Run `follow` (list, then watch from the list) again each time the watch loses its place,
        until it returns a verdict; None when `timeout` runs out first.

        `follow` gets the loop time of the deadline, so its streams can end near it.
        """
        try:
            async with asyncio.timeout(timeout) as deadline:
                while True:
                    try:
                        return await follow(deadline.when())
                    except _Relist:
                        continue
        except TimeoutError:
            if not deadline.expired():
                raise errors.TransientError(f"{what}: timed out talking to the cluster") from None
        return None

    async def _list_one(
        self, *, kind: str, namespace: str, name: str, what: str, missing: str
    ) -> tuple[dict[str, Any], str]:
        """The object and the list's resourceVersion to watch from; NotFound(`missing`) when there is none."""
        listing = await self._conn.request(
            "GET",
            api_path(kind, namespace=namespace),
            what=what,
            query=[("fieldSelector", f"metadata.name={name}")],
        )
        items = as_list(listing.get("items"))
        if not items:
            raise errors.NotFound(missing)
        return items[0], as_str(dig(listing, "metadata", "resourceVersion"))

    async def _events(
        self, *, what: str, deadline: float | None, streams: list[_Stream]
    ) -> AsyncGenerator[_WatchEvent]:
        """The events of several watch streams as they come; raises _Relist when the watch lost its place.

        Close it (contextlib.aclosing) so the streams stop when the caller has its verdict.
        """
        # Streams end by themselves near our deadline, or every 5 minutes on a long wait: we then
        # list again, which also refreshes a resourceVersion the server may have compacted away.
        remaining = 300.0
        if deadline is not None:
            remaining = deadline - asyncio.get_running_loop().time()
        watch_seconds = max(1, min(300, int(remaining) + 1))
        queue: asyncio.Queue[_WatchEvent] = asyncio.Queue()
        tasks = [
            asyncio.create_task(
                self._pump(
                    queue, stream.source, stream.list_func, timeout_seconds=watch_seconds, **stream.query
                )
            )
            for stream in streams
        ]
        try:
            while True:
                event = await queue.get()
                if event.type == "END":
                    raise _Relist()
                if event.type == "ERROR":
                    exc = event.error
                    if isinstance(exc, k8s_exceptions.ApiException):
                        if exc.status == 410:
                            logger.debug("%s: resourceVersion too old, listing again", what)
                            raise _Relist()
                        raise api_exception_error(exc, what=what) from exc
                    if isinstance(exc, CONNECTION_ERRORS):
                        raise connection_error(exc, what=what) from exc
                    raise errors.TransientError(f"{what}: watch failed: {type(exc).__name__}") from exc
                yield event
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _with_logs(
        self,
        *,
        namespace: str,
        verdict: _V,
        pods: Mapping[str, dict[str, Any]],
        failure_of: Callable[[Mapping[str, dict[str, Any]]], Failure | None],
    ) -> _V:
        """A failed verdict with the failing pod's last log lines."""
        if verdict.ok:
            return verdict
        logs = await self._failure_logs(namespace=namespace, failure=failure_of(pods), pods=pods)
        return dataclasses.replace(verdict, logs=logs)

    async def _pump(
        self, queue: asyncio.Queue[_WatchEvent], source: str, func: Callable[..., Any], **kwargs: Any
    ) -> None:
        """Forward one watch stream's events to `queue`, then an END or ERROR marker."""
        try:
            async with _SharedClientWatch(self._conn.api) as stream:
                async for event in stream.stream(
                    func,
                    allow_watch_bookmarks=True,
                    _request_timeout=aiohttp.ClientTimeout(
                        total=None, sock_connect=10.0, sock_read=float(kwargs["timeout_seconds"]) + 30.0
                    ),
                    **kwargs,
                ):
                    kind = as_str(dig(event, "type"))
                    raw = dig(event, "raw_object")
                    if kind in {"ADDED", "MODIFIED", "DELETED"} and isinstance(raw, dict):
                        await queue.put(_WatchEvent(source, kind, raw))
            await queue.put(_WatchEvent(source, "END"))
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            await queue.put(_WatchEvent(source, "END"))
        except Exception as e:
            await queue.put(_WatchEvent(source, "ERROR", error=e))

    # -- rollouts ----------------------------------------------------------------

    async def wait_rollout(
        self,
        *,
        namespace: str,
        name: str,
        timeout: float,  # noqa: ASYNC109 - a budget for the whole rollout, not one call
        on_progress: Callable[[RolloutProgress], Awaitable[None]] | None = None,
    ) -> RolloutResult:
        """Follow a Deployment's rollout until it is Available at its current generation, fails, or times out.

        Safe to call again after a crash: the first list shows the current
        state, so a finished rollout returns at once.
        """
        last: dict[str, Any] = {}
        reported: list[RolloutProgress] = []

        async def report(deployment: dict[str, Any]) -> None:
            last["deployment"] = deployment
            progress = progress_of(deployment)
            if on_progress is not None and (not reported or reported[-1] != progress):
                reported.append(progress)
                await on_progress(progress)

        result = await self._watch_until(
            what=f"watch rollout of {namespace}/{name}",
            timeout=timeout,
            follow=lambda deadline: self._follow_rollout(
                namespace=namespace, name=name, report=report, loop_deadline=deadline
            ),
        )
        if result is not None:
            return result
        progress = progress_of(last["deployment"]) if "deployment" in last else None
        return RolloutResult(
            ok=False,
            reason="Timeout",
            message=f"deployment {namespace}/{name} was not Available within {timeout:g}s",
            ready=progress.ready if progress else 0,
            desired=progress.desired if progress else 0,
        )

    async def _follow_rollout(
        self,
        *,
        namespace: str,
        name: str,
        report: Callable[[dict[str, Any]], Awaitable[None]],
        loop_deadline: float | None,
    ) -> RolloutResult:
        what = f"watch rollout of {namespace}/{name}"
        deployment, deployment_rv = await self._list_one(
            kind="Deployment",
            namespace=namespace,
            name=name,
            what=what,
            missing=f"deployment {namespace}/{name} does not exist",
        )
        identity = template_identity(deployment)
        selector = label_selector(identity[0])
        pod_listing = await self._list_pods(namespace=namespace, selector=selector)
        pods = {
            as_str(dig(p, "metadata", "name")): p
            for p in as_list(pod_listing.get("items"))
            if is_current_pod(p, identity)
        }
        pods_rv = as_str(dig(pod_listing, "metadata", "resourceVersion"))

        async def verdict_of(verdict: RolloutResult) -> RolloutResult:
            return await self._with_logs(
                namespace=namespace, verdict=verdict, pods=pods, failure_of=failing_container
            )

        await report(deployment)
        verdict = evaluate_rollout(deployment, pods)
        if verdict is not None:
            return await verdict_of(verdict)
        streams = [
            _Stream(
                "deployment",
                self._apps.list_namespaced_deployment,
                {
                    "namespace": namespace,
                    "field_selector": f"metadata.name={name}",
                    "resource_version": deployment_rv,
                },
            ),
            _Stream(
                "pod",
                self._core.list_namespaced_pod,
                {"namespace": namespace, "label_selector": selector, "resource_version": pods_rv},
            ),
        ]
        async with contextlib.aclosing(
            self._events(what=what, deadline=loop_deadline, streams=streams)
        ) as events:
            async for event in events:
                obj = event.obj or {}
                if event.source == "deployment":
                    if event.type == "DELETED":
                        progress = progress_of(deployment)
                        return RolloutResult(
                            ok=False,
                            reason="Deleted",
                            message=f"deployment {namespace}/{name} was deleted during the rollout",
                            ready=progress.ready,
                            desired=progress.desired,
                        )
                    deployment = obj
                    if template_identity(deployment) != identity:
                        # A newer spec was applied: its pods carry other labels; follow those instead.
                        raise _Relist()
                    await report(deployment)
                else:
                    pod_name = as_str(dig(obj, "metadata", "name"))
                    if event.type == "DELETED" or not is_current_pod(obj, identity):
                        pods.pop(pod_name, None)
                    else:
                        pods[pod_name] = obj
                verdict = evaluate_rollout(deployment, pods)
                if verdict is not None:
                    return await verdict_of(verdict)
        raise _Relist()  # not reached: the events end only by raising

    # -- the release phase ---------------------------------------------------------

    async def wait_release(
        self,
        *,
        namespace: str,
        name: str,
        timeout: float,  # noqa: ASYNC109 - a budget for the whole release, not one call
    ) -> ReleaseResult | None:
        """Follow a release Job until its verdict; None when it has none within `timeout`.

        Safe to call again after a crash: a Job that already finished returns its verdict at once.
        """
        return await self._watch_until(
            what=f"watch release job {namespace}/{name}",
            timeout=timeout,
            follow=lambda deadline: self._follow_release(
                namespace=namespace, name=name, loop_deadline=deadline
            ),
        )

    async def _follow_release(
        self, *, namespace: str, name: str, loop_deadline: float | None
    ) -> ReleaseResult:
        what = f"watch release job {namespace}/{name}"
        job, job_rv = await self._list_one(
            kind="Job",
            namespace=namespace,
            name=name,
            what=what,
            missing=f"release job {namespace}/{name} does not exist",
        )
        # The controller-uid label picks this very Job's pods, not those of an older one of the same name.
        selector = f"{JOB_UID_LABEL}={as_str(dig(job, 'metadata', 'uid'))}"
        pod_listing = await self._list_pods(namespace=namespace, selector=selector)
        pods = {as_str(dig(p, "metadata", "name")): p for p in as_list(pod_listing.get("items"))}

        async def verdict_of(verdict: ReleaseResult) -> ReleaseResult:
            return await self._with_logs(
                namespace=namespace, verdict=verdict, pods=pods, failure_of=release_failure
            )

        verdict = evaluate_release(job, pods)
        if verdict is not None:
            return await verdict_of(verdict)
        batch = k8s_client.BatchV1Api(self._conn.api)
        streams = [
            _Stream(
                "job",
                batch.list_namespaced_job,
                {
                    "namespace": namespace,
                    "field_selector": f"metadata.name={name}",
                    "resource_version": job_rv,
                },
            ),
            _Stream(
                "pod",
                self._core.list_namespaced_pod,
                {
                    "namespace": namespace,
                    "label_selector": selector,
                    "resource_version": as_str(dig(pod_listing, "metadata", "resourceVersion")),
                },
            ),
        ]
        async with contextlib.aclosing(
            self._events(what=what, deadline=loop_deadline, streams=streams)
        ) as events:
            async for event in events:
                obj = event.obj or {}
                if event.source == "job":
                    if event.type == "DELETED":
                        return ReleaseResult(
                            ok=False,
                            reason="Deleted",
                            message=f"release job {namespace}/{name} was deleted before it finished",
                            job=name,
                        )
                    job = obj
                elif event.type == "DELETED":
                    pods.pop(as_str(dig(obj, "metadata", "name")), None)
                else:
                    pods[as_str(dig(obj, "metadata", "name"))] = obj
                verdict = evaluate_release(job, pods)
                if verdict is not None:
                    return await verdict_of(verdict)
        raise _Relist()  # not reached: the events end only by raising


class _SharedClientWatch(k8s_watch.Watch):
    """A Watch on our own ApiClient.

    The stock Watch builds a fresh default ApiClient (and SSL context) per stream, about 60 ms of CPU
    each, two per rollout; it only uses it to deserialize typed objects, and we read `raw_object`.
    """

    def __init__(self, api_client: Any) -> None:
        self._raw_return_type = None
        self._stop = False
        self._api_client = api_client
        self.resource_version = None
        self.resp = None

    async def close(self) -> None:
        # The ApiClient is the Kube's, closed with it; only the response is ours.
        if self.resp is not None:
            self.resp.release()
            self.resp = None
