"""The gRPC side of ``bdn csi``: CSI Identity and Node services on a unix socket.

The services are registered as generic handlers on a ``grpc.aio`` server
with the messages of :mod:`bdn.csi.proto.csi_pb2`; no gRPC stub code is
generated. Method paths are CSI's (``/csi.v1.Node/NodePublishVolume``), so
kubelet and the node-driver-registrar talk to it as to any CSI driver.

Identity: the driver name and BDN's version; no plugin capabilities (there
is no controller: an ephemeral inline volume needs none); ``Probe`` answers
ready only while the node agent answers its health check, so kubelet's view
of the driver follows the agent's.

Node: no capabilities (no staging, no stats), the node id it was started
with, and publish/unpublish from :class:`~bdn.csi.node.NodeService`. Every
failure is answered with its CSI code and one line (:mod:`bdn.csi.errors`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.wrappers_pb2 import BoolValue

from bdn import __version__
from bdn.agent.client import AgentClient
from bdn.csi.errors import CsiError
from bdn.csi.node import NodeService
from bdn.csi.proto import csi_pb2 as pb

log = logging.getLogger(__name__)

IDENTITY_SERVICE = "csi.v1.Identity"
NODE_SERVICE = "csi.v1.Node"

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class CsiServicer:
    """The RPCs of both services, answering from ``node`` and ``agent``.

    Args:
        driver_name: the CSIDriver object's name (GetPluginInfo).
        node_id: this node's id, usually its Kubernetes node name (NodeGetInfo).
    """

    def __init__(self, node: NodeService, agent: AgentClient, *, driver_name: str,
                 node_id: str) -> None:
        self.node = node
        self.agent = agent
        self.driver_name = driver_name
        self.node_id = node_id

    # -- Identity ----------------------------------------------------------------
    async def get_plugin_info(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.GetPluginInfoResponse(name=self.driver_name, vendor_version=__version__)

    async def get_plugin_capabilities(self, request: Any,
                                      context: grpc.aio.ServicerContext) -> Any:
        return pb.GetPluginCapabilitiesResponse()

    async def probe(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        health = await self.agent.health()
        return pb.ProbeResponse(ready=BoolValue(value=health is not None))

    # -- Node --------------------------------------------------------------------
    async def node_get_capabilities(self, request: Any,
                                    context: grpc.aio.ServicerContext) -> Any:
        return pb.NodeGetCapabilitiesResponse()

    async def node_get_info(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.NodeGetInfoResponse(node_id=self.node_id)

    async def node_publish_volume(self, request: Any,
                                  context: grpc.aio.ServicerContext) -> Any:
        cap = request.volume_capability
        block = request.HasField("volume_capability") and cap.WhichOneof("access_type") == "block"
        await _answer(context, "publish", request.volume_id, self.node.publish(
            request.volume_id, request.target_path, dict(request.volume_context), block=block))
        return pb.NodePublishVolumeResponse()

    async def node_unpublish_volume(self, request: Any,
                                    context: grpc.aio.ServicerContext) -> Any:
        await _answer(context, "unpublish", request.volume_id,
                      self.node.unpublish(request.volume_id, request.target_path))
        return pb.NodeUnpublishVolumeResponse()


async def _answer(context: grpc.aio.ServicerContext, what: str, volume_id: str,
                  work: Awaitable[None]) -> None:
    """Run ``work``; a :class:`CsiError` aborts the RPC with its code and message."""
    started = time.monotonic()
    try:
        await work
    except CsiError as err:
        log.warning("%s %s failed (%s): %s", what, volume_id, err.code, err)
        await context.abort(grpc.StatusCode[err.code], str(err))
    log.info("%s %s done in %.3f s", what, volume_id, time.monotonic() - started)


def _method(fn: Handler, request: Any, response: Any) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        fn, request_deserializer=request.FromString,
        response_serializer=response.SerializeToString)


def handlers(servicer: CsiServicer) -> tuple[grpc.GenericRpcHandler, ...]:
    """The Identity and Node services as generic handlers of a gRPC server."""
    s = servicer
    identity = {
        "GetPluginInfo": _method(s.get_plugin_info, pb.GetPluginInfoRequest,
                                 pb.GetPluginInfoResponse),
        "GetPluginCapabilities": _method(s.get_plugin_capabilities,
                                         pb.GetPluginCapabilitiesRequest,
                                         pb.GetPluginCapabilitiesResponse),
        "Probe": _method(s.probe, pb.ProbeRequest, pb.ProbeResponse),
    }
    node = {
        "NodeGetCapabilities": _method(s.node_get_capabilities, pb.NodeGetCapabilitiesRequest,
                                       pb.NodeGetCapabilitiesResponse),
        "NodeGetInfo": _method(s.node_get_info, pb.NodeGetInfoRequest, pb.NodeGetInfoResponse),
        "NodePublishVolume": _method(s.node_publish_volume, pb.NodePublishVolumeRequest,
                                     pb.NodePublishVolumeResponse),
        "NodeUnpublishVolume": _method(s.node_unpublish_volume, pb.NodeUnpublishVolumeRequest,
                                       pb.NodeUnpublishVolumeResponse),
    }
    return (grpc.method_handlers_generic_handler(IDENTITY_SERVICE, identity),
            grpc.method_handlers_generic_handler(NODE_SERVICE, node))
