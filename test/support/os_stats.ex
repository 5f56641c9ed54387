defmodule Snakepit.Telemetry.Test.OsStats do
  @moduledoc "Memory and CPU of OS processes, from /proc, for the benchmarks."

  @doc "Resident memory of this BEAM (`:self`) or of the OS process `pid`, in KiB; 0 if it is gone."
  @spec rss_kb(:self | pos_integer()) :: non_neg_integer()
  def rss_kb(pid) do
    path = if pid == :self, do: "/proc/self/status", else: "/proc/#{pid}/status"

    case File.read(path) do
      {:ok, status} ->
        [_, kb] = Regex.run(~r/VmRSS:\s+(\d+) kB/, status)
        String.to_integer(kb)

      {:error, _} ->
        0
    end
  end

  @doc """
  utime + stime of the OS processes `pids`, summed, in clock ticks (threads that exited
  included); a process that is gone counts 0.
  """
  @spec cpu_ticks([pos_integer()]) :: non_neg_integer()
  def cpu_ticks(pids) do
    Enum.sum(
      for pid <- pids do
        case File.read("/proc/#{pid}/stat") do
          {:ok, stat} ->
            # The fields after the command name; utime and stime are fields 14 and 15 of stat.
            [_, rest] = String.split(stat, ") ", parts: 2)
            [utime, stime] = rest |> String.split() |> Enum.slice(11, 2)
            String.to_integer(utime) + String.to_integer(stime)

          {:error, _} ->
            0
        end
      end
    )
  end

  @doc """
  The whole machine's CPU time so far, from the first line of /proc/stat, in clock ticks
  summed over all CPUs: `busy` (user, nice, system, irq, softirq), `steal` (time the
  hypervisor ran something else on our virtual CPUs) and `total` (those and idle, iowait).
  """
  @spec machine_ticks() :: %{
          busy: non_neg_integer(),
          steal: non_neg_integer(),
          total: non_neg_integer()
        }
  def machine_ticks do
    ["cpu" | fields] =
      "/proc/stat" |> File.read!() |> String.split("\n", parts: 2) |> hd() |> String.split()

    # user nice system idle iowait irq softirq steal (guest time is already in user and nice)
    [user, nice, system, idle, iowait, irq, softirq, steal | _] =
      Enum.map(fields, &String.to_integer/1)

    busy = user + nice + system + irq + softirq
    %{busy: busy, steal: steal, total: busy + steal + idle + iowait}
  end

  @doc """
  Cores busy and cores stolen by the hypervisor between two `machine_ticks/0` readings: the
  machine's busy (and steal) ticks over all its ticks, times its CPUs.
  """
  @spec machine_diff(map(), map()) :: %{cores_busy: float(), cores_stolen: float()}
  def machine_diff(a, b) do
    total = max(b.total - a.total, 1)
    cpus = :erlang.system_info(:logical_processors)

    %{
      cores_busy: (b.busy - a.busy) / total * cpus,
      cores_stolen: (b.steal - a.steal) / total * cpus
    }
  end

  @doc "Waits (at most `timeout_ms`) until the OS process `os_pid` has exited."
  @spec await_exit(non_neg_integer(), non_neg_integer()) :: :ok
  def await_exit(os_pid, timeout_ms \\ 10_000) do
    if timeout_ms > 0 and File.exists?("/proc/#{os_pid}") do
      Process.sleep(10)
      await_exit(os_pid, timeout_ms - 10)
    else
      :ok
    end
  end

  @doc "Clock ticks per second (`getconf CLK_TCK`), the unit of `cpu_ticks/1`."
  @spec clock_ticks_per_second() :: pos_integer()
  def clock_ticks_per_second do
    {out, 0} = System.cmd("getconf", ["CLK_TCK"])
    out |> String.trim() |> String.to_integer()
  end
end
