#!/usr/bin/env bash
# Regenerate csi_pb2.py and csi_pb2.pyi from csi.proto. They are checked in,
# so neither the wheel nor the image needs protoc; this script needs the dev
# extra's grpcio-tools (pip install -e '.[dev]'). The proto is compiled from
# the repository root so it registers as bdn/csi/proto/csi.proto, a name no
# other package's csi.proto collides with in protobuf's descriptor pool.
# tests/csi/test_proto.py fails when the checked-in files differ from what
# this script writes.
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
out="${1:-$root}"
cd "$root"
python -m grpc_tools.protoc -I . --python_out="$out" --pyi_out="$out" bdn/csi/proto/csi.proto
