defmodule Snakepit.Telemetry.Test.EventCounter do
  @moduledoc "A :telemetry handler that counts events per worker and event name, for tests."

  @doc "Attaches a counting handler to `events`; returns a counter table."
  def attach(events) do
    table = :ets.new(__MODULE__, [:public, :set, write_concurrency: true])
    id = "test-counter-#{System.unique_integer([:positive])}"
    :ok = :telemetry.attach_many(id, events, &__MODULE__.count/4, table)
    ExUnit.Callbacks.on_exit(fn -> :telemetry.detach(id) end)
    table
  end

  # The table dies with the test process, before `on_exit` detaches the handler: an event
  # that comes in between is not counted (rather than failing the handler and logging it).
  def count(event, _measurements, metadata, table) do
    key = {metadata.worker_id, event}
    :ets.update_counter(table, key, 1, {key, 0})
  rescue
    error in ArgumentError ->
      if :ets.info(table) != :undefined, do: reraise(error, __STACKTRACE__)
  end

  @doc "How many `event`s from `worker_id` were seen."
  def get(table, worker_id, event) do
    case :ets.lookup(table, {worker_id, event}) do
      [{_, n}] -> n
      [] -> 0
    end
  end

  @doc "How many events from `worker_id` were seen, any name."
  def total(table, worker_id) do
    :ets.select(table, [{{{worker_id, :_}, :"$1"}, [], [:"$1"]}]) |> Enum.sum()
  end
end
