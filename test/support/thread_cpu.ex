defmodule Snakepit.Telemetry.Test.ThreadCpu do
  @moduledoc "CPU time of this BEAM's threads, for the benchmarks (from /proc/self/task/*/schedstat)."

  # Thread names are cut to 15 bytes: "snakepit-telemetry" shows as this.
  @nif_thread "snakepit-teleme"

  @doc "CPU time so far of the NIF runtime's threads and the normal scheduler threads, in ns."
  @spec beam() :: %{nif: non_neg_integer(), schedulers: non_neg_integer()}
  def beam do
    {:ok, tids} = File.ls("/proc/self/task")

    Enum.reduce(tids, %{nif: 0, schedulers: 0}, fn tid, acc ->
      with {:ok, comm} <- File.read("/proc/self/task/#{tid}/comm"),
           {:ok, schedstat} <- File.read("/proc/self/task/#{tid}/schedstat") do
        # schedstat: time on CPU (ns), time waiting to run (ns), timeslices.
        ns = schedstat |> String.split() |> hd() |> String.to_integer()

        cond do
          String.starts_with?(comm, @nif_thread) -> %{acc | nif: acc.nif + ns}
          comm =~ ~r/^\d+_scheduler$/ -> %{acc | schedulers: acc.schedulers + ns}
          true -> acc
        end
      else
        # The thread has just exited.
        _ -> acc
      end
    end)
  end
end
