"""``bdn csi``: the CSI node plugin that gives pods their weights as ``csi:`` inline volumes.

A daemon beside the node agent (one per node, in the agent's DaemonSet). It
asks the agent for a tree over the pod API and bind-mounts it read-only
where kubelet wants the volume; unpublishing releases the tree.

- :mod:`bdn.csi.attributes` - a volume's attributes read as a weights entry.
- :mod:`bdn.csi.holds` - durable records: volume -> mount target, tree.
- :mod:`bdn.csi.mounts` - read-only bind mounts through the mount syscalls.
- :mod:`bdn.csi.node` - publish and unpublish, without gRPC.
- :mod:`bdn.csi.errors` - BDN errors -> CSI status codes.
- :mod:`bdn.csi.server` - the Identity and Node services over gRPC.
- :mod:`bdn.csi.main` - configuration, start-up recovery, serve until SIGTERM.
- :mod:`bdn.csi.proto` - the CSI messages it uses (``csi.proto``, generated ``csi_pb2``).

Nothing in the library imports this package; it imports the library and the
agent's client and protocol, never the agent daemon itself.
"""
