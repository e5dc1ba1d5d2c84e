# Written by snakepit.grpc.generate from snakepit/grpc/bridge.proto. DO NOT EDIT!
"""Client and server classes corresponding to protobuf-defined services (types)."""

from collections.abc import AsyncIterator as _AsyncIterator, Awaitable as _Awaitable, Iterator as _Iterator
from typing import Any as _Any

import grpc

from snakepit.grpc import bridge_pb2

GRPC_GENERATED_VERSION: str
GRPC_VERSION: str


class BridgeServiceStub:
    def __init__(self, channel: grpc.Channel | grpc.aio.Channel) -> None: ...
    Ping: grpc.UnaryUnaryMultiCallable[bridge_pb2.PingRequest, bridge_pb2.PingResponse]
    InitializeSession: grpc.UnaryUnaryMultiCallable[bridge_pb2.InitializeSessionRequest, bridge_pb2.InitializeSessionResponse]
    CleanupSession: grpc.UnaryUnaryMultiCallable[bridge_pb2.CleanupSessionRequest, bridge_pb2.CleanupSessionResponse]
    GetSession: grpc.UnaryUnaryMultiCallable[bridge_pb2.GetSessionRequest, bridge_pb2.GetSessionResponse]
    Heartbeat: grpc.UnaryUnaryMultiCallable[bridge_pb2.HeartbeatRequest, bridge_pb2.HeartbeatResponse]
    ExecuteTool: grpc.UnaryUnaryMultiCallable[bridge_pb2.ExecuteToolRequest, bridge_pb2.ExecuteToolResponse]
    ExecuteStreamingTool: grpc.UnaryStreamMultiCallable[bridge_pb2.ExecuteToolRequest, bridge_pb2.ToolChunk]
    RegisterTools: grpc.UnaryUnaryMultiCallable[bridge_pb2.RegisterToolsRequest, bridge_pb2.RegisterToolsResponse]
    GetExposedElixirTools: grpc.UnaryUnaryMultiCallable[bridge_pb2.GetExposedElixirToolsRequest, bridge_pb2.GetExposedElixirToolsResponse]
    ExecuteElixirTool: grpc.UnaryUnaryMultiCallable[bridge_pb2.ExecuteElixirToolRequest, bridge_pb2.ExecuteElixirToolResponse]
    StreamTelemetry: grpc.StreamStreamMultiCallable[bridge_pb2.TelemetryControl, bridge_pb2.TelemetryEvent]


class BridgeServiceServicer:
    def Ping(self, request: bridge_pb2.PingRequest, context: _Any) -> bridge_pb2.PingResponse | _Awaitable[bridge_pb2.PingResponse]: ...
    def InitializeSession(self, request: bridge_pb2.InitializeSessionRequest, context: _Any) -> bridge_pb2.InitializeSessionResponse | _Awaitable[bridge_pb2.InitializeSessionResponse]: ...
    def CleanupSession(self, request: bridge_pb2.CleanupSessionRequest, context: _Any) -> bridge_pb2.CleanupSessionResponse | _Awaitable[bridge_pb2.CleanupSessionResponse]: ...
    def GetSession(self, request: bridge_pb2.GetSessionRequest, context: _Any) -> bridge_pb2.GetSessionResponse | _Awaitable[bridge_pb2.GetSessionResponse]: ...
    def Heartbeat(self, request: bridge_pb2.HeartbeatRequest, context: _Any) -> bridge_pb2.HeartbeatResponse | _Awaitable[bridge_pb2.HeartbeatResponse]: ...
    def ExecuteTool(self, request: bridge_pb2.ExecuteToolRequest, context: _Any) -> bridge_pb2.ExecuteToolResponse | _Awaitable[bridge_pb2.ExecuteToolResponse]: ...
    def ExecuteStreamingTool(self, request: bridge_pb2.ExecuteToolRequest, context: _Any) -> _Iterator[bridge_pb2.ToolChunk] | _AsyncIterator[bridge_pb2.ToolChunk]: ...
    def RegisterTools(self, request: bridge_pb2.RegisterToolsRequest, context: _Any) -> bridge_pb2.RegisterToolsResponse | _Awaitable[bridge_pb2.RegisterToolsResponse]: ...
    def GetExposedElixirTools(self, request: bridge_pb2.GetExposedElixirToolsRequest, context: _Any) -> bridge_pb2.GetExposedElixirToolsResponse | _Awaitable[bridge_pb2.GetExposedElixirToolsResponse]: ...
    def ExecuteElixirTool(self, request: bridge_pb2.ExecuteElixirToolRequest, context: _Any) -> bridge_pb2.ExecuteElixirToolResponse | _Awaitable[bridge_pb2.ExecuteElixirToolResponse]: ...
    def StreamTelemetry(self, request_iterator: _Iterator[bridge_pb2.TelemetryControl] | _AsyncIterator[bridge_pb2.TelemetryControl], context: _Any) -> _Iterator[bridge_pb2.TelemetryEvent] | _AsyncIterator[bridge_pb2.TelemetryEvent]: ...


def add_BridgeServiceServicer_to_server(servicer: BridgeServiceServicer, server: grpc.Server | grpc.aio.Server) -> None: ...


class BridgeService:
    @staticmethod
    def Ping(
        request: bridge_pb2.PingRequest,
        target: str,
        options: _Any = (),
        channel_credentials: grpc.ChannelCredentials | None = None,
        call_credentials: grpc.CallCredentials | None = None,
        insecure: bool = False,
        compression: grpc.Compression | None = None,
        wait_for_ready: bool | None = None,
        timeout: float | None = None,
        metadata: _Any = None,
    ) -> bridge_pb2.PingResponse: ...
    @staticmethod
    def InitializeSession(
        request: bridge_pb2.InitializeSessionRequest,
        target: str,
        options: _Any = (),
        channel_credentials: grpc.ChannelCredentials | None = None,
        call_credentials: grpc.CallCredentials | None = None,
        insecure: bool = False,
        compression: grpc.Compression | None = None,
        wait_for_ready: bool | None = None,
        timeout: float | None = None,
        metadata: _Any = None,
    ) -> bridge_pb2.InitializeSessionResponse: ...
    @staticmethod
    def CleanupSession(
        request: bridge_pb2.CleanupSessionRequest,
        target: str,
        options: _Any = (),
        channel_credentials: grpc.ChannelCredentials | None = None,
        call_credentials: grpc.CallCredentials | None = None,
        insecure: bool = False,
        compression: grpc.Compression | None = None,
        wait_for_ready: bool | None = None,
        timeout: float | None = None,
        metadata: _Any = None,
    ) -> bridge_pb2.CleanupSessionResponse: ...
    @staticmethod
    def GetSession(
        request: bridge_pb2.GetSessionRequest,
        target: str,
        options: _Any = (),
        channel_credentials: grpc.ChannelCredentials | None = None,
        call_credentials: grpc.CallCredentials | None = None,
        insecure: bool = False,
        compression: grpc.Compression | None = None,
        wait_for_ready: bool | None = None,
        timeout: float | None = None,
        metadata: _Any = None,
    ) -> bridge_pb2.GetSessionResponse: ...
    @staticmethod
    def Heartbeat(
        request: bridge_pb2.HeartbeatRequest,
        target: str,
        options: _Any = (),
        channel_credentials: grpc.ChannelCredentials | None = None,
        call_credentials: grpc.CallCredentials | None = None,
        insecure: bool = False,
        compression: grpc.Compression | None = None,
        wait_for_ready: bool | None = None,
        timeout: float | None = None,
        metadata: _Any = None,
    ) -> bridge_pb2.HeartbeatResponse: ...
    @staticmethod
    def ExecuteTool(
        request: bridge_pb2.ExecuteToolRequest,
        target: str,
        options: _Any = (),
        channel_credentials: grpc.ChannelCredentials | None = None,
        call_credentials: grpc.CallCredentials | None = None,
        insecure: bool = False,
        compression: grpc.Compression | None = None,
        wait_for_ready: bool | None = None,
        timeout: float | None = None,
        metadata: _Any = None,
    ) -> bridge_pb2.ExecuteToolResponse: ...
    @staticmethod
    def ExecuteStreamingTool(
        request: bridge_pb2.ExecuteToolRequest,
        target: str,
        options: _Any = (),
        channel_credentials: grpc.ChannelCredentials | None = None,
        call_credentials: grpc.CallCredentials | None = None,
        insecure: bool = False,
        compression: grpc.Compression | None = None,
        wait_for_ready: bool | None = None,
        timeout: float | None = None,
        metadata: _Any = None,
    ) -> _Iterator[bridge_pb2.ToolChunk]: ...
    @staticmethod
    def RegisterTools(
        request: bridge_pb2.RegisterToolsRequest,
        target: str,
        options: _Any = (),
        channel_credentials: grpc.ChannelCredentials | None = None,
        call_credentials: grpc.CallCredentials | None = None,
        insecure: bool = False,
        compression: grpc.Compression | None = None,
        wait_for_ready: bool | None = None,
        timeout: float | None = None,
        metadata: _Any = None,
    ) -> bridge_pb2.RegisterToolsResponse: ...
    @staticmethod
    def GetExposedElixirTools(
        request: bridge_pb2.GetExposedElixirToolsRequest,
        target: str,
        options: _Any = (),
        channel_credentials: grpc.ChannelCredentials | None = None,
        call_credentials: grpc.CallCredentials | None = None,
        insecure: bool = False,
        compression: grpc.Compression | None = None,
        wait_for_ready: bool | None = None,
        timeout: float | None = None,
        metadata: _Any = None,
    ) -> bridge_pb2.GetExposedElixirToolsResponse: ...
    @staticmethod
    def ExecuteElixirTool(
        request: bridge_pb2.ExecuteElixirToolRequest,
        target: str,
        options: _Any = (),
        channel_credentials: grpc.ChannelCredentials | None = None,
        call_credentials: grpc.CallCredentials | None = None,
        insecure: bool = False,
        compression: grpc.Compression | None = None,
        wait_for_ready: bool | None = None,
        timeout: float | None = None,
        metadata: _Any = None,
    ) -> bridge_pb2.ExecuteElixirToolResponse: ...
    @staticmethod
    def StreamTelemetry(
        request_iterator: _Iterator[bridge_pb2.TelemetryControl],
        target: str,
        options: _Any = (),
        channel_credentials: grpc.ChannelCredentials | None = None,
        call_credentials: grpc.CallCredentials | None = None,
        insecure: bool = False,
        compression: grpc.Compression | None = None,
        wait_for_ready: bool | None = None,
        timeout: float | None = None,
        metadata: _Any = None,
    ) -> _Iterator[bridge_pb2.TelemetryEvent]: ...
