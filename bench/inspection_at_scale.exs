# Inspection and control at scale: list_streams/0 and :all controls with 5,000 registered
# streams, and whether any of them holds a normal scheduler (`:erlang.system_monitor`
# `long_schedule`, 1 ms). The streams are stderr-only registrations (endpoint `:none`), so
# the measurement is of the registry and the terms, not of 5,000 connections.
#
#     MIX_ENV=test mix run bench/inspection_at_scale.exs [--streams 5000] [--rounds 5]

defmodule Bench.InspectionAtScale do
  @moduledoc false

  alias Snakepit.Telemetry.GrpcStream

  def main(argv) do
    {opts, []} = OptionParser.parse!(argv, strict: [streams: :integer, rounds: :integer])
    streams = Keyword.get(opts, :streams, 5_000)
    rounds = Keyword.get(opts, :rounds, 5)

    for i <- 1..streams, do: :ok = GrpcStream.register_worker("idle-#{i}", :none, pool_name: :p)
    # Warm-up (code loading), then watch.
    _ = GrpcStream.list_streams()
    :erlang.system_monitor(self(), [{:long_schedule, 1}])

    results =
      for _ <- 1..rounds do
        {list_us, list} = :timer.tc(fn -> GrpcStream.list_streams() end)
        ^streams = length(list)
        {toggle_us, :ok} = :timer.tc(fn -> GrpcStream.toggle(:all, false) end)

        {sampling_us, :ok} =
          :timer.tc(fn -> GrpcStream.update_sampling(:all, 0.5, ["tool.*"]) end)

        %{list: list_us, toggle: toggle_us, sampling: sampling_us}
      end

    Process.sleep(100)
    :erlang.system_monitor(:undefined)
    {:messages, messages} = Process.info(self(), :messages)
    longs = for {:monitor, pid, :long_schedule, info} <- messages, do: {pid, info}
    ours = for {pid, info} <- longs, pid == self(), do: info

    for {pid, info} <- longs,
        do:
          IO.puts(
            "long_schedule: #{inspect(pid)} #{inspect(Process.info(pid, :registered_name))} #{inspect(info)}"
          )

    IO.puts("streams: #{streams}, rounds: #{rounds}")

    for key <- [:list, :toggle, :sampling],
        do: IO.puts("#{key}: median #{median(Enum.map(results, & &1[key]))} µs")

    IO.puts(
      "long_schedule reports over 1 ms: #{length(longs)} (#{length(ours)} of this process, " <>
        "longest #{longest(ours)} ms)"
    )
  end

  defp median(xs), do: xs |> Enum.sort() |> Enum.at(div(length(xs), 2))

  defp longest([]), do: 0
  defp longest(infos), do: infos |> Enum.map(&Keyword.get(&1, :timeout, 0)) |> Enum.max()
end

Bench.InspectionAtScale.main(System.argv())
