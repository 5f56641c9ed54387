defmodule Snakepit.Telemetry.Test.Forwarder do
  @moduledoc "Telemetry handlers for tests: forward events to a test process, or misbehave."

  @doc "Attaches a handler forwarding `events` to the calling process; returns its id."
  def attach(events, extra \\ %{}) do
    id = "test-forwarder-#{System.unique_integer([:positive])}"
    :ok = :telemetry.attach_many(id, events, &__MODULE__.forward/4, Map.put(extra, :pid, self()))
    ExUnit.Callbacks.on_exit(fn -> :telemetry.detach(id) end)
    id
  end

  def forward(event, measurements, metadata, %{pid: pid} = config) do
    if sleep = config[:sleep_ms], do: Process.sleep(sleep)
    send(pid, {:telemetry, event, measurements, metadata})
  end

  def raise_always(_event, _measurements, _metadata, _config), do: raise("handler bug")
end
