# Stream throughput: how fast events get from a Python worker's gRPC stream to a
# `:telemetry` handler, against a bare Rust client draining the same kind of worker.
#
#     bench/run_stream_throughput.sh [--events 100000] [--runs 5] [--workers 4]
#                                    [--nif-buffer N] [--timeout-s 120]
#                                    [--spin READER_NS,SINK_NS]
#
# which builds `count_stream` and then runs, from the repository root,
#
#     MIX_ENV=test ERL_FLAGS="+sbwt none +sbwtdcpu none +sbwtdio none" \
#       mix run bench/stream_throughput.exs [options]
#
# MIX_ENV=test: the worker driver `Snakepit.Telemetry.Test.PythonWorker` (test/support) is
# compiled only there, and config/test.exs starts `GrpcStream`. `+sbwt none` etc.: idle
# schedulers sleep instead of spinning, so the BEAM's CPU time counts work only.
# `--nif-buffer N` restarts the application with `max_buffer_size: N` (default: the config's).
#
# Every run starts fresh workers (`test/support/python/scripted_worker.py --max-buffer-bytes 1 GiB --max-buffer
# 1000000 --min-batch-interval-ms 0`, on 127.0.0.1: no pacing, which would only hold the
# last, partial batch of a drain back by up to the interval, the same time for both cases,
# and so flatter the ratio) and has each emit its share of `--events` `tool.execution.stop`
# events (`duration`, metadata `tool` and `operation`) *before* anything connects, so a run
# drains full buffers as fast as gRPC allows. Then one of:
#
#   * bare: `count_stream` (native/snakepit_telemetry_core/examples) opens
#     StreamTelemetryBatched (as the NIF does with these workers) on every worker and counts
#     the events; its own elapsed time is the result.
#   * full: `GrpcStream.register_worker/3` for every worker; timed from just before the
#     first registration until a `:telemetry` handler (a `:counters` increment) has seen
#     every event, or, if the NIF dropped some, until seen + dropped reaches the total.
#   * bare client spinning (only with `--spin R,S`, after each full case): `count_stream`
#     made to cost more per event, its reading thread spinning R ns of CPU per event and a
#     sink thread it wakes once per message S ns (`count_stream --spin-reader-ns R
#     --spin-sink-ns S`). With R and S set to the full path's CPU per event above the bare
#     client's, it shows what any consumer of that cost gets from the same workers.
#
# Cases run interleaved (bare 1, full 1, bare W, full W, and again) after one small warm-up
# round; the table shows medians over `--runs`. CPU figures are divided by the run's events:
#
#   * python: utime+stime of the worker processes (/proc/PID/stat);
#   * client: `count_stream`'s threads, or the NIF runtime's threads ("snakepit-teleme",
#     /proc/self/task/*/schedstat): receiving gRPC, checking each event, building terms,
#     sending batches;
#   * schedulers: the BEAM's normal scheduler threads (same source): the Dispatcher taking
#     batches, `:telemetry.execute/3`, the handler, acks, and waking up for all that;
#   * busy: all schedulers' busy time (`:scheduler_wall_time`) over wall time, in
#     schedulers (each Dispatcher is one process: at most 1.0 each), and, in brackets, the
#     Dispatchers' share of all reductions in the run (how much of that busy time is theirs).
#   * cores busy: the whole machine's busy CPU time (/proc/stat) over the run's wall time, in
#     cores (of `logical_processors`), and in brackets what the hypervisor stole;
#   * all cores: the rate the run's CPU per event (python + client + schedulers) would give
#     if every core did nothing else, and its ratio to the bare client's median rate. For
#     the full path this is its ceiling on this machine: when it is under 0.95 of the bare
#     client, no scheduling of the same work can reach 95 % of it; when it is over, the
#     gap is cores left idle.
#
# A run whose stream fails (`count_stream` exits non-zero, or a NIF stream closes early) is
# printed as FAILED and left out of the medians. Every run is bounded by `--timeout-s` (the
# script raises then), so the script always stops by itself.

defmodule Bench.StreamThroughput do
  @moduledoc false

  alias Snakepit.Telemetry.{Dispatcher, GrpcStream}
  alias Snakepit.Telemetry.Test.{BenchStats, OsStats, PythonWorker, ThreadCpu}

  import BenchStats, only: [fmt: 1, median: 1]

  @event [:snakepit, :python, :tool, :execution, :stop]
  @emit %{
    "op" => "emit",
    "event" => "tool.execution.stop",
    "measurements" => %{"duration" => 123_456},
    "metadata" => %{"tool" => "resize", "operation" => "run"}
  }
  @defaults [events: 100_000, runs: 5, workers: 4, timeout_s: 120, warmup_events: 5_000]
  @switches [
    events: :integer,
    runs: :integer,
    workers: :integer,
    timeout_s: :integer,
    warmup_events: :integer,
    nif_buffer: :integer,
    count_stream: :string,
    spin: :string
  ]

  def main(argv) do
    {opts, []} = OptionParser.parse!(argv, strict: @switches)
    opts = Keyword.merge(@defaults, opts)
    opts = Keyword.put(opts, :count_stream, BenchStats.count_stream!(opts[:count_stream]))

    if buffer = opts[:nif_buffer],
      do: Snakepit.Telemetry.Test.Streams.restart_app(max_buffer_size: buffer)

    :erlang.system_flag(:scheduler_wall_time, true)
    clk_tck = OsStats.clock_ticks_per_second()
    opts = Keyword.put(opts, :spin, BenchStats.parse_spin(opts[:spin]))

    cases =
      for w <- [1, opts[:workers]],
          kind <- [:bare, :full, :bare_spin],
          kind != :bare_spin or opts[:spin] != nil,
          do: {kind, w}

    IO.puts(
      "#{System.schedulers_online()} schedulers, #{:erlang.system_info(:logical_processors)} " <>
        "logical CPUs; #{opts[:events]} events per run, #{opts[:runs]} runs; NIF " <>
        "max_buffer_size #{Application.get_env(:snakepit_telemetry, :max_buffer_size, 1024)}"
    )

    for c <- [{:bare, 1}, {:full, 1}], do: run_case(c, opts[:warmup_events], opts, clk_tck)

    results =
      for run <- 1..opts[:runs], c <- cases do
        result = run_case(c, opts[:events], opts, clk_tck)
        IO.puts("run #{run} #{label(c)}: #{format_result(result)}")
        {c, result}
      end

    print_table(cases, results)
  end

  ## One run of one case

  defp run_case({kind, workers}, events, opts, clk_tck) do
    per_worker = div(events, workers)
    pool = for i <- 1..workers, do: start_preloaded(i, per_worker)

    result =
      try do
        measure(kind, pool, per_worker * workers, opts)
      after
        Enum.each(pool, &stop_worker/1)
      end

    case result do
      {:ok, r} -> Map.put(r, :python_cpu_ns, div(r.python_ticks * 1_000_000_000, clk_tck))
      {:failed, _reason} = failed -> failed
    end
  end

  defp start_preloaded(i, events) do
    worker =
      PythonWorker.start([
        "--max-buffer",
        "1000000",
        "--max-buffer-bytes",
        "1073741824",
        "--min-batch-interval-ms",
        "0"
      ])

    PythonWorker.run(worker, Map.put(@emit, "count", events))
    stats = PythonWorker.stats(worker)

    unless stats["buffered"] == events and stats["dropped_total"] == 0 do
      raise "worker did not buffer #{events} events: #{inspect(stats)}"
    end

    %{
      id: "bench_#{System.unique_integer([:positive])}_#{i}",
      worker: worker,
      os_pid: worker.os_pid
    }
  end

  defp measure(:bare_spin, pool, events, opts),
    do: measure_bare(BenchStats.spin_args(opts[:spin]), pool, events, opts)

  defp measure(:bare, pool, events, opts), do: measure_bare([], pool, events, opts)

  defp measure(:full, pool, events, opts) do
    measure_full(pool, events, opts)
  end

  defp measure_bare(extra_args, pool, events, opts) do
    # The same RPC the NIF opens with these workers (StreamTelemetryBatched).
    args =
      ["--count", Integer.to_string(div(events, length(pool)))] ++
        ["--timeout-ms", Integer.to_string(opts[:timeout_s] * 1000)] ++
        ["--batched"] ++
        extra_args ++
        Enum.map(pool, & &1.worker.endpoint)

    python_before = python_ticks(pool)
    machine_before = OsStats.machine_ticks()

    case System.cmd(opts[:count_stream], args, stderr_to_stdout: true) do
      {"count_stream " <> _ = line, 0} ->
        fields = BenchStats.count_stream_fields(line)

        {:ok,
         %{
           events: events,
           wall_ns: fields["elapsed_ns"],
           client_cpu_ns: fields["cpu_ns"],
           python_ticks: python_ticks(pool) - python_before,
           machine: OsStats.machine_diff(machine_before, OsStats.machine_ticks())
         }}

      # A stream that fails is a result too (the run is left out of the medians).
      {output, status} ->
        {:failed, "count_stream exit #{status}: #{String.trim(output)}"}
    end
  end

  defp measure_full(pool, events, opts) do
    counter = :counters.new(1, [])
    handler_id = {__MODULE__, make_ref()}
    config = {counter, events, self()}
    :ok = :telemetry.attach(handler_id, @event, &__MODULE__.handle_event/4, config)

    try do
      before = snapshot(pool)

      for w <- pool do
        metadata = [pool_name: :bench, python_pid: w.os_pid]
        :ok = GrpcStream.register_worker(w.id, w.worker.endpoint, metadata)
      end

      deadline = System.monotonic_time(:millisecond) + opts[:timeout_s] * 1000

      with {:ok, dropped} <- await_all(pool, counter, events, deadline) do
        {:ok, Map.put(diff(before, snapshot(pool), events), :nif_dropped, dropped)}
      end
    after
      :telemetry.detach(handler_id)
      Enum.each(pool, &GrpcStream.unregister_worker(&1.id))
    end
  end

  @doc false
  # The counting handler; runs in the Dispatchers.
  def handle_event(_event, _measurements, _metadata, {counter, target, pid}) do
    :counters.add(counter, 1, 1)
    if :counters.get(counter, 1) == target, do: send(pid, :all_seen)
  end

  # Returns `{:ok, dropped}` once the handler has seen every event (exactly, by message), or
  # once every event is either seen or counted as dropped by the NIF (checked every 20 ms);
  # `{:failed, reason}` if a stream closed before that.
  defp await_all(pool, counter, events, deadline) do
    receive do
      :all_seen -> {:ok, 0}
    after
      20 ->
        streams = our_streams(pool)
        dropped = for s <- streams, {_reason, n} <- s.dropped, reduce: 0, do: (sum -> sum + n)
        closed = for %{status: {:closed, reason}} = s <- streams, do: {s.worker_id, reason}
        seen = :counters.get(counter, 1)

        cond do
          dropped > 0 and seen + dropped == events ->
            {:ok, dropped}

          closed != [] ->
            {:failed, "stream closed after #{seen} events: #{inspect(closed)}"}

          System.monotonic_time(:millisecond) > deadline ->
            raise "timeout: #{seen} of #{events} events seen, #{dropped} dropped; " <>
                    inspect(GrpcStream.list_streams())

          true ->
            await_all(pool, counter, events, deadline)
        end
    end
  end

  defp our_streams(pool) do
    ids = MapSet.new(pool, & &1.id)
    Enum.filter(GrpcStream.list_streams(), &(&1.worker_id in ids))
  end

  defp stop_worker(%{worker: worker, os_pid: os_pid}) do
    PythonWorker.stop(worker)
    OsStats.await_exit(os_pid)
  end

  ## Measurements

  defp snapshot(pool) do
    dispatcher =
      Enum.sum(
        for pid <- Dispatcher.pids(), is_pid(pid) do
          {:reductions, n} = Process.info(pid, :reductions)
          n
        end
      )

    {total, _} = :erlang.statistics(:reductions)

    %{
      t: System.monotonic_time(:nanosecond),
      threads: ThreadCpu.beam(),
      sched: Enum.sort(:erlang.statistics(:scheduler_wall_time)),
      reductions: total,
      dispatcher_reductions: dispatcher,
      python_ticks: python_ticks(pool),
      machine: OsStats.machine_ticks()
    }
  end

  defp diff(a, b, events) do
    busy =
      Enum.zip_with(a.sched, b.sched, fn {id, active0, total0}, {id, active1, total1} ->
        (active1 - active0) / max(total1 - total0, 1)
      end)

    %{
      events: events,
      wall_ns: b.t - a.t,
      client_cpu_ns: b.threads.nif - a.threads.nif,
      scheduler_cpu_ns: b.threads.schedulers - a.threads.schedulers,
      scheduler_busy: Enum.sum(busy),
      dispatcher_share:
        (b.dispatcher_reductions - a.dispatcher_reductions) / max(b.reductions - a.reductions, 1),
      python_ticks: b.python_ticks - a.python_ticks,
      machine: OsStats.machine_diff(a.machine, b.machine)
    }
  end

  # The run's CPU per event in all (worker, client or NIF, schedulers), in ns, and the rate
  # that CPU would allow if every core did nothing else: what the run could reach on this
  # machine were no core ever idle.
  defp cpu_ns_per_event(r),
    do: (r.python_cpu_ns + r.client_cpu_ns + Map.get(r, :scheduler_cpu_ns, 0)) / r.events

  defp all_cores_rate(r),
    do: :erlang.system_info(:logical_processors) * 1.0e9 / cpu_ns_per_event(r)

  # utime + stime of the worker processes in clock ticks (includes exited threads).
  defp python_ticks(pool), do: OsStats.cpu_ticks(for %{os_pid: pid} <- pool, do: pid)

  ## Parsing and output

  defp rate(%{events: n, wall_ns: ns}), do: n * 1.0e9 / ns
  defp per_event_us(ns, %{events: n}), do: ns / n / 1000

  defp label({:bare, 1}), do: "bare client, 1 worker"
  defp label({:full, 1}), do: "full path, 1 worker"
  defp label({:bare, w}), do: "bare client, #{w} workers"
  defp label({:bare_spin, 1}), do: "bare client spinning, 1 worker"
  defp label({:bare_spin, w}), do: "bare client spinning, #{w} workers"
  defp label({:full, w}), do: "full path, #{w} workers"

  defp format_result({:failed, reason}), do: "FAILED: #{reason}"

  defp format_result(%{scheduler_cpu_ns: _} = r) do
    format_common(r) <>
      ", schedulers #{fmt(per_event_us(r.scheduler_cpu_ns, r))} µs/ev, busy " <>
      "#{fmt(r.scheduler_busy)} (Dispatcher #{round(r.dispatcher_share * 100)}% of red.), " <>
      "NIF dropped #{r.nif_dropped}"
  end

  defp format_result(r), do: format_common(r)

  defp format_common(r) do
    "#{round(rate(r))} events/s, python #{fmt(per_event_us(r.python_cpu_ns, r))} µs/ev, " <>
      "client #{fmt(per_event_us(r.client_cpu_ns, r))} µs/ev, cores busy " <>
      "#{fmt(r.machine.cores_busy)} (stolen #{fmt(r.machine.cores_stolen)}), all cores " <>
      "#{round(all_cores_rate(r))} events/s"
  end

  defp print_table(cases, results) do
    IO.puts("""

    | case | events/s median (min–max) | full / bare | Python CPU µs/ev | client CPU µs/ev | scheduler CPU µs/ev | schedulers busy (Dispatcher % of red.) | NIF drops median (max) | cores busy (stolen) | all cores: events/s (/ bare) |
    |---|---|---|---|---|---|---|---|---|---|\
    """)

    for {_kind, workers} = c <- cases do
      rs = for {^c, %{} = r} <- results, do: r
      failed = Enum.count(results, &match?({^c, {:failed, _}}, &1))
      label = label(c) <> if(failed > 0, do: " (#{failed} runs failed)", else: "")
      bare = for {{:bare, ^workers}, %{} = r} <- results, do: rate(r)
      cells = if rs == [], do: ["all runs failed"], else: row(c, rs, bare)
      IO.puts("| " <> Enum.join([label | cells], " | ") <> " |")
    end
  end

  defp row({kind, _workers}, rs, bare_rates) do
    rates = Enum.map(rs, &rate/1)
    {lo, hi} = Enum.min_max(rates)
    med = fn f -> rs |> Enum.map(f) |> median() end

    common = [
      "#{round(median(rates))} (#{round(lo)}–#{round(hi)})",
      if(kind == :bare, do: "1 (baseline)", else: ratio(median(rates), bare_rates)),
      fmt(med.(&per_event_us(&1.python_cpu_ns, &1))),
      fmt(med.(&per_event_us(&1.client_cpu_ns, &1)))
    ]

    all_cores = med.(&all_cores_rate/1)

    machine = [
      "#{fmt(med.(& &1.machine.cores_busy))} (#{fmt(med.(& &1.machine.cores_stolen))})",
      "#{round(all_cores)} (#{ratio(all_cores, bare_rates)})"
    ]

    case kind do
      bare when bare in [:bare, :bare_spin] ->
        common ++ ["–", "–", "–"] ++ machine

      :full ->
        drops = Enum.map(rs, & &1.nif_dropped)

        common ++
          [
            fmt(med.(&per_event_us(&1.scheduler_cpu_ns, &1))),
            "#{fmt(med.(& &1.scheduler_busy))} (#{round(med.(& &1.dispatcher_share) * 100)}%)",
            "#{round(median(drops))} (#{Enum.max(drops)})"
          ] ++ machine
    end
  end

  defp ratio(_rate, []), do: "no baseline"
  defp ratio(rate, bare_rates), do: fmt(rate / median(bare_rates))
end

Bench.StreamThroughput.main(System.argv())
