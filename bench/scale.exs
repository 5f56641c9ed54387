# Scale: many real Python workers emitting at a steady pace through real handlers, on one
# node, for a while; then `toggle(:all, false)` under that load.
#
#     MIX_ENV=test ERL_FLAGS="+sbwt none +sbwtdcpu none +sbwtdio none" \
#       mix run bench/scale.exs [--workers 100] [--rate 500] [--seconds 60] [--quick]
#
# (`bench/run_all` runs it; MIX_ENV=test because the worker driver lives in test/support.)
#
# Every worker is `test/support/python/scripted_worker.py` on 127.0.0.1, registered with
# `GrpcStream.register_worker/3` (the default config: batched wire, max_buffer_size 1024).
# Two handlers are attached, as an application would: one counts events per worker (ETS
# `update_counter`), one keeps a per-tool sum of `duration` (ETS). Phase 1: every worker
# emits `tool.execution.stop` at `--rate` events/s for `--seconds` (`emit_paced`, a thread
# in the worker). When all are done and everything has settled, per worker: emitted (the
# worker's own count) == delivered + source drops (reported by the worker) + NIF drops.
# Measured over phase 1: node memory (BEAM RSS, `:erlang.memory(:total)`, the workers'
# summed RSS), CPU of the NIF runtime's threads, the schedulers and the workers.
# Phase 2: every worker emits at the same pace again; after 2 s, `toggle(:all, false)`;
# the result is the time from its return to the last event any handler saw.

defmodule Bench.Scale do
  @moduledoc false

  alias Snakepit.Telemetry.GrpcStream
  alias Snakepit.Telemetry.Test.{BenchStats, OsStats, PythonWorker, Streams, ThreadCpu}

  import BenchStats, only: [fmt: 1]

  @stop [:snakepit, :python, :tool, :execution, :stop]
  @dropped [:snakepit, :python, :telemetry, :dropped]
  @lost [:snakepit, :grpc, :connection, :lost]
  @defaults [workers: 100, rate: 500, seconds: 60]
  @switches [workers: :integer, rate: :integer, seconds: :integer, quick: :boolean]

  def main(argv) do
    {opts, []} = OptionParser.parse!(argv, strict: @switches)
    opts = Keyword.merge(@defaults, opts)
    opts = if opts[:quick], do: Keyword.merge(opts, workers: 4, rate: 200, seconds: 3), else: opts
    n = opts[:workers]

    IO.puts(
      "#{n} workers × #{opts[:rate]} events/s × #{opts[:seconds]} s; #{System.schedulers_online()} schedulers"
    )

    rss_start = OsStats.rss_kb(:self)
    {start_us, workers} = :timer.tc(fn -> start_workers(n) end)
    IO.puts("started #{n} workers in #{fmt(start_us / 1.0e6)} s")

    table = :ets.new(:scale_counts, [:public, :set, write_concurrency: true])
    sums = :ets.new(:scale_sums, [:public, :set, write_concurrency: true])
    last_seen = :atomics.new(1, signed: true)

    :ok =
      :telemetry.attach_many(
        "scale-count",
        [@stop, @dropped],
        &__MODULE__.count/4,
        {table, last_seen}
      )

    :ok = :telemetry.attach("scale-sum", @stop, &__MODULE__.sum/4, sums)
    :ok = :telemetry.attach("scale-lost", @lost, &__MODULE__.lost/4, table)

    for {id, w} <- workers,
        do: :ok = GrpcStream.register_worker(id, w.endpoint, pool_name: :scale)

    Streams.wait_until(
      fn -> Enum.all?(GrpcStream.list_streams(), &(&1.status == :connected)) end,
      120_000
    )

    rss_registered = OsStats.rss_kb(:self)

    # Baseline: what the registered workers and the node cost doing nothing, over 2 s.
    idle_cpu0 = ThreadCpu.beam()
    idle_py0 = python_ticks(workers)
    Process.sleep(2_000)
    idle_cpu = ThreadCpu.beam()
    idle_py = python_ticks(workers) - idle_py0

    # Phase 1.
    cpu0 = ThreadCpu.beam()
    py0 = python_ticks(workers)
    t0 = System.monotonic_time(:millisecond)

    paced = %{
      "op" => "emit_paced",
      "event" => "tool.execution.stop",
      "measurements" => %{"duration" => 1_000},
      "metadata" => %{"tool" => "resize", "operation" => "run"},
      "rate" => opts[:rate],
      "seconds" => opts[:seconds]
    }

    Enum.each(workers, fn {_, w} -> PythonWorker.run(w, paced) end)

    peak =
      sample_memory_until(
        fn -> Enum.all?(workers, fn {_, w} -> PythonWorker.stats(w)["paced_done"] >= 1 end) end,
        workers
      )

    {sources, nif} = settle(workers, table, max(120_000, opts[:seconds] * 5_000))
    wall_s = (System.monotonic_time(:millisecond) - t0) / 1000
    cpu1 = ThreadCpu.beam()
    py_ticks = python_ticks(workers) - py0

    emitted = Enum.sum(for {_, s} <- sources, do: s["emitted"])
    messages = Enum.sum(for {_, s} <- sources, do: s["sent_batches"])
    delivered = Enum.sum(for {id, _} <- workers, do: count(table, {id, :delivered}))

    source_drops =
      sum_maps(for {_, s} <- sources, do: Map.new(s["dropped"], fn {k, v} -> {k, v} end))

    reported = sum_maps(for {id, _} <- workers, do: reported(table, id))
    nif_drops = sum_maps(for {_, i} <- nif, do: i.dropped)

    exact =
      Enum.all?(workers, fn {id, _} ->
        s = sources[id]

        s["emitted"] ==
          count(table, {id, :delivered}) + s["dropped_total"] +
            Enum.sum(Map.values(nif[id].dropped))
      end)

    # Phase 2: the toggle under load.
    before_phase2 = delivered_total(table, workers)
    Enum.each(workers, fn {_, w} -> PythonWorker.run(w, %{paced | "seconds" => 4}) end)
    Process.sleep(2_000)
    phase2_seen = delivered_total(table, workers) - before_phase2
    {toggle_us, :ok} = :timer.tc(fn -> GrpcStream.toggle(:all, false) end)
    returned = System.monotonic_time()
    Process.sleep(1_000)
    last = :atomics.get(last_seen, 1)

    latency_ms =
      if last > returned,
        do: System.convert_time_unit(last - returned, :native, :microsecond) / 1000,
        else: 0.0

    :ok = GrpcStream.toggle(:all, true)

    clk_tck = OsStats.clock_ticks_per_second()
    events = max(delivered, 1)
    nif_ns = cpu1.nif - cpu0.nif
    schedulers_ns = cpu1.schedulers - cpu0.schedulers
    # Python CPU in seconds: over phase 1, and over it less what idle workers use anyway.
    python_s = py_ticks / clk_tck
    idle_python_per_s = idle_py / clk_tck / 2
    python_busy_s = python_s - idle_python_per_s * wall_s

    BenchStats.print_table(["measure", "value"], [
      ["emitted (workers' own count)", "#{emitted}"],
      ["delivered to the handlers", "#{delivered} (#{fmt(delivered * 100 / max(emitted, 1))} %)"],
      [
        "drops at the source by reason (reported)",
        inspect(Map.reject(source_drops, fn {_, v} -> v == 0 end))
      ],
      ["drops reported on the stream", inspect(reported)],
      ["NIF drops by reason", inspect(Map.reject(nif_drops, fn {_, v} -> v == 0 end))],
      ["emitted == delivered + source + NIF drops, every worker", "#{exact}"],
      ["phase 1 wall time", "#{fmt(wall_s)} s (#{round(delivered / wall_s)} events/s delivered)"],
      [
        "NIF runtime threads CPU",
        "#{fmt(nif_ns / 1.0e9)} s (#{fmt(nif_ns / events / 1000)} µs/event, #{fmt(nif_ns / 1.0e7 / wall_s)} % of a core)"
      ],
      [
        "BEAM schedulers CPU",
        "#{fmt(schedulers_ns / 1.0e9)} s (#{fmt(schedulers_ns / events / 1000)} µs/event, #{fmt(schedulers_ns / 1.0e7 / wall_s)} % of a core)"
      ],
      [
        "Python workers CPU (all)",
        "#{fmt(python_s)} s (#{fmt(python_s * 1.0e6 / events)} µs/event)"
      ],
      [
        "idle baseline (2 s before phase 1), per second",
        "workers #{fmt(idle_python_per_s * 100)} % of a core in all, NIF threads #{fmt((idle_cpu.nif - idle_cpu0.nif) / 2.0e7)} %, schedulers #{fmt((idle_cpu.schedulers - idle_cpu0.schedulers) / 2.0e7)} %"
      ],
      [
        "Python workers CPU above idle",
        "#{fmt(python_busy_s * 1.0e6 / events)} µs/event, #{fmt(python_busy_s * 1.0e6 / max(messages, 1))} µs/message"
      ],
      [
        "gRPC messages the workers sent",
        "#{messages} (#{fmt(delivered / max(messages, 1))} events per message)"
      ],
      [
        "BEAM RSS: start / all registered / peak in phase 1",
        "#{div(rss_start, 1024)} / #{div(rss_registered, 1024)} / #{div(peak.beam, 1024)} MiB"
      ],
      ["BEAM :erlang.memory(:total), peak", "#{div(peak.erlang, 1024 * 1024)} MiB"],
      [
        "Python workers' RSS, summed, peak",
        "#{div(peak.python, 1024)} MiB (#{div(peak.python, 1024 * n)} MiB each)"
      ],
      ["streams lost and reopened (reason: count)", inspect(losses(table))],
      ["phase 2: events seen in the 2 s before the toggle", "#{phase2_seen}"],
      ["toggle(:all, false): call", "#{fmt(toggle_us / 1000)} ms"],
      ["toggle(:all, false) returned → last event seen", "#{fmt(latency_ms)} ms"]
    ])

    for {id, w} <- workers, do: GrpcStream.unregister_worker(id) && PythonWorker.stop(w)
  end

  @doc false
  def count(@stop, _m, %{worker_id: id}, {table, last_seen}) do
    :atomics.put(last_seen, 1, System.monotonic_time())
    :ets.update_counter(table, {id, :delivered}, 1, {{id, :delivered}, 0})
  end

  def count(@dropped, %{count: n}, %{worker_id: id, reason: reason}, {table, _}) do
    :ets.update_counter(table, {id, :reports}, 1, {{id, :reports}, 0})
    :ets.update_counter(table, {id, {:reported, reason}}, n, {{id, {:reported, reason}}, 0})
  end

  @doc false
  def lost(_event, %{uptime: uptime}, %{worker_id: id, reason: reason}, table) do
    :ets.insert(table, {{:lost, id, System.unique_integer()}, reason, uptime})
  end

  @doc false
  def sum(_event, %{duration: d}, %{tool: tool}, sums),
    do: :ets.update_counter(sums, tool, d, {tool, 0})

  # Started 8 at a time; each task hands its worker's port to this process (a port closes
  # when its owner exits, and the worker stops when its stdin closes).
  defp start_workers(n) do
    parent = self()

    1..n
    |> Task.async_stream(
      fn i ->
        w = PythonWorker.start()
        true = Port.connect(w.port, parent)
        Process.unlink(w.port)
        {"scale-#{i}", w}
      end,
      max_concurrency: 8,
      timeout: 120_000,
      ordered: true
    )
    |> Enum.map(fn {:ok, pair} -> pair end)
  end

  # Waits until every worker has sent all it emitted and the NIF and the handlers have
  # accounted for every message: returns each worker's stats and stream info.
  defp settle(workers, table, timeout) do
    deadline = System.monotonic_time(:millisecond) + timeout

    Stream.repeatedly(fn ->
      sources = Map.new(workers, fn {id, w} -> {id, PythonWorker.stats(w)} end)
      nif = Map.new(GrpcStream.list_streams(), &{&1.worker_id, &1})

      unsettled =
        Enum.find(workers, fn {id, _} ->
          s = sources[id]
          i = nif[id]
          # Events handed to a call that broke: counted by the NIF when the stream reopened.
          lost = Map.get(i.dropped, :lost_in_transit, 0)
          reported = Enum.sum(Map.values(reported(table, id)))

          not (s["buffered"] == 0 and i.received + lost == s["sent"] and
                 i.emitted + Enum.sum(Map.values(i.dropped)) - lost == i.received and
                 count(table, {id, :delivered}) + count(table, {id, :reports}) == i.emitted and
                 (reported == s["dropped_total"] or (lost > 0 and reported <= s["dropped_total"])))
        end)

      cond do
        unsettled == nil ->
          {sources, nif}

        System.monotonic_time(:millisecond) > deadline ->
          {id, w} = unsettled

          stuck =
            Enum.count(workers, fn {i, _} ->
              sources[i]["sent"] != nif[i].received + Map.get(nif[i].dropped, :lost_in_transit, 0)
            end)

          {sockets, _} =
            System.cmd("ss", ["-tni", "( sport = :#{w.tcp_port} or dport = :#{w.tcp_port} )"])

          IO.puts(
            "#{stuck} workers with sent != received; streams lost: #{inspect(losses(table))}; sockets of #{id}:\n#{sockets}"
          )

          raise "not settled in #{timeout} ms; #{id}: worker #{inspect(Map.take(sources[id], ["emitted", "sent", "buffered", "dropped_total", "paced_done"]))}, " <>
                  "NIF #{inspect(Map.take(nif[id], [:received, :emitted, :dropped, :source_dropped, :status]))}, " <>
                  "delivered #{count(table, {id, :delivered})}, reported #{inspect(reported(table, id))}"

        true ->
          Process.sleep(200) && nil
      end
    end)
    |> Enum.find(& &1)
  end

  defp losses(table) do
    for({{:lost, _, _}, reason, _} <- :ets.tab2list(table), do: reason) |> Enum.frequencies()
  end

  defp delivered_total(table, workers),
    do: Enum.sum(for {id, _} <- workers, do: count(table, {id, :delivered}))

  defp count(table, key) do
    case :ets.lookup(table, key) do
      [{_, n}] -> n
      [] -> 0
    end
  end

  defp reported(table, id),
    do: for({{^id, {:reported, r}}, n} <- :ets.tab2list(table), into: %{}, do: {r, n})

  defp sum_maps(maps), do: Enum.reduce(maps, %{}, &Map.merge(&2, &1, fn _, a, b -> a + b end))

  # Samples memory every 500 ms until `done?`; returns the peaks (KiB for RSS, bytes for the VM).
  defp sample_memory_until(done?, workers, peak \\ %{beam: 0, erlang: 0, python: 0}) do
    peak = %{
      beam: max(peak.beam, OsStats.rss_kb(:self)),
      erlang: max(peak.erlang, :erlang.memory(:total)),
      python: max(peak.python, Enum.sum(for {_, w} <- workers, do: OsStats.rss_kb(w.os_pid)))
    }

    if done?.(),
      do: peak,
      else:
        (
          Process.sleep(500)
          sample_memory_until(done?, workers, peak)
        )
  end

  defp python_ticks(workers), do: OsStats.cpu_ticks(for {_, w} <- workers, do: w.os_pid)
end

Bench.Scale.main(System.argv())
