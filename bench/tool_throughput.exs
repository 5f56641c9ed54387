# Tool throughput: a real Python worker whose tool emits as it works, streamed through the
# NIF to one trivial `:telemetry` handler, against a bare Rust client that only counts the
# same worker's stream; both protocols, two kinds of tool.
#
#     cargo build --release --example count_stream -p snakepit_telemetry_core
#     MIX_ENV=test ERL_FLAGS="+sbwt none +sbwtdcpu none +sbwtdio none" \
#       mix run bench/tool_throughput.exs [--seconds 5] [--runs 3] [--block-bytes 16384]
#         [--kinds busy,native] [--protocols batched,single] [--timeout-s 60]
#         [--min-batch-interval-us N] [--worker snakepit_style] [--aa]
#         [--spin READER_NS,SINK_NS]
#
# from the repository root (`bench/run_all` does both). MIX_ENV=test: the worker driver
# `Snakepit.Telemetry.Test.PythonWorker` (test/support) is compiled only there, and
# config/test.exs starts `GrpcStream`. `+sbwt none` etc.: idle schedulers sleep instead of
# spinning, so the BEAM's CPU time counts work only.
#
# Every run starts a fresh worker (`test/support/python/scripted_worker.py` with the
# worker's default bounds; `--no-batched` for the single protocol, so that the NIF falls
# back to `StreamTelemetry` as it does with Snakepit's workers), connects the consumer,
# and only then has the worker run its tool (the `tool` command) for `--seconds`:
#
#   * busy: a pure-Python loop calling `telemetry.emit` flat out. It holds the GIL but for
#     the interpreter's switches, so the worker's sender has to win the GIL back: how much
#     gets out is the sender's doing; the rest overflows the worker's bounded queue and is
#     counted (and reported) there.
#   * native: a tool that does its work in native code and emits one event per step:
#     SHA-256 over `--block-bytes` (`hashlib` releases the GIL while it hashes), then
#     `telemetry.emit`. Its rate is the tool's own; the figure that matters is how much the
#     consumer's CPU slows the tool on a machine it shares.
#
# Then the worker closes its stream gracefully (`close`: the sender drains its queue,
# sends the last drop report and ends the call). Consumers:
#
#   * bare: `count_stream --until-end` (native/snakepit_telemetry_core/examples) counts the
#     events of the stream until the worker ends the call;
#   * full: `GrpcStream.register_worker/3`; a `:telemetry` handler (a `:counters`
#     increment) attached to the tool's event.
#
# Delivered events are the tool's events: `count_stream` counts every event of the call,
# and the worker's drop reports among them (`sent_reports` in its stats) are taken off.
# (After the close, the NIF reconnects, and each new call on the closed stream gets one
# more report, which is why the full path does not count reports.)
#
# Per run, timed by this script from just before the `tool` command to the last event: for
# bare, `count_stream`'s result line arriving; for full, the last change of the handler's
# count (read every millisecond, once the tool has ended, by a poller process) once it has reached every tool event
# the worker sent. Reported:
#
#   * tool/s: the tool's iterations (= `emit` calls) per second of its own run;
#   * delivered/s: tool events the consumer counted per second, and full / bare: the ratio of
#     the medians, then the median of the run-by-run ratios (each run's full path against
#     that run's bare client; the two differ when the host's speed drifts between runs);
#   * sent while the tool ran: the tool events the worker had sent when the tool ended, per
#     second of the tool's run (the rest of the delivered events is what was still queued
#     then: up to the worker's bound of 8,192, which on the one-event-per-message wire is
#     most of them with the busy tool);
#   * source drops: what the worker's queue dropped (every run checks that the consumer
#     counted exactly the tool events the worker sent, less what the NIF counted as
#     dropped, and that emitted = enqueued + source drops);
#   * worker µs/ev: the worker process's CPU time per delivered event, whole and without
#     the tool thread (the cost of getting the events out);
#   * consumer µs/ev: `count_stream`'s CPU, or the NIF's threads + the BEAM's schedulers;
#   * cores busy: the whole machine's busy time over the run's wall time (/proc/stat).
#
# `--worker snakepit_style` runs `test/support/python/snakepit_style_worker.py` instead: a
# `grpc.aio` server wired as Snakepit's `grpc_server.py` is, with this package's
# `TelemetryStream` (Snakepit's bound, 1,024 events) and the tool on a thread of its own;
# it serves StreamTelemetry only, so only the single protocol runs.
# `--min-batch-interval-us N` restarts the application with that `min_batch_interval_us`
# (default: the config's). `--aa` runs the bare client once more in every run, after the full
# path, and gives its ratio to the first bare client in the same column: an A/A test, the
# spread that the host's noise alone gives a ratio. Cases run interleaved (every case once
# per run). `--spin R,S` runs a third client in every run, after the full path: the bare client
# made to cost more per event (`count_stream --spin-reader-ns R --spin-sink-ns S`: its reading
# thread spins R ns of CPU per event, and a sink thread it wakes once per message spins S ns
# per event, as the NIF's thread and a Dispatcher's scheduler work). With R and S set to the
# full path's measured CPU per event above the bare client's, it tells whether the full
# path's ratio is what any consumer of that cost gets on these cores, or something else of
# the NIF's. A run whose consumer fails is printed as FAILED and left out of the medians.

defmodule Bench.ToolThroughput do
  @moduledoc false

  alias Snakepit.Telemetry.GrpcStream
  alias Snakepit.Telemetry.Test.{BenchStats, OsStats, PythonWorker, ThreadCpu}

  import BenchStats, only: [fmt: 1, median: 1]

  @event [:snakepit, :python, :tool, :execution, :stop]
  @tool %{
    "op" => "tool",
    "event" => "tool.execution.stop",
    "measurements" => %{"duration" => 123_456},
    "metadata" => %{"tool" => "resize", "operation" => "run"}
  }
  @defaults [
    seconds: 5.0,
    runs: 3,
    block_bytes: 16_384,
    kinds: "busy,native",
    protocols: "batched,single",
    timeout_s: 60
  ]
  @switches [
    seconds: :float,
    runs: :integer,
    block_bytes: :integer,
    kinds: :string,
    protocols: :string,
    timeout_s: :integer,
    min_batch_interval_us: :integer,
    worker: :string,
    count_stream: :string,
    aa: :boolean,
    spin: :string
  ]

  def main(argv) do
    {opts, []} = OptionParser.parse!(argv, strict: @switches)
    opts = Keyword.merge(@defaults, opts)
    opts = Keyword.put(opts, :count_stream, BenchStats.count_stream!(opts[:count_stream]))
    opts = Keyword.put(opts, :spin, BenchStats.parse_spin(opts[:spin]))

    if interval = opts[:min_batch_interval_us],
      do: Snakepit.Telemetry.Test.Streams.restart_app(min_batch_interval_us: interval)

    kinds = parse_list(opts[:kinds], ~w(busy native)a)

    {protocols, opts} =
      case opts[:worker] do
        nil ->
          {parse_list(opts[:protocols], ~w(batched single)a), Keyword.put(opts, :worker, :ours)}

        # Snakepit's gRPC server (grpc.aio) with this package's stream: StreamTelemetry only.
        "snakepit_style" ->
          {[:single], Keyword.put(opts, :worker, :snakepit_style)}

        other ->
          raise ArgumentError, "unknown --worker #{inspect(other)}: expected snakepit_style"
      end

    consumers = consumers(opts)
    cases = for p <- protocols, k <- kinds, c <- consumers, do: {p, k, c}
    clk_tck = OsStats.clock_ticks_per_second()

    IO.puts(
      "#{System.schedulers_online()} schedulers, #{:erlang.system_info(:logical_processors)} " <>
        "logical CPUs; tools run #{opts[:seconds]} s, #{opts[:runs]} runs; native tool " <>
        "hashes #{opts[:block_bytes]} bytes per event; NIF min_batch_interval_us " <>
        "#{Snakepit.Telemetry.Config.load!().min_batch_interval_us}"
    )

    results =
      for run <- 1..opts[:runs], c <- cases do
        result = run_case(c, opts, clk_tck)
        IO.puts("run #{run} #{label(c)}: #{format_result(result)}")
        {c, result}
      end

    print_table(protocols, kinds, consumers, results)
  end

  # `--aa` runs the bare client a second time in each run, after the full path: the ratio of
  # the two bare cases is what the host's noise alone does to a ratio (an A/A test).
  defp consumers(opts) do
    [:bare, :full] ++
      if(opts[:spin], do: [:bare_spin], else: []) ++ if(opts[:aa], do: [:bare_again], else: [])
  end

  defp parse_list(string, allowed) do
    names = string |> String.split(",", trim: true) |> Enum.map(&String.trim/1)

    for name <- names do
      Enum.find(allowed, &(Atom.to_string(&1) == name)) ||
        raise ArgumentError, "unknown #{inspect(name)}: expected one of #{inspect(allowed)}"
    end
  end

  ## One run of one case

  defp run_case({protocol, kind, consumer}, opts, clk_tck) do
    worker =
      case {opts[:worker], protocol} do
        {:snakepit_style, :single} ->
          PythonWorker.start([], [], "python/snakepit_style_worker.py")

        {:ours, :single} ->
          PythonWorker.start(["--no-batched"])

        {:ours, :batched} ->
          PythonWorker.start([])
      end

    tool = Map.merge(@tool, %{"kind" => Atom.to_string(kind), "seconds" => opts[:seconds]})
    tool = Map.put(tool, "block_bytes", opts[:block_bytes])

    try do
      case measure(consumer, protocol, worker, tool, opts) do
        {:ok, r} ->
          stats = PythonWorker.stats(worker)
          {:ok, finish(r, stats, clk_tck)}

        {:failed, _} = failed ->
          failed
      end
    after
      PythonWorker.stop(worker)
      OsStats.await_exit(worker.os_pid)
    end
  end

  defp measure(:bare_again, protocol, worker, tool, opts),
    do: measure(:bare, protocol, worker, tool, opts)

  defp measure(:bare_spin, protocol, worker, tool, opts) do
    {reader, sink} = opts[:spin]

    spin = [
      "--spin-reader-ns",
      Integer.to_string(reader),
      "--spin-sink-ns",
      Integer.to_string(sink)
    ]

    measure_bare(spin, protocol, worker, tool, opts)
  end

  defp measure(:bare, protocol, worker, tool, opts),
    do: measure_bare([], protocol, worker, tool, opts)

  defp measure(:full, _protocol, worker, tool, opts) do
    counter = :counters.new(1, [])
    handler_id = {__MODULE__, make_ref()}
    :ok = :telemetry.attach(handler_id, @event, &__MODULE__.handle_event/4, counter)
    id = "tool_bench_#{System.unique_integer([:positive])}"
    poller = start_poller(counter)

    try do
      :ok = GrpcStream.register_worker(id, worker.endpoint, pool_name: :bench)

      with :ok <- await_connected(id, opts) do
        before = snapshot(worker)
        during = run_tool(worker, tool)
        send(poller.pid, :start)
        PythonWorker.run(worker, %{"op" => "close"})
        stats = await_drained(worker, System.monotonic_time(:millisecond) + 30_000)
        sent = stats["sent"] - stats["sent_reports"]
        deadline = System.monotonic_time(:millisecond) + opts[:timeout_s] * 1000

        with {:ok, seen, nif_dropped, last_ns} <- await_all(id, poller, sent, deadline) do
          finished = snapshot(worker)

          {:ok,
           %{
             consumer: :full,
             sent_during_tool: during,
             delivered: seen,
             nif_dropped: nif_dropped,
             wall_ns: last_ns - before.t,
             consumer_cpu_ns:
               finished.threads.nif - before.threads.nif +
                 (finished.threads.schedulers - before.threads.schedulers),
             nif_cpu_ns: finished.threads.nif - before.threads.nif,
             worker_ticks: finished.worker_ticks - before.worker_ticks,
             machine: OsStats.machine_diff(before.machine, finished.machine)
           }}
        end
      end
    after
      :telemetry.detach(handler_id)
      GrpcStream.unregister_worker(id)
      Process.unlink(poller.pid)
      Process.exit(poller.pid, :kill)
    end
  end

  defp measure_bare(extra_args, protocol, worker, tool, opts) do
    args = ["--until-end", "--timeout-ms", Integer.to_string(opts[:timeout_s] * 1000)]
    args = args ++ if(protocol == :batched, do: ["--batched"], else: []) ++ extra_args

    port =
      Port.open({:spawn_executable, opts[:count_stream]}, [
        :binary,
        :exit_status,
        {:line, 4096},
        args: args ++ [worker.endpoint]
      ])

    with :ok <- await_count_stream(port, "count_stream open", opts) do
      before = snapshot(worker)
      during = run_tool(worker, tool)
      PythonWorker.run(worker, %{"op" => "close"})

      with {:ok, line} <- await_count_stream(port, "count_stream streams=", opts) do
        finished = snapshot(worker)
        fields = BenchStats.count_stream_fields(line)

        {:ok,
         %{
           consumer: :bare,
           sent_during_tool: during,
           events: fields["events"],
           nif_dropped: 0,
           wall_ns: finished.t - before.t,
           consumer_cpu_ns: fields["cpu_ns"],
           worker_ticks: finished.worker_ticks - before.worker_ticks,
           machine: OsStats.machine_diff(before.machine, finished.machine)
         }}
      end
    end
  end

  # Runs the tool; returns the tool events the worker had sent when it ended (before the
  # close, which drains what is still queued).
  defp run_tool(worker, tool) do
    PythonWorker.run(worker, tool)
    stats = PythonWorker.stats(worker)
    stats["sent"] - stats["sent_reports"]
  end

  # The worker's stats once its buffer is empty (everything handed to the call).
  defp await_drained(worker, deadline) do
    stats = PythonWorker.stats(worker)

    cond do
      stats["buffered"] == 0 ->
        stats

      System.monotonic_time(:millisecond) > deadline ->
        raise "the worker did not drain: #{inspect(stats)}"

      true ->
        Process.sleep(2)
        await_drained(worker, deadline)
    end
  end

  @doc false
  # The trivial handler; runs in the Dispatchers.
  def handle_event(_event, _measurements, _metadata, counter), do: :counters.add(counter, 1, 1)

  # A process that, once sent `:start` (when the tool has ended), reads the handler's count
  # every millisecond and keeps the monotonic time (ns) of its last change in `last`: when the
  # count is complete, that is when the last event reached the handler (to within the poll
  # period; the start time if none came after the tool). It sleeps while the tool runs, so
  # that the bench's own wake-ups do not share the cores with the worker then.
  defp start_poller(counter) do
    last = :atomics.new(1, signed: true)

    pid =
      spawn_link(fn ->
        receive do
          :start -> :ok
        end

        :atomics.put(last, 1, System.monotonic_time(:nanosecond))
        poll(counter, last, :counters.get(counter, 1))
      end)

    %{pid: pid, counter: counter, last: last}
  end

  defp poll(counter, last, previous) do
    Process.sleep(1)
    now = :counters.get(counter, 1)
    if now != previous, do: :atomics.put(last, 1, System.monotonic_time(:nanosecond))
    poll(counter, last, now)
  end

  defp await_connected(id, opts) do
    deadline = System.monotonic_time(:millisecond) + opts[:timeout_s] * 1000

    Stream.repeatedly(fn -> Enum.find(GrpcStream.list_streams(), &(&1.worker_id == id)) end)
    |> Enum.find_value(fn
      %{status: :connected} ->
        :ok

      stream ->
        if System.monotonic_time(:millisecond) > deadline,
          do: {:failed, "stream not connected: #{inspect(stream)}"},
          else: Process.sleep(2) && nil
    end)
  end

  # Waits until the handler has seen every event the worker sent, less what the NIF counted
  # as dropped; returns the count, the NIF's drops and the time of the last event.
  defp await_all(id, poller, sent, deadline) do
    stream = Enum.find(GrpcStream.list_streams(), &(&1.worker_id == id))
    nif_dropped = stream.dropped |> Map.values() |> Enum.sum()
    seen = :counters.get(poller.counter, 1)

    cond do
      seen + nif_dropped == sent ->
        # One more poll period, so that the poller has recorded the last change.
        Process.sleep(3)
        {:ok, seen, nif_dropped, :atomics.get(poller.last, 1)}

      seen + nif_dropped > sent ->
        {:failed, "counted #{seen} + #{nif_dropped} NIF drops, more than the #{sent} sent"}

      System.monotonic_time(:millisecond) > deadline ->
        {:failed, "timeout: #{seen} seen + #{nif_dropped} NIF drops of #{sent} sent"}

      true ->
        Process.sleep(2)
        await_all(id, poller, sent, deadline)
    end
  end

  defp await_count_stream(port, prefix, opts) do
    receive do
      {^port, {:data, {:eol, line}}} ->
        if String.starts_with?(line, prefix),
          do: if(prefix == "count_stream open", do: :ok, else: {:ok, line}),
          else: await_count_stream(port, prefix, opts)

      {^port, {:exit_status, status}} ->
        {:failed, "count_stream exited #{status} before #{inspect(prefix)}"}
    after
      opts[:timeout_s] * 1000 -> {:failed, "no #{inspect(prefix)} from count_stream"}
    end
  end

  ## Measurements

  defp snapshot(worker) do
    %{
      t: System.monotonic_time(:nanosecond),
      threads: ThreadCpu.beam(),
      worker_ticks: OsStats.cpu_ticks([worker.os_pid]),
      machine: OsStats.machine_ticks()
    }
  end

  # Adds the worker's own figures and checks that every event is accounted for.
  defp finish(r, stats, clk_tck) do
    tool = stats["tool"]
    source_dropped = stats["dropped_total"]
    sent_tool_events = stats["sent"] - stats["sent_reports"]

    # count_stream counted every event of its one call, the drop reports too.
    {r, all_counted?} =
      case r do
        %{consumer: :bare, events: events} ->
          {Map.put(r, :delivered, events - stats["sent_reports"]), events == stats["sent"]}

        %{consumer: :full} ->
          {r, true}
      end

    unless all_counted? and r.delivered + r.nif_dropped == sent_tool_events and
             stats["emitted"] == stats["enqueued"] + source_dropped do
      raise "events not accounted for: #{inspect(r)}, worker #{inspect(stats)}"
    end

    Map.merge(r, %{
      tool_iterations: tool["iterations"],
      tool_seconds: tool["seconds"],
      tool_cpu_ns: tool["cpu_ns"],
      source_dropped: source_dropped,
      worker_cpu_ns: div(r.worker_ticks * 1_000_000_000, clk_tck)
    })
  end

  ## Output

  defp delivered_rate(r), do: r.delivered * 1.0e9 / r.wall_ns
  defp tool_rate(r), do: r.tool_iterations / r.tool_seconds
  defp during_rate(r), do: r.sent_during_tool / r.tool_seconds
  defp per_delivered_us(ns, r), do: ns / max(r.delivered, 1) / 1000
  defp worker_us(r), do: per_delivered_us(r.worker_cpu_ns, r)
  defp sender_us(r), do: per_delivered_us(max(r.worker_cpu_ns - r.tool_cpu_ns, 0), r)
  defp consumer_us(r), do: per_delivered_us(r.consumer_cpu_ns, r)

  defp label({protocol, kind, consumer}) do
    "#{kind} tool, #{protocol}, #{consumer_label(consumer)}"
  end

  defp consumer_label(:bare), do: "bare client"
  defp consumer_label(:full), do: "full path"
  defp consumer_label(:bare_again), do: "bare client again (A/A)"
  defp consumer_label(:bare_spin), do: "bare client spinning (--spin)"

  defp format_result({:failed, reason}), do: "FAILED: #{reason}"

  defp format_result({:ok, r}) do
    "tool #{round(tool_rate(r))}/s, delivered #{r.delivered} (#{round(delivered_rate(r))}/s; " <>
      "sent while the tool ran #{round(during_rate(r))}/s), " <>
      "source drops #{r.source_dropped}, NIF drops #{r.nif_dropped}, worker " <>
      "#{fmt(worker_us(r))} µs/ev (#{fmt(sender_us(r))} without the tool), consumer " <>
      "#{fmt(consumer_us(r))} µs/ev#{nif_share(r)}, cores busy #{fmt(r.machine.cores_busy)} (stolen " <>
      "#{fmt(r.machine.cores_stolen)})"
  end

  defp nif_share(%{nif_cpu_ns: ns} = r), do: " (NIF threads #{fmt(per_delivered_us(ns, r))})"
  defp nif_share(_bare), do: ""

  defp print_table(protocols, kinds, consumers, results) do
    header = [
      "tool, protocol, consumer",
      "tool/s",
      "delivered/s (min–max)",
      "full / bare (A/A: again / bare)",
      "sent while the tool ran, /s",
      "source drops",
      "NIF drops",
      "worker µs/ev (without tool)",
      "consumer µs/ev",
      "cores busy"
    ]

    rows =
      for p <- protocols, k <- kinds, c <- consumers do
        rs = for {{^p, ^k, ^c}, {:ok, r}} <- results, do: r
        failed = Enum.count(results, &match?({{^p, ^k, ^c}, {:failed, _}}, &1))
        label = label({p, k, c}) <> if(failed > 0, do: " (#{failed} failed)", else: "")
        bare = for {{^p, ^k, :bare}, {:ok, r}} <- results, do: r
        pairs = run_pairs(results, {p, k, :bare}, {p, k, c})
        if rs == [], do: [label, "all runs failed"], else: [label | row(c, rs, bare, pairs)]
      end

    BenchStats.print_table(header, rows)
  end

  # The runs' results of two cases side by side, run by run (every case runs once per run, in
  # order), where both succeeded.
  defp run_pairs(results, case_a, case_b) do
    of = fn c -> for {^c, result} <- results, do: result end

    for {{:ok, a}, {:ok, b}} <- Enum.zip(of.(case_a), of.(case_b)), do: {a, b}
  end

  defp row(consumer, rs, bare, pairs) do
    med = fn f -> rs |> Enum.map(f) |> median() end
    rates = Enum.map(rs, &delivered_rate/1)
    {lo, hi} = Enum.min_max(rates)

    ratio =
      cond do
        consumer == :bare ->
          "1 (baseline)"

        bare == [] ->
          "–"

        true ->
          bare_rate = bare |> Enum.map(&delivered_rate/1) |> median()
          bare_tool = bare |> Enum.map(&tool_rate/1) |> median()

          by_run =
            if pairs == [],
              do: "–",
              else: fmt(median(for {b, f} <- pairs, do: delivered_rate(f) / delivered_rate(b)))

          "#{fmt(median(rates) / bare_rate)} (run by run #{by_run}; " <>
            "tool/s #{fmt(med.(&tool_rate/1) / bare_tool)})"
      end

    [
      "#{round(med.(&tool_rate/1))}",
      "#{round(median(rates))} (#{round(lo)}–#{round(hi)})",
      ratio,
      "#{round(med.(&during_rate/1))}",
      "#{round(med.(& &1.source_dropped))}",
      "#{round(med.(& &1.nif_dropped))}",
      "#{fmt(med.(&worker_us/1))} (#{fmt(med.(&sender_us/1))})",
      fmt(med.(&consumer_us/1)),
      fmt(med.(& &1.machine.cores_busy))
    ]
  end
end

Bench.ToolThroughput.main(System.argv())
