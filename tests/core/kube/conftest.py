"""Fixtures shared by the adapter tests against the real local control plane."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from core.kube import client as kube_client
from core.kube import spec
from tests.testenv.controlplane import KubeEnv


@pytest.fixture
async def kube(kube_env: KubeEnv) -> AsyncIterator[kube_client.Kube]:
    """The adapter on the test control plane, closed after the test."""
    kube = await kube_client.Kube.from_kubeconfig(kubeconfig=kube_env.kubeconfig)
    try:
        yield kube
    finally:
        await kube.close()


def workload_spec(namespace: str, **values: Any) -> spec.WorkloadSpec:
    """A WorkloadSpec for `namespace`: revision 1, checksum c1, and the fields a test module chooses."""
    return spec.WorkloadSpec(**{"namespace": namespace, "revision": 1, "secret_checksum": "c1", **values})
