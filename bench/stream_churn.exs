# Idle streams at scale and registration churn: what a connected stream costs in memory,
# what `list_streams/0` costs with thousands of them, and whether memory comes back after
# registering and unregistering streams over and over.
#
#     MIX_ENV=test mix run bench/stream_churn.exs [--streams 5000] [--churn 1000] [--rounds 8] [--quick]
#
# (`bench/run_all` runs it, after `cargo build --release --examples -p snakepit_telemetry_core`.)
#
# The streams are real gRPC connections to the Rust event source (`--events 0`: each
# stream opens and then carries nothing), registered with `GrpcStream.register_worker/3`.
#
#   1. `--rounds` rounds of: register `--churn` streams, wait until all are connected,
#      unregister them and wait until they are gone. BEAM RSS after each round; the target
#      is the last round within 20 % of the first.
#   2. `--streams` streams: registered, all connected; BEAM RSS before and after, per
#      stream; `list_streams/0` timed (median of 5), with `long_schedule` (1 ms) watched.
#      Then all unregistered, and RSS read again.

defmodule Bench.StreamChurn do
  @moduledoc false

  alias Snakepit.Telemetry.GrpcStream
  alias Snakepit.Telemetry.Test.{BenchStats, EventSource, OsStats, Streams}

  import BenchStats, only: [fmt: 1, median: 1]

  @defaults [streams: 5_000, churn: 1_000, rounds: 8]
  @switches [streams: :integer, churn: :integer, rounds: :integer, quick: :boolean]

  def main(argv) do
    {opts, []} = OptionParser.parse!(argv, strict: @switches)
    opts = Keyword.merge(@defaults, opts)

    opts =
      if opts[:quick], do: Keyword.merge(opts, streams: 300, churn: 100, rounds: 3), else: opts

    source = EventSource.start(events: 0, protocol: :batched)

    IO.puts(
      "#{opts[:rounds]} rounds of #{opts[:churn]} streams, then #{opts[:streams]} idle streams"
    )

    # 1. Churn, from a fresh start.
    rss_start = OsStats.rss_kb(:self)

    rounds =
      for round <- 1..opts[:rounds] do
        round_ids = register(source, "churn-#{round}", opts[:churn])
        connected = OsStats.rss_kb(:self)
        unregister(round_ids)
        {round, connected, OsStats.rss_kb(:self)}
      end

    # 2. Many idle streams.
    rss0 = OsStats.rss_kb(:self)
    ids = register(source, "idle", opts[:streams])
    rss1 = OsStats.rss_kb(:self)
    :erlang.system_monitor(self(), [{:long_schedule, 1}])

    list_us =
      for _ <- 1..5 do
        {us, list} = :timer.tc(&GrpcStream.list_streams/0)
        true = length(list) == opts[:streams]
        us
      end

    :erlang.system_monitor(:undefined)
    longs = BenchStats.long_schedules()
    unregister(ids)
    rss_after_unregister = OsStats.rss_kb(:self)
    Process.sleep(2_000)
    rss_later = OsStats.rss_kb(:self)

    {_, _, first} = hd(rounds)
    {_, _, last} = List.last(rounds)

    churn_rows =
      for {round, connected, after_round} <- rounds do
        [
          "churn round #{round}: RSS with #{opts[:churn]} connected / after unregistering",
          "#{mib(connected)} / #{mib(after_round)} MiB"
        ]
      end

    BenchStats.print_table(
      ["measure", "value"],
      [["BEAM RSS at the start", "#{mib(rss_start)} MiB"]] ++
        churn_rows ++
        [
          [
            "last churn round vs first (after unregistering)",
            "#{fmt((last - first) * 100 / first)} %"
          ],
          [
            "BEAM RSS before / with #{opts[:streams]} connected streams",
            "#{mib(rss0)} / #{mib(rss1)} MiB"
          ],
          ["memory per connected idle stream", "#{fmt((rss1 - rss0) / opts[:streams])} KiB"],
          [
            "list_streams/0 with #{opts[:streams]} streams, median (min–max)",
            "#{fmt(median(list_us) / 1000)} ms (#{fmt(Enum.min(list_us) / 1000)}–#{fmt(Enum.max(list_us) / 1000)})"
          ],
          [
            "long_schedule ≥ 1 ms during those calls",
            "#{length(longs)}: #{inspect(Enum.take(longs, 3))}"
          ],
          [
            "BEAM RSS just after unregistering them all / 2 s later",
            "#{mib(rss_after_unregister)} / #{mib(rss_later)} MiB"
          ]
        ]
    )

    EventSource.stop(source)
  end

  defp register(source, prefix, n) do
    ids = for i <- 1..n, do: "#{prefix}-#{i}"
    for id <- ids, do: :ok = GrpcStream.register_worker(id, source.endpoint)
    wanted = MapSet.new(ids)

    Streams.wait_until(
      fn ->
        GrpcStream.list_streams()
        |> Enum.count(&(&1.worker_id in wanted and &1.status == :connected))
        |> Kernel.==(n)
      end,
      300_000
    )

    ids
  end

  defp unregister(ids) do
    for id <- ids, do: :ok = GrpcStream.unregister_worker(id)
    Streams.wait_until(fn -> GrpcStream.list_streams() == [] end, 60_000)
    # Let the stream tasks finish closing their connections.
    Process.sleep(500)
  end

  defp mib(kb), do: fmt(kb / 1024)
end

Bench.StreamChurn.main(System.argv())
