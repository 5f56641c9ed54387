defmodule Snakepit.Telemetry.WorkerLedger do
  @moduledoc false
  # Remembers, per worker id, when a `Snakepit.Telemetry.Worker` went down abnormally and
  # how often it was restarted, so the next Worker of that id can emit
  # `[:snakepit, :pool, :worker, :restarted]` with its downtime. It monitors each Worker
  # (also one killed with `Process.exit(pid, :kill)`, whose `terminate/2` never runs). The
  # table lives as long as this process; a crash of it forgets the history (the next
  # restart of each worker is then not reported as one), nothing else.

  use GenServer

  @table __MODULE__

  @doc false
  def start_link(_opts), do: GenServer.start_link(__MODULE__, :ok, name: __MODULE__)

  @doc "Records that `pid` now runs worker `id`; returns `{downtime_native, restarts}` if it is a restart."
  @spec started(String.t(), pid()) :: {integer(), pos_integer()} | nil
  def started(id, pid) do
    GenServer.call(__MODULE__, {:started, id, pid})
  catch
    # Not running (the application is stopping): a Worker does not depend on it.
    :exit, _ -> nil
  end

  @doc "Forgets `id`: its Worker stopped on purpose."
  @spec stopped(String.t()) :: :ok
  def stopped(id) do
    GenServer.cast(__MODULE__, {:stopped, id})
  end

  @impl GenServer
  def init(:ok) do
    :ets.new(@table, [:named_table, :set, :protected])
    {:ok, %{}}
  end

  @impl GenServer
  def handle_call({:started, id, pid}, _from, monitors) do
    reply =
      case :ets.lookup(@table, id) do
        [{^id, {:down, since, restarts}}] ->
          {System.monotonic_time() - since, restarts + 1}

        _ ->
          nil
      end

    restarts = if reply, do: elem(reply, 1), else: 0
    :ets.insert(@table, {id, {:up, pid, restarts}})
    ref = Process.monitor(pid)
    {:reply, reply, Map.put(monitors, ref, id)}
  end

  @impl GenServer
  def handle_cast({:stopped, id}, monitors) do
    :ets.delete(@table, id)
    {:noreply, monitors}
  end

  @impl GenServer
  def handle_info({:DOWN, ref, :process, pid, _reason}, monitors) do
    {id, monitors} = Map.pop(monitors, ref)

    case :ets.lookup(@table, id) do
      [{^id, {:up, ^pid, restarts}}] ->
        :ets.insert(@table, {id, {:down, System.monotonic_time(), restarts}})

      _ ->
        :ok
    end

    {:noreply, monitors}
  end
end
