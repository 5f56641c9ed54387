# Wide metadata: what maps over 32 keys (hash maps) cost against flat maps, and against
# capping the keys. The NIF makes both kinds in the Dispatcher's `Native.take_events/1`
# (encode.rs), as updates of the previous event's map when only the timestamp differs.
#
#     MIX_ENV=test ERL_FLAGS="+sbwt none +sbwtdcpu none +sbwtdio none" \
#       mix run bench/wide_metadata.exs [--events 20000] [--runs 5] [--widths 0,16,27,28,64,120,480]
#
# (MIX_ENV=test: the worker driver lives in test/support.) `--widths` are the extra
# metadata keys the worker adds to each `tool.execution.stop` event (`w0000`, `w0001`, ...
# with short values, passed through by the NIF as binary keys); the event also carries
# `tool`, `operation` and the keys the NIF adds (worker id, pool, node, ...), so the
# delivered map has more: the table shows that size. The application runs with
# `max_metadata_keys: 1024`, `max_buffer_size: 1000000` and `max_buffer_bytes` 512 MiB
# (nothing dropped).
#
# Each run starts one fresh worker (`scripted_worker.py --max-buffer 1000000`), has it
# emit `--events` events up front, then registers it and times until a `:telemetry`
# handler (a `:counters` increment) has seen them all. Widths run interleaved, `--runs`
# rounds after one warm-up round. Per event: the NIF runtime's threads' CPU (receive,
# check, batch) and the normal schedulers' CPU (the Dispatcher: making the terms in
# `Native.take_events/1`, maps for wide events, `:telemetry.execute/3`, acks) and wall
# time; medians over the runs.
#
# Then one run per width with the script's own process standing in for the Dispatcher
# times every `Native.take_events/1` call and collects its `long_schedule` (1 ms) reports:
# a call makes terms for about 200 µs at most (event_batch.rs), however wide the events.
#
# Capping instead (dropping keys beyond 32, or the event) would cost what the widest
# flat-map row costs, or nothing, and lose the data.

defmodule Bench.WideMetadata do
  @moduledoc false

  alias Snakepit.Telemetry.{Dispatcher, GrpcStream, Native}
  alias Snakepit.Telemetry.Test.{BenchStats, PythonWorker, Streams, ThreadCpu}

  import BenchStats, only: [fmt: 1, median: 1]

  @event [:snakepit, :python, :tool, :execution, :stop]
  @defaults [events: 20_000, runs: 5, widths: "0,16,27,28,64,120,480", timeout_s: 120]
  @switches [events: :integer, runs: :integer, widths: :string, timeout_s: :integer]

  def main(argv) do
    {opts, []} = OptionParser.parse!(argv, strict: @switches)
    opts = Keyword.merge(@defaults, opts)
    widths = opts[:widths] |> String.split(",") |> Enum.map(&String.to_integer/1)

    Streams.restart_app(
      max_metadata_keys: 1024,
      max_buffer_size: 1_000_000,
      max_buffer_bytes: 512 * 1024 * 1024
    )

    :erlang.system_flag(:scheduler_wall_time, true)

    IO.puts("events per run: #{opts[:events]}, runs: #{opts[:runs]}, widths: #{inspect(widths)}")
    for w <- widths, do: run_case(w, div(opts[:events], 10), opts)

    results =
      for run <- 1..opts[:runs], w <- widths do
        r = run_case(w, opts[:events], opts)
        IO.puts("run #{run} width #{w}: #{format(r)}")
        {w, r}
      end

    print_table(widths, results)
    print_take_calls(for w <- widths, do: {w, take_calls(w, opts[:events], opts)})
  end

  # One more run per width with this process standing in for the worker's Dispatcher: every
  # `Native.take_events/1` call timed, and `long_schedule` (1 ms) reports of this process
  # collected. The times are wall time around the call: an upper bound, since they include
  # the OS preempting the scheduler thread and this process waiting to run again after it.
  defp take_calls(width, events, opts) do
    {worker, id} = emitting_worker(width, events)
    partition = Dispatcher.partition(id)
    runtime = GrpcStream.runtime()
    {:ok, :ok} = Native.set_receiver(runtime, partition, self())

    try do
      :ok = GrpcStream.register_worker(id, worker.endpoint)
      deadline = System.monotonic_time(:millisecond) + opts[:timeout_s] * 1000
      :erlang.system_monitor(self(), [{:long_schedule, 1}])
      times = take_timed(id, events, deadline, [])
      :erlang.system_monitor(:undefined)
      {times, for(info <- BenchStats.long_schedules(self()), do: info[:timeout])}
    after
      :erlang.system_monitor(:undefined)
      GrpcStream.unregister_worker(id)
      Native.set_receiver(runtime, partition, Process.whereis(Dispatcher.name(partition)))
      PythonWorker.stop(worker)
    end
  end

  defp take_timed(_id, left, _deadline, times) when left <= 0, do: times

  defp take_timed(id, left, deadline, times) do
    wait = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {:snakepit_telemetry_batch, batch, ^id, _generation, _node} ->
        {taken, times} = take_batch(batch, 0, times)
        :ok = Native.ack(batch)
        take_timed(id, left - taken, deadline, times)

      {:snakepit_telemetry_stream, _, _, _, _, ticket} ->
        Native.ack_status(ticket)
        take_timed(id, left, deadline, times)
    after
      wait -> raise "timed out taking events: #{left} left"
    end
  end

  defp take_batch(batch, taken, times) do
    {us, {more, events}} = :timer.tc(fn -> Native.take_events(batch) end)
    taken = taken + length(events)
    if more == :more, do: take_batch(batch, taken, [us | times]), else: {taken, [us | times]}
  end

  defp print_take_calls(rows) do
    IO.puts("""

    `Native.take_events/1` calls, timed by the receiving process (one run per width):

    | extra keys | calls | median µs | 99th percentile µs | longest µs | long_schedule ≥ 1 ms of the receiver (longest ms) |
    |---|---|---|---|---|---|\
    """)

    for {width, {times, longs}} <- rows do
      sorted = Enum.sort(times)
      p99 = Enum.at(sorted, min(length(sorted) - 1, trunc(length(sorted) * 0.99)))

      IO.puts(
        "| #{width} | #{length(sorted)} | #{median(sorted)} | #{p99} | #{List.last(sorted)} | " <>
          "#{length(longs)} (#{Enum.max(longs, fn -> "–" end)}) |"
      )
    end
  end

  defp run_case(width, events, opts) do
    {worker, id} = emitting_worker(width, events)
    counter = :counters.new(2, [])
    handler = "bench-wide-#{id}"
    :ok = :telemetry.attach(handler, @event, &__MODULE__.handle_event/4, {counter, id})

    try do
      before = snapshot()
      :ok = GrpcStream.register_worker(id, worker.endpoint)
      deadline = System.monotonic_time(:millisecond) + opts[:timeout_s] * 1000
      await(counter, events, id, worker, deadline)
      after_ = snapshot()

      %{
        events: events,
        map_keys: :counters.get(counter, 2),
        wall_ns: after_.t - before.t,
        nif_ns: after_.nif - before.nif,
        sched_ns: after_.schedulers - before.schedulers
      }
    after
      :telemetry.detach(handler)
      GrpcStream.unregister_worker(id)
      PythonWorker.stop(worker)
    end
  end

  # A fresh worker that has emitted `events` events of `width` extra keys, not yet registered.
  defp emitting_worker(width, events) do
    worker =
      PythonWorker.start([
        "--max-buffer",
        "1000000",
        "--max-buffer-bytes",
        "1073741824",
        "--max-event-bytes",
        "1048576"
      ])

    id = "wide-#{width}-#{System.unique_integer([:positive])}"

    PythonWorker.run(worker, %{
      "op" => "emit",
      "event" => "tool.execution.stop",
      "measurements" => %{"duration" => 123_456},
      "metadata" => %{"tool" => "resize", "operation" => "run"},
      "wide" => width,
      "count" => events
    })

    {worker, id}
  end

  def handle_event(_event, _measurements, metadata, {counter, id}) do
    if metadata.worker_id == id do
      :counters.add(counter, 1, 1)
      :counters.put(counter, 2, map_size(metadata))
    end
  end

  defp await(counter, events, id, worker, deadline) do
    cond do
      :counters.get(counter, 1) >= events ->
        :ok

      System.monotonic_time(:millisecond) > deadline ->
        raise "timed out: #{:counters.get(counter, 1)} of #{events} events seen; " <>
                "stream: #{inspect(Streams.stream(id))}; worker: #{PythonWorker.stats_line(worker)}"

      true ->
        Process.sleep(2)
        await(counter, events, id, worker, deadline)
    end
  end

  defp snapshot, do: Map.put(ThreadCpu.beam(), :t, System.monotonic_time(:nanosecond))

  defp format(r) do
    "#{r.map_keys} keys, #{round(rate(r))} ev/s, NIF #{fmt(us(r.nif_ns, r))} µs/ev, " <>
      "schedulers #{fmt(us(r.sched_ns, r))} µs/ev"
  end

  defp print_table(widths, results) do
    rows = Enum.map(widths, fn w -> {w, for({^w, r} <- results, do: r)} end)
    {_, base} = hd(rows)
    base_sched = median(Enum.map(base, &us(&1.sched_ns, &1)))

    IO.puts("""

    | metadata keys delivered | made as | events/s median (min–max) | NIF CPU µs/ev | scheduler CPU µs/ev | scheduler CPU vs narrowest |
    |---|---|---|---|---|---|\
    """)

    for {_w, rs} <- rows do
      keys = hd(rs).map_keys
      rates = Enum.map(rs, &rate/1)
      sched = median(Enum.map(rs, &us(&1.sched_ns, &1)))

      IO.puts(
        "| #{keys} | #{if keys > 32, do: "hash map", else: "flat map"} | " <>
          "#{round(median(rates))} (#{round(Enum.min(rates))}–#{round(Enum.max(rates))}) | " <>
          "#{fmt(median(Enum.map(rs, &us(&1.nif_ns, &1))))} | #{fmt(sched)} | #{fmt(sched / base_sched)} |"
      )
    end
  end

  defp rate(r), do: r.events * 1.0e9 / r.wall_ns
  defp us(ns, r), do: ns / r.events / 1000
end

Bench.WideMetadata.main(System.argv())
