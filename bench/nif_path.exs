# The NIF path alone: the Rust event source (no Python) streams pre-encoded
# `tool.execution.stop` events, one per message or batched, to the NIF, which checks them,
# builds terms and hands them to the Dispatchers; against the bare client (`count_stream`)
# draining the same source in the same run. Scheduler safety is watched throughout.
#
#     bench/run_all [--quick]            # runs this among the others
#     MIX_ENV=test ERL_FLAGS="+sbwt none +sbwtdcpu none +sbwtdio none" \
#       mix run bench/nif_path.exs [--events 1000000] [--streams 1] [--runs 5] [--nif-buffer 1000000]
#                                  [--runtime-threads N] [--min-batch-interval-us N]
#                                  [--variants 1024] [--rate R] [--quick]
#
# (after `cargo build --release --examples -p snakepit_telemetry_core`).
#
# `--streams K` opens K streams on the source at once (each carries `--events`), for both the
# bare client and the NIF. The source cycles through `--variants` events that differ in
# timestamp and duration, metadata alike, as a tool's events are (the NIF builds such an
# event's maps as updates of the previous event's, encode.rs); `--variants 1` sends one
# event over and over, where the maps are reused whole (the runs recorded before that reuse
# measured this case).
#
# `--rate R` paces each stream at R messages per second (events per second on the single
# protocol; R × 512 on the batched one), as a worker emitting at a steady pace: the
# events/s are then the rate, and what the run measures is the CPU per event of the NIF's
# threads and of the schedulers at that rate (`--min-batch-interval-us` compares the NIF's
# pacing of batches to the Dispatchers).
#
# Cases, interleaved per run, for each protocol (single: one event per message and per
# HTTP/2 DATA frame; batched: 512 events per message):
#
#   * bare: `count_stream` opens the stream and counts events (split, not decoded); its
#     own elapsed time from connect to the last event is the result.
#   * NIF, no handler: `register_worker/3`, timed until every event has been handed to the
#     Elixir side (the stream's `emitted` + `dropped` reach the total) and the Dispatchers'
#     mailboxes are empty; `:telemetry.execute/3` runs with nothing attached.
#   * NIF, 1 handler: the same with one handler (a `:counters` increment) attached.
#
# CPU per event: the NIF runtime's threads ("client") and the normal schedulers ("BEAM"),
# from /proc/self/task/*/schedstat; for bare, count_stream's own threads.
#
# Scheduler safety: `:erlang.system_monitor` `long_schedule` 1 ms is on during every NIF
# run; a report whose `in`/`out` location is a `Snakepit.Telemetry.Native` function is the
# NIF's. Afterwards one extra run per protocol is made with call tracing of every
# `Snakepit.Telemetry.Native` function (`:call` + `return_to`... timestamps), giving the
# longest single NIF call seen; tracing slows calls, so that figure is an upper bound.
#
# The NIF's buffer is raised to `--nif-buffer` (default 1,000,000) so that the single wire,
# where the NIF reads on and drops past its buffer, measures the rate rather than drops;
# drops are reported either way.

defmodule Bench.NifPath do
  @moduledoc false

  alias Snakepit.Telemetry.{Dispatcher, GrpcStream}
  alias Snakepit.Telemetry.Test.{BenchStats, EventSource, Streams, ThreadCpu}

  import BenchStats, only: [fmt: 1, median: 1, spread: 1]

  @event [:snakepit, :python, :tool, :execution, :stop]
  @defaults [
    events: 1_000_000,
    streams: 1,
    runs: 5,
    nif_buffer: 1_000_000,
    variants: 1024,
    timeout_s: 120
  ]
  @switches [
    events: :integer,
    streams: :integer,
    runs: :integer,
    nif_buffer: :integer,
    runtime_threads: :integer,
    min_batch_interval_us: :integer,
    rate: :integer,
    variants: :integer,
    timeout_s: :integer,
    quick: :boolean
  ]
  # NIFs that run on dirty schedulers (nif.rs): they cannot hold a normal scheduler.
  @dirty [:stream_info, :update_settings, :json_encode_params, :json_decode]
  @count_stream Path.expand("../target/release/examples/count_stream", __DIR__)

  def main(argv) do
    {opts, []} = OptionParser.parse!(argv, strict: @switches)
    opts = Keyword.merge(@defaults, opts)
    opts = if opts[:quick], do: Keyword.merge(opts, events: 50_000, runs: 1), else: opts

    unless File.regular?(@count_stream),
      do:
        raise(
          "#{@count_stream} not found: cargo build --release --examples -p snakepit_telemetry_core"
        )

    app_env =
      [max_buffer_size: opts[:nif_buffer]] ++
        if(t = opts[:runtime_threads], do: [runtime_threads: t], else: []) ++
        if(i = opts[:min_batch_interval_us], do: [min_batch_interval_us: i], else: [])

    Streams.restart_app(app_env)

    sources = %{
      single:
        EventSource.start(
          events: opts[:events],
          protocol: :single,
          variants: opts[:variants],
          rate: opts[:rate] || 0
        ),
      batched:
        EventSource.start(
          events: opts[:events],
          protocol: :batched,
          batch: 512,
          variants: opts[:variants],
          rate: opts[:rate] || 0
        )
    }

    IO.puts(
      "#{System.schedulers_online()} schedulers; #{opts[:events]} events per run, " <>
        "#{opts[:runs]} runs; NIF max_buffer_size #{opts[:nif_buffer]}, runtime_threads " <>
        "#{Application.get_env(:snakepit_telemetry, :runtime_threads, :default)}"
    )

    cases = for p <- [:single, :batched], k <- [:bare, :no_handler, :handler], do: {p, k}
    # Warm-up: code loading, first connections (every stream of a source carries --events).
    for c <- cases, do: run_case(c, sources, opts[:events], opts)

    results =
      for run <- 1..opts[:runs], c <- cases do
        result = run_case(c, sources, opts[:events], opts)
        IO.puts("run #{run} #{label(c)}: #{inspect(result)}")
        {c, result}
      end

    longest = for p <- [:single, :batched], into: %{}, do: {p, longest_nif_call(p, sources, opts)}
    print(cases, results, longest, opts)
    Enum.each(Map.values(sources), &EventSource.stop/1)
  end

  defp run_case({protocol, :bare}, sources, events, opts) do
    args = ["--count", "#{events}", "--timeout-ms", "#{opts[:timeout_s] * 1000}"]
    args = args ++ if(protocol == :batched, do: ["--batched"], else: [])

    endpoints = List.duplicate(sources[protocol].endpoint, opts[:streams])

    case System.cmd(@count_stream, args ++ endpoints, stderr_to_stdout: true) do
      {"count_stream " <> _ = line, 0} ->
        fields = BenchStats.count_stream_fields(line)
        %{events: fields["events"], wall_ns: fields["elapsed_ns"], client_ns: fields["cpu_ns"]}

      {output, status} ->
        {:failed, "count_stream exit #{status}: #{String.trim(output)}"}
    end
  end

  defp run_case({protocol, kind}, sources, events, opts) do
    handler = {__MODULE__, make_ref()}
    counter = :counters.new(1, [:write_concurrency])

    if kind == :handler,
      do: :ok = :telemetry.attach(handler, @event, &__MODULE__.count/4, counter)

    ids = for _ <- 1..opts[:streams], do: "nif-path-#{System.unique_integer([:positive])}"
    total = events * opts[:streams]
    :erlang.system_monitor(self(), [{:long_schedule, 1}])
    cpu_before = ThreadCpu.beam()
    started = System.monotonic_time()

    try do
      for id <- ids, do: :ok = GrpcStream.register_worker(id, sources[protocol].endpoint)
      deadline = System.monotonic_time(:millisecond) + opts[:timeout_s] * 1000
      {emitted, dropped} = await_handed_over(ids, total, deadline)
      wall_ns = System.convert_time_unit(System.monotonic_time() - started, :native, :nanosecond)
      cpu = ThreadCpu.beam()
      :erlang.system_monitor(:undefined)
      longs = BenchStats.long_schedules()

      if kind == :handler and :counters.get(counter, 1) != emitted,
        do: raise("handler saw #{:counters.get(counter, 1)} of #{emitted}")

      %{
        events: total,
        wall_ns: wall_ns,
        client_ns: cpu.nif - cpu_before.nif,
        beam_ns: cpu.schedulers - cpu_before.schedulers,
        dropped: dropped,
        protocol: Streams.stream(hd(ids)).protocol,
        long_schedules: length(longs),
        nif_long_schedules: Enum.count(longs, &nif_location?/1),
        long_schedule_sample:
          longs |> Enum.map(&{&1[:timeout], &1[:in], &1[:out]}) |> Enum.take(2)
      }
    after
      :erlang.system_monitor(:undefined)
      :telemetry.detach(handler)
      Enum.each(ids, &GrpcStream.unregister_worker/1)
    end
  end

  @doc false
  def count(_event, _measurements, _metadata, counter), do: :counters.add(counter, 1, 1)

  # Polls every 2 ms until all events are emitted or dropped and no Dispatcher has work left.
  defp await_handed_over(ids, events, deadline) do
    infos = Enum.filter(GrpcStream.list_streams(), &(&1.worker_id in ids))
    emitted = Enum.sum(Enum.map(infos, & &1.emitted))
    dropped = Enum.sum(for i <- infos, {_, n} <- i.dropped, do: n)

    idle? =
      Enum.all?(
        Dispatcher.pids(),
        &(Process.info(&1, :message_queue_len) == {:message_queue_len, 0})
      )

    cond do
      emitted + dropped == events and idle? ->
        {emitted, dropped}

      System.monotonic_time(:millisecond) > deadline ->
        raise "timeout: #{emitted} emitted, #{dropped} dropped of #{events}: #{inspect(infos)}"

      true ->
        Process.sleep(2)
        await_handed_over(ids, events, deadline)
    end
  end

  defp nif_location?(info) do
    Enum.any?([info[:in], info[:out]], &match?({Snakepit.Telemetry.Native, _, _}, &1))
  end

  # One run with every Native function call traced (timestamps on call and return): the
  # longest call of each function, in ns. An upper bound: tracing adds to every call.
  defp longest_nif_call(protocol, sources, opts) do
    tracer = spawn(fn -> trace_loop(%{}, %{}) end)

    :erlang.trace_pattern({Snakepit.Telemetry.Native, :_, :_}, [{:_, [], [{:return_trace}]}], [
      :local
    ])

    :erlang.trace(:all, true, [:call, :monotonic_timestamp, {:tracer, tracer}])

    try do
      run_case({protocol, :handler}, sources, opts[:events], opts)
    after
      :erlang.trace(:all, false, [:call])
      :erlang.trace_pattern({Snakepit.Telemetry.Native, :_, :_}, false, [:local])
    end

    send(tracer, {:result, self()})

    receive do
      {:longest, by_function} -> by_function
    after
      10_000 -> %{}
    end
  end

  defp trace_loop(open, longest) do
    receive do
      {:trace_ts, pid, :call, {m, f, args}, ts} ->
        trace_loop(Map.put(open, pid, {{m, f, length(args)}, ts}), longest)

      {:trace_ts, pid, :return_from, mfa, _result, ts} ->
        case Map.pop(open, pid) do
          {{^mfa, called}, open} ->
            ns = System.convert_time_unit(ts - called, :native, :nanosecond)
            trace_loop(open, Map.update(longest, mfa, ns, &max(&1, ns)))

          {_, open} ->
            trace_loop(open, longest)
        end

      {:result, pid} ->
        send(pid, {:longest, longest})
    end
  end

  defp label({protocol, :bare}), do: "#{protocol}: bare client"
  defp label({protocol, :no_handler}), do: "#{protocol}: NIF → Elixir, no handler"
  defp label({protocol, :handler}), do: "#{protocol}: NIF → Elixir, 1 handler"

  defp rate(r), do: r.events * 1.0e9 / r.wall_ns
  defp per_event_us(ns, r), do: fmt(ns / r.events / 1000)

  defp print(cases, results, longest, opts) do
    rows =
      for {protocol, kind} = c <- cases do
        rs = for {^c, %{} = r} <- results, do: r
        failed = Enum.count(results, &match?({^c, {:failed, _}}, &1))
        bare = for {{^protocol, :bare}, %{} = r} <- results, do: rate(r)
        label = label(c) <> if(failed > 0, do: " (#{failed} failed)", else: "")

        cond do
          rs == [] ->
            [label, "all runs failed", "", "", "", "", ""]

          kind == :bare ->
            [
              label,
              spread(Enum.map(rs, &rate/1)),
              "1 (baseline)",
              per_event_us(median(Enum.map(rs, & &1.client_ns)), hd(rs)),
              "–",
              "–",
              "–"
            ]

          true ->
            med = fn f -> median(Enum.map(rs, f)) end

            [
              label,
              spread(Enum.map(rs, &rate/1)),
              if(bare == [], do: "no baseline", else: fmt(med.(&rate/1) / median(bare))),
              per_event_us(med.(& &1.client_ns), hd(rs)),
              per_event_us(med.(& &1.beam_ns), hd(rs)),
              "#{round(med.(& &1.dropped))} (#{Enum.max(Enum.map(rs, & &1.dropped))})",
              "#{Enum.sum(Enum.map(rs, & &1.long_schedules))} / #{Enum.sum(Enum.map(rs, & &1.nif_long_schedules))}"
            ]
        end
      end

    BenchStats.print_table(
      [
        "case (#{opts[:streams]} × #{opts[:events]} events/run)",
        "events/s median (min–max)",
        "/ bare",
        "client CPU µs/ev",
        "BEAM scheduler CPU µs/ev",
        "dropped median (max)",
        "long_schedule ≥1 ms: all / NIF's"
      ],
      rows
    )

    samples = for {_, %{long_schedule_sample: s}} <- results, x <- s, do: x
    IO.puts("\nlong_schedule reports ({ms, in, out}), up to 6: #{inspect(Enum.take(samples, 6))}")
    IO.puts("\nLongest NIF call per function (one traced run per protocol; an upper bound):")

    for {protocol, by_function} <- longest, {{_, f, a}, ns} <- Enum.sort(by_function) do
      IO.puts(
        "  #{protocol}: Native.#{f}/#{a} #{fmt(ns / 1000)} µs#{if f in @dirty, do: " (dirty scheduler)", else: ""}"
      )
    end
  end
end

Bench.NifPath.main(System.argv())
