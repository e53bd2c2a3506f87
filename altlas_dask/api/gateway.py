"""The gateway: one asynchronous altlas ``Client`` per process and the parts the routes use.

- ``link`` (:mod:`altlas_dask.api.link`): the client, its supervision through scheduler outages, router calls;
- ``registry`` (:mod:`altlas_dask.api.registry`): the gateway's tasks and batches, and the router's records of
  them, which the router pushes (its task feed, a Dask event topic) instead of being polled;
- ``gpus`` (:mod:`altlas_dask.api.gpu_list`): the router's GPU list, cached briefly;
- ``submission`` (:mod:`altlas_dask.api.submission`): options, submitting, batch split, cancelling;
- ``states`` (:mod:`altlas_dask.api.task_state`): a task's state and result as the API shows it;
- ``request_batcher`` (:mod:`altlas_dask.api.request_batching`): dynamic batching of ``POST /predict``.
"""

from __future__ import annotations

import asyncio

from altlas_dask.api.gpu_list import GpuList
from altlas_dask.api.link import SchedulerLink
from altlas_dask.api.registry import TaskRegistry, settled
from altlas_dask.api.request_batching import RequestBatcher
from altlas_dask.api.settings import ApiSettings
from altlas_dask.api.submission import Submission
from altlas_dask.api.task_state import TaskStates
from altlas_dask.client.gpu_client import Client
from altlas_dask.config import AltlasConfig


class Gateway:
    """The parts of the gateway, wired together (see the module docstring)."""

    def __init__(self, client: Client, config: AltlasConfig, settings: ApiSettings) -> None:
        self.config, self.settings = config, settings
        self.link = SchedulerLink(client, config, settings)
        self.registry = TaskRegistry(settings)
        self.gpus = GpuList(self.link)
        self.submission = Submission(self.link, self.registry, self.gpus)
        self.states = TaskStates(self.link, self.registry)
        self.link.on_recovered += [self.gpus.invalidate, self.registry.subscribe]
        batching = config.serving.batching.get("generate")
        self.request_batcher = (
            RequestBatcher(
                self.submission.send_batch,
                lambda entry: settled(entry.future),
                self.gpus.active,
                batching.max_batch_size,
                batching.max_wait_ms / 1000,
            )
            if batching is not None and batching.enabled and batching.max_batch_size > 1
            else None
        )

    @classmethod
    async def connect(cls, address: str, config: AltlasConfig, settings: ApiSettings) -> Gateway:
        client = await SchedulerLink.open_client(address, config, settings.connect_timeout)
        gateway = cls(client, config, settings)
        try:
            gateway.link.policy = await gateway.link.ask(gateway.link.router().policy())
        except BaseException:
            await client.close()
            raise
        gateway.link.address = address
        gateway.registry.subscribe(client)
        gateway.link.start()
        if settings.warm_up:
            asyncio.create_task(gateway.link.warm_up())
        return gateway

    async def close(self) -> None:
        await self.link.close()
