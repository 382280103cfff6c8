#!/usr/bin/env bash
# Generates the Python protobuf/gRPC stubs for grantmesh.v1 into
# clients/python/grantmesh/v1/ (*_pb2.py, *_pb2_grpc.py; gitignored).
#
# Usage: clients/python/generate.sh            (from any directory)
#   PYTHON  interpreter that has grpcio-tools installed (default: python3);
#           scripts/python-env runs this with its venv's python.
#
# The protos import each other as "grantmesh/v1/common.proto", so with -I
# proto/proto the generated modules import "grantmesh.v1.common_pb2": put
# clients/python on sys.path to use them.
set -euo pipefail

PYTHON=${PYTHON:-python3}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(git -C "$HERE" rev-parse --show-toplevel 2>/dev/null || (cd "$HERE/../.." && pwd -P))
PROTO_ROOT="$REPO/proto/proto"
OUT="$HERE"
PKG_DIR="$OUT/grantmesh/v1"

if ! "$PYTHON" -c 'import grpc_tools.protoc' 2>/dev/null; then
    echo "generate.sh: $PYTHON cannot import grpc_tools; run scripts/python-env or set PYTHON" >&2
    exit 1
fi

# grpc_tools ships google/protobuf/*.proto (timestamp, duration, ...) under _proto.
WKT=$("$PYTHON" -c 'import os, grpc_tools; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')

shopt -s nullglob
protos=("$PROTO_ROOT"/grantmesh/v1/*.proto)
shopt -u nullglob
if [ ${#protos[@]} -eq 0 ]; then
    echo "generate.sh: no .proto files under $PROTO_ROOT/grantmesh/v1" >&2
    exit 1
fi

# Generate into a scratch dir and swap in, so a failed run leaves the old stubs
# and a removed .proto does not leave a stale module behind.
# The scratch dir sits beside the package, so each module is swapped in by an
# atomic rename: a client importing the stubs meanwhile sees old or new, never none.
mkdir -p "$OUT"
scratch=$(mktemp -d "$OUT/.generate.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
"$PYTHON" -m grpc_tools.protoc \
    -I "$PROTO_ROOT" \
    -I "$WKT" \
    --python_out="$scratch" \
    --grpc_python_out="$scratch" \
    "${protos[@]}"

mkdir -p "$PKG_DIR"
for old in "$PKG_DIR"/*_pb2.py "$PKG_DIR"/*_pb2_grpc.py; do
    [ -e "$old" ] && [ ! -e "$scratch/grantmesh/v1/$(basename "$old")" ] && rm -f "$old"
done
for new in "$scratch"/grantmesh/v1/*_pb2*.py; do
    mv -f "$new" "$PKG_DIR/"
done
# The package __init__.py files are committed; recreate them only if missing.
[ -f "$OUT/grantmesh/__init__.py" ] || : >"$OUT/grantmesh/__init__.py"
[ -f "$PKG_DIR/__init__.py" ] || : >"$PKG_DIR/__init__.py"

echo "generate.sh: ${#protos[@]} protos -> ${PKG_DIR#"$REPO"/}" >&2
