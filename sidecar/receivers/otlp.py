"""`receivers.otlp`: OTLP over gRPC and over HTTP, each listener optional (`null` = off).

One component for the config section; each listener is its own transport module. They start
in order and stop together, and a listener that cannot bind stops the ones already bound."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

from pydantic import BaseModel

from sidecar.component import (
    BuildContext,
    Consumer,
    Lifecycle,
    ReceiverComponent,
    ReceiverFactory,
    register_receiver,
)
from sidecar.config import OtlpReceiverConfig
from sidecar.model import Signal
from sidecar.receivers.otlp_grpc import OtlpGrpcReceiver
from sidecar.receivers.otlp_http import OtlpHttpReceiver


class _Listener(Lifecycle, Protocol):
    def describe(self) -> str: ...


class OtlpReceiver:
    def __init__(self, name: str, config: OtlpReceiverConfig,
                 consumers: Mapping[Signal, Consumer]) -> None:
        self.name = name
        self.grpc = OtlpGrpcReceiver(name, config.grpc, consumers) if config.grpc else None
        self.http = OtlpHttpReceiver(name, config.http, consumers) if config.http else None
        self._listeners: list[_Listener] = [x for x in (self.grpc, self.http) if x is not None]
        self._started: list[_Listener] = []

    async def start(self) -> None:
        try:
            for listener in self._listeners:
                await listener.start()
                self._started.append(listener)
        except BaseException:
            await self.shutdown(asyncio.get_running_loop().time())
            raise

    async def shutdown(self, deadline: float) -> None:
        started, self._started = self._started, []
        await asyncio.gather(*(listener.shutdown(deadline) for listener in started))

    def describe(self) -> list[str]:
        return [listener.describe() for listener in self._listeners]


def create(name: str, config: BaseModel, consumers: Mapping[Signal, Consumer],
           context: BuildContext) -> ReceiverComponent:
    assert isinstance(config, OtlpReceiverConfig)
    return OtlpReceiver(name, config, consumers)


FACTORY = register_receiver(ReceiverFactory("otlp", OtlpReceiverConfig, create))
