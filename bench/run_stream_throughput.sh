#!/usr/bin/env bash
# Stream throughput benchmark (see bench/stream_throughput.exs for what it measures).
#
#   bench/run_stream_throughput.sh [--events 100000] [--runs 5] [--workers 4]
#                                  [--nif-buffer N] [--timeout-s 120]
#
# Builds the bare-client baseline (count_stream, an example of snakepit_telemetry_core),
# then runs the Elixir script in MIX_ENV=test (where the Python worker driver is compiled;
# `mix run` also builds the NIF). `+sbwt none` etc.: idle BEAM schedulers sleep instead of
# spinning, so the BEAM's CPU time counts work only. Needs .venv (scripts/setup).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --example count_stream -p snakepit_telemetry_core
MIX_ENV=test ERL_FLAGS="${ERL_FLAGS:-} +sbwt none +sbwtdcpu none +sbwtdio none" \
  mix run bench/stream_throughput.exs "$@"
