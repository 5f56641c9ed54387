#!/usr/bin/env bash
# Regenerate the checked-in protobuf code (snakepit_bridge/proto/snakepit_bridge_pb2.py and
# its mypy-protobuf .pyi stub) from <repo>/proto/snakepit_bridge.proto with grpcio-tools.
#
# Usage: priv/python/scripts/gen_proto.sh [OUT_DIR]
#   OUT_DIR  where to write (default: priv/python/snakepit_bridge/proto)
# Environment:
#   PYTHON     interpreter with grpcio-tools and mypy-protobuf (default: <repo>/.venv/bin/python,
#              else python3 on PATH)
#   PROTO_DIR  directory holding snakepit_bridge.proto (default: <repo>/proto)
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
package_root="$(dirname "$script_dir")"
repo_root="$(cd "$package_root/../.." && pwd)"

proto_dir="${PROTO_DIR:-$repo_root/proto}"
out_dir="${1:-$package_root/snakepit_bridge/proto}"

if [[ -n "${PYTHON:-}" ]]; then
  python="$PYTHON"
elif [[ -x "$repo_root/.venv/bin/python" ]]; then
  python="$repo_root/.venv/bin/python"
else
  python="$(command -v python3)"
fi

# mypy-protobuf installs its protoc plugin next to the interpreter.
mypy_plugin="$(dirname "$python")/protoc-gen-mypy"
if [[ ! -x "$mypy_plugin" ]]; then
  mypy_plugin="$(command -v protoc-gen-mypy || true)"
fi
if [[ -z "$mypy_plugin" ]]; then
  echo "gen_proto.sh: protoc-gen-mypy not found; install mypy-protobuf (pip install -e 'priv/python[dev]')" >&2
  exit 1
fi

mkdir -p "$out_dir"
"$python" -m grpc_tools.protoc \
  --proto_path="$proto_dir" \
  --python_out="$out_dir" \
  --mypy_out="$out_dir" \
  --plugin=protoc-gen-mypy="$mypy_plugin" \
  "$proto_dir/snakepit_bridge.proto"
