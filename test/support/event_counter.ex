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

  def count(event, _measurements, metadata, table) do
    :ets.update_counter(table, {metadata.worker_id, event}, 1, {{metadata.worker_id, event}, 0})
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
