defmodule Snakepit.Telemetry.Dispatcher do
  @moduledoc """
  Runs the handlers: receives event batches from the NIF and calls `:telemetry.execute/3`
  for each event, then acknowledges the batch so the NIF may send the next one.

  It is separate from `Snakepit.Telemetry.GrpcStream` so that slow handlers never delay
  registration or control calls. Its mailbox holds at most `max_in_flight_batches`
  unacknowledged batches per worker; the NIF buffers (and past its bound drops and counts)
  the rest. A handler that raises is detached by `:telemetry`, as for any other event.

  It emits every worker event of the catalog; see `Snakepit.Telemetry.GrpcStream`.
  """

  use GenServer

  alias Snakepit.Telemetry.Native

  @doc false
  def start_link(opts \\ []) do
    GenServer.start_link(__MODULE__, :ok, Keyword.take(opts, [:name]))
  end

  @impl GenServer
  def init(:ok), do: {:ok, nil}

  @impl GenServer
  def handle_info({:snakepit_telemetry_batch, credit, _worker_id, _generation, events}, state) do
    try do
      Enum.each(events, fn {event, measurements, metadata} ->
        :telemetry.execute(event, measurements, metadata)
      end)
    after
      Native.ack(credit)
    end

    {:noreply, state}
  end

  def handle_info(_unexpected, state), do: {:noreply, state}
end
