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

  @doc """
  Attaches a handler that blocks the Dispatcher on the first `event` of `worker_id` (any
  worker if nil): it sends `{:stuck, dispatcher_pid}` to the calling process and waits for
  `release/2`. Returns `{handler_id, gate}`.
  """
  def attach_gated(event, worker_id) do
    handler = "gated-#{System.unique_integer([:positive])}"
    gate = make_ref()
    config = %{pid: self(), gate: gate, worker_id: worker_id}
    :ok = :telemetry.attach(handler, event, &__MODULE__.hold/4, config)
    {handler, gate}
  end

  def hold(_event, _measurements, %{worker_id: w}, %{worker_id: id} = config)
      when id == nil or w == id do
    send(config.pid, {:stuck, self()})
    gate = config.gate
    receive do: (^gate -> :ok)
  end

  def hold(_event, _measurements, _metadata, _config), do: :ok

  @doc "Detaches the gated handler first (it would block again), then lets the Dispatcher go."
  def release({handler, gate}, dispatcher) do
    :telemetry.detach(handler)
    send(dispatcher, gate)
  end

  def raise_always(_event, _measurements, _metadata, _config), do: raise("handler bug")
end
