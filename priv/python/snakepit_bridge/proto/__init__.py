"""Generated protobuf code for ``proto/snakepit_bridge.proto``.

Regenerate with ``priv/python/scripts/gen_proto.sh``; a test fails when the checked-in
files are stale.
"""
