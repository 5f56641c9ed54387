# What `:telemetry.execute/3` itself costs the process that calls it, per event: the floor
# under the Dispatcher's CPU per event, whatever the NIF does. The Dispatcher calls it once
# per event (its contract with every `:telemetry` handler), so no change to the NIF or the
# wire can take the BEAM's CPU per delivered event below this.
#
#     bench/run_all [--quick]            # runs this among the others
#     MIX_ENV=test ERL_FLAGS="+sbwt none +sbwtdcpu none +sbwtdio none" \
#       mix run bench/telemetry_execute.exs [--events 1000] [--rounds 1000] [--runs 5]
#
# Over `--events` events made beforehand in the shape the Dispatcher delivers a
# `tool.execution.stop` event in (the event name, `%{duration: _}`, and metadata with the
# worker's `tool` and `operation`, `:worker_id`, `:pool_name`, `:python_pid`, `:node`,
# `:timestamp_ns`, `:correlation_id`), `--rounds` times, one process, per case:
#
#   * baseline: the same loop calling the handler function directly (what any dispatch
#     must at least do);
#   * `:telemetry.execute/3`, nothing attached;
#   * `:telemetry.execute/3`, one handler attached (a `:counters` increment, the handler
#     of the stream throughput benchmark).
#
# Reported: µs of wall time per event in the calling process (one busy process on an
# otherwise quiet BEAM: its CPU time), medians over `--runs`. Which `:telemetry` ran is
# printed: the stand-in keeps handlers in `:persistent_term`, the Hex package 1.x in ETS,
# whose lookup copies the handlers to the caller's heap, so with the real package these
# figures are, if anything, higher.

defmodule Bench.TelemetryExecute do
  @moduledoc false

  import Snakepit.Telemetry.Test.BenchStats, only: [fmt: 1, median: 1]

  @event [:snakepit, :python, :tool, :execution, :stop]
  @defaults [events: 1000, rounds: 1000, runs: 5]
  @switches [events: :integer, rounds: :integer, runs: :integer, quick: :boolean]

  def main(argv) do
    {opts, []} = OptionParser.parse!(argv, strict: @switches)
    opts = Keyword.merge(@defaults, opts)
    opts = if opts[:quick], do: Keyword.merge(opts, events: 200, rounds: 50, runs: 1), else: opts

    events = for i <- 1..opts[:events], do: event(i)
    counter = :counters.new(1, [])
    handler = &__MODULE__.handle_event/4

    cases = [
      {"baseline: the handler called directly", fn {e, m, md} -> handler.(e, m, md, counter) end,
       false},
      {":telemetry.execute/3, no handler attached",
       fn {e, m, md} -> :telemetry.execute(e, m, md) end, false},
      {":telemetry.execute/3, one handler attached",
       fn {e, m, md} -> :telemetry.execute(e, m, md) end, true}
    ]

    IO.puts(
      "#{telemetry_kind()}; #{opts[:events]} events × #{opts[:rounds]} rounds per run, " <>
        "#{opts[:runs]} runs"
    )

    results =
      for {label, call, attach?} <- cases do
        us = for _ <- 1..opts[:runs], do: run(events, call, attach?, counter, opts[:rounds])
        {label, median(us)}
      end

    {_, base} = hd(results)

    IO.puts("""

    | case | µs per event (median) | / baseline |
    |---|---|---|\
    """)

    for {label, us} <- results, do: IO.puts("| #{label} | #{fmt3(us)} | #{fmt(us / base)} |")
  end

  @doc false
  def handle_event(_event, _measurements, _metadata, counter), do: :counters.add(counter, 1, 1)

  defp run(events, call, attach?, counter, rounds) do
    id = {__MODULE__, make_ref()}

    if attach?,
      do: :ok = :telemetry.attach(id, @event, &__MODULE__.handle_event/4, counter)

    try do
      # One untimed pass so that the code and the events are warm.
      Enum.each(events, call)
      {us, :ok} = :timer.tc(fn -> rounds(events, call, rounds) end)
      us / (rounds * length(events))
    after
      if attach?, do: :telemetry.detach(id)
    end
  end

  defp rounds(_events, _call, 0), do: :ok

  defp rounds(events, call, n) do
    Enum.each(events, call)
    rounds(events, call, n - 1)
  end

  defp event(i) do
    {@event, %{duration: 100_000 + i},
     %{
       tool: "resize",
       operation: "run",
       worker_id: "bench_1",
       pool_name: :bench,
       python_pid: 4242,
       node: node(),
       timestamp_ns: 1_700_000_000_000_000_000 + i,
       correlation_id: ""
     }}
  end

  defp telemetry_kind do
    attributes = :telemetry.module_info(:attributes)

    if Keyword.has_key?(attributes, :snakepit_telemetry_standin),
      do: "`:telemetry` is the stand-in (standin/telemetry)",
      else: "`:telemetry` is the real package"
  end

  defp fmt3(x), do: :erlang.float_to_binary(x * 1.0, decimals: 3)
end

Bench.TelemetryExecute.main(System.argv())
