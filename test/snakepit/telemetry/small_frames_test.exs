defmodule Snakepit.Telemetry.SmallFramesTest do
  # h2 charges every unread DATA frame under 256 bytes against a budget of half the
  # connection window and sends GOAWAY ENHANCE_YOUR_CALM when it runs out. A source that
  # sends one small message per frame used to trip it (the stream then closed). The client's
  # windows are sized so that it cannot: these floods come from the Rust event source, which
  # writes every message as its own DATA frame, as fast as flow control allows.
  use ExUnit.Case, async: false

  alias Snakepit.Telemetry.GrpcStream
  alias Snakepit.Telemetry.Test.{EventCounter, EventSource, Forwarder}

  import Snakepit.Telemetry.Test.Streams

  @stop [:snakepit, :python, :tool, :execution, :stop]
  @connection [:snakepit, :grpc, :connection]
  @events 200_000

  setup do
    Forwarder.attach([@connection ++ [:lost]])
    id = "small-frames-#{System.unique_integer([:positive])}"
    on_exit(fn -> GrpcStream.unregister_worker(id) end)
    %{id: id}
  end

  test "one event per message, one message per frame: the stream reads all of them and stays up",
       %{id: id} do
    source = EventSource.start(events: @events, protocol: :single)
    counter = EventCounter.attach([@stop])
    assert :ok = GrpcStream.register_worker(id, source.endpoint)

    wait_until(fn -> stream(id).received == @events end, 30_000)

    info = stream(id)
    assert info.protocol == :single
    assert info.status == :connected
    assert info.attempt == 0
    # The NIF reads on when its buffer is full on this wire: what it cannot keep, it counts.
    wait_until(fn -> EventCounter.get(counter, id, @stop) + nif_drops(id) == @events end)
    refute_received {:telemetry, [:snakepit, :grpc, :connection, :lost], _, %{worker_id: ^id}}
  end

  test "batched wire, one event per frame, behind a stuck handler: the unread frames fill the window, not the budget",
       %{id: id} do
    restart_app_for_test(max_buffer_size: 64, max_batch_size: 16, max_in_flight_batches: 1)
    source = EventSource.start(events: @events, protocol: :batched, batch: 1)
    gated = Forwarder.attach_gated(@stop, id)
    assert :ok = GrpcStream.register_worker(id, source.endpoint)
    assert_receive {:stuck, dispatcher}, 10_000

    # The NIF has stopped reading: the source fills the stream window with one-event frames
    # (about 60 bytes each, charged about 200 each: over 3 MB against the 1 MiB budget the
    # old 1 MiB / 2 MiB windows gave; under 1 MB against today's 128 MiB).
    Process.sleep(1_000)
    assert stream(id).received < @events
    assert stream(id).status == :connected

    counter = EventCounter.attach([@stop])
    Forwarder.release(gated, dispatcher)
    # The event the gated handler held was dispatched before the counter was attached.
    wait_until(fn -> EventCounter.get(counter, id, @stop) == @events - 1 end, 30_000)

    info = stream(id)
    assert info.protocol == :batched
    assert info.received == @events
    assert info.attempt == 0
    assert nif_drops(id) == 0
    refute_received {:telemetry, [:snakepit, :grpc, :connection, :lost], _, %{worker_id: ^id}}
  end

  defp nif_drops(id), do: stream(id).dropped |> Map.values() |> Enum.sum()
end
