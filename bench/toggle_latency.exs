# Toggle latency: the time from `GrpcStream.toggle(w, false)` returning to the last event
# from `w` delivered to a `:telemetry` handler, over many trials.
#
#     MIX_ENV=test mix run bench/toggle_latency.exs [--trials 300] [--quiet-ms 100] [--rate 20000]
#
# (MIX_ENV=test: the Python worker driver `Snakepit.Telemetry.Test.PythonWorker` lives in
# test/support.) One Python worker (test/support/python/scripted_worker.py, on 127.0.0.1)
# emits `tool.execution.stop` at a steady `--rate` events/s (`emit_paced`) for the whole
# benchmark; while the stream is disabled the worker drops them at the source. Each trial:
# `toggle(w, true)`, wait until events flow again, let them flow 20 ms, `toggle(w, false)`,
# then watch `--quiet-ms` for stragglers. The handler stores the monotonic time of every
# event it sees; the trial's latency is (last event seen) - (toggle returned), or 0 when
# nothing arrived after it returned.
#
# Events still in flight when the toggle is made (the Dispatcher's unacknowledged batches)
# are delivered; everything the NIF still holds or receives afterwards is dropped as
# `:disabled`. The worker also stops at the source when the control message reaches it;
# its already-serialized buffer still crosses the wire and is dropped by the NIF. The worker
# runs unpaced (`--min-batch-interval-ms 0`), so that batches are in flight whenever a toggle
# lands: that is what this measures. (With the default pacing the worker sends what it had
# queued as soon as the control reaches it, `StreamConsumer.flush_soon`, and the NIF drops it
# as `:disabled`: 300 of 300 trials saw nothing after the call returned.)

defmodule Bench.ToggleLatency do
  @moduledoc false

  alias Snakepit.Telemetry.GrpcStream
  alias Snakepit.Telemetry.Test.{PythonWorker, Streams}

  @event [:snakepit, :python, :tool, :execution, :stop]

  def handle(_event, _measurements, _metadata, last_seen),
    do: :atomics.put(last_seen, 1, System.monotonic_time())

  def run(argv) do
    {opts, _, _} =
      OptionParser.parse(argv, strict: [trials: :integer, quiet_ms: :integer, rate: :integer])

    trials = Keyword.get(opts, :trials, 300)
    rate = Keyword.get(opts, :rate, 20_000)
    quiet_ms = Keyword.get(opts, :quiet_ms, 100)

    # Unpaced: batches in flight whenever a toggle lands (see the header).
    worker = PythonWorker.start(["--max-buffer", "2000000", "--min-batch-interval-ms", "0"])
    id = "toggle-bench"
    last_seen = :atomics.new(1, signed: true)
    :ok = :telemetry.attach("toggle-bench", @event, &__MODULE__.handle/4, last_seen)

    # A steady source for the whole run (a preloaded queue drains in under a second on the
    # batched wire): `rate` events/s, for longer than the trials can take.
    PythonWorker.run(worker, %{
      "op" => "emit_paced",
      "event" => "tool.execution.stop",
      "measurements" => %{"duration" => 1},
      "rate" => rate,
      "seconds" => 30 + trials * (quiet_ms + 100) / 1000
    })

    :ok = GrpcStream.register_worker(id, worker.endpoint)

    latencies =
      for _ <- 1..trials do
        :ok = GrpcStream.toggle(id, true)
        on = System.monotonic_time()
        Streams.wait_until(fn -> :atomics.get(last_seen, 1) > on end, 10_000)
        Process.sleep(20)
        :ok = GrpcStream.toggle(id, false)
        off = System.monotonic_time()
        Process.sleep(quiet_ms)
        max(0, :atomics.get(last_seen, 1) - off)
      end

    [info] = Enum.filter(GrpcStream.list_streams(), &(&1.worker_id == id))
    :ok = GrpcStream.unregister_worker(id)
    PythonWorker.stop(worker)
    report(latencies, info, quiet_ms)
  end

  defp report(latencies, info, quiet_ms) do
    us =
      latencies |> Enum.map(&System.convert_time_unit(&1, :native, :microsecond)) |> Enum.sort()

    n = length(us)
    pct = fn p -> Enum.at(us, min(n - 1, round(p / 100 * (n - 1)))) end
    zero = Enum.count(us, &(&1 == 0))

    IO.puts("""
    toggle(w, false) returned -> last event delivered from w (#{n} trials, #{quiet_ms} ms watch):
      median #{pct.(50)} µs, p90 #{pct.(90)} µs, p99 #{pct.(99)} µs, max #{List.last(us)} µs
      trials with no event after the toggle returned: #{zero} of #{n}
    stream counters: received #{info.received}, emitted #{info.emitted}, dropped as disabled #{info.dropped.disabled}
    """)
  end
end

Bench.ToggleLatency.run(System.argv())
