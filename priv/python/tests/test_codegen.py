"""The checked-in generated protobuf code matches a fresh run of scripts/gen_proto.sh."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from snakepit_bridge.proto import snakepit_bridge_pb2 as pb

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
GENERATED_DIR = PACKAGE_ROOT / "snakepit_bridge" / "proto"
GEN_SCRIPT = PACKAGE_ROOT / "scripts" / "gen_proto.sh"
GENERATED_FILES = ("snakepit_bridge_pb2.py", "snakepit_bridge_pb2.pyi")


def test_checked_in_generated_code_is_up_to_date(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(GEN_SCRIPT), str(tmp_path)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(GENERATED_FILES)
    for name in GENERATED_FILES:
        fresh = (tmp_path / name).read_bytes()
        checked_in = (GENERATED_DIR / name).read_bytes()
        assert fresh == checked_in, (
            f"{name} is stale: run priv/python/scripts/gen_proto.sh and commit the result"
        )


def test_generated_module_describes_the_service() -> None:
    service = pb.DESCRIPTOR.services_by_name["BridgeService"]
    method = service.methods_by_name["StreamTelemetry"]
    assert method.client_streaming
    assert method.server_streaming
    assert method.input_type.full_name == "snakepit.bridge.TelemetryControl"
    assert method.output_type.full_name == "snakepit.bridge.TelemetryEvent"
