defmodule Snakepit.Telemetry.ProtocolTest do
  # The batched wire (StreamTelemetryBatched, many events per message) with this project's
  # workers, and the fallback to StreamTelemetry for a worker that does not serve it.
  use ExUnit.Case, async: false

  alias Snakepit.Telemetry.Test.{Forwarder, PythonWorker, Proto}

  import Snakepit.Telemetry.Test.Streams

  @stop [:snakepit, :python, :tool, :execution, :stop]

  defp emit(worker, count) do
    PythonWorker.run(worker, %{
      "op" => "emit",
      "event" => "tool.execution.stop",
      "measurements" => %{"duration" => 1},
      "count" => count
    })
  end

  test "this project's worker streams batched: every event arrives, in order, counted one by one" do
    {worker, id} = start_worker(["--max-buffer", "100000"])
    Forwarder.attach([@stop])
    register!(id, worker)
    assert stream(id).protocol == :batched

    emit(worker, 5_000)
    PythonWorker.run(worker, %{"op" => "wait_sent", "timeout_ms" => 30_000})

    stamps =
      for _ <- 1..5_000 do
        assert_receive {:telemetry, @stop, _, %{worker_id: ^id, timestamp_ns: ts}}, 10_000
        ts
      end

    assert stamps == Enum.sort(stamps)
    stats = PythonWorker.stats(worker)
    # Fewer messages than events: they were packed.
    assert stats["sent_batches"] < 5_000
    wait_until(fn -> stream(id).received == stats["sent"] end)
    # Counted as emitted once the Dispatcher acknowledges the batch, after its handlers.
    wait_until(fn -> stream(id).emitted == 5_000 end)
    assert %{emitted: 5_000} = stream(id)
  end

  test "the worker sizes its batches to what the NIF reads (x-snakepit-max-message-bytes)" do
    # The NIF reads batched messages up to max(max_batch_bytes, max_event_bytes + 16): 64 KiB
    # here, where the worker's own default is 1 MiB. A backlog of ~800 KiB, emitted before
    # the stream opens, must arrive whole, in messages the NIF accepts.
    restart_app_for_test(max_batch_bytes: 65_536, max_event_bytes: 8_192)
    {worker, id} = start_worker(["--max-buffer", "10000"])
    Forwarder.attach([@stop])

    PythonWorker.run(worker, %{
      "op" => "emit",
      "event" => "tool.execution.stop",
      "measurements" => %{"duration" => 1},
      "metadata" => %{"tool" => String.duplicate("t", 60)},
      "count" => 8_000
    })

    register!(id, worker)
    assert stream(id).protocol == :batched
    for _ <- 1..8_000, do: assert_receive({:telemetry, @stop, _, %{worker_id: ^id}}, 10_000)
    stats = PythonWorker.stats(worker)
    assert stats["sent_batches"] >= 12
    wait_until(fn -> stream(id).received == stats["sent"] end)
    # Counted as emitted once the Dispatcher acknowledges the batch, after its handlers.
    wait_until(fn -> stream(id).emitted == 8_000 end)
    assert %{emitted: 8_000, dropped: dropped} = stream(id)
    assert Map.get(dropped, :oversize, 0) == 0
  end

  test "a bad event inside a batch is dropped alone; the rest of the batch arrives" do
    {worker, id} = start_worker()
    Forwarder.attach([@stop])
    register!(id, worker)
    assert stream(id).protocol == :batched

    PythonWorker.run(worker, %{"op" => "raw_hex", "hex" => Proto.hex(<<0xFF, 0xFF, 0xFF>>)})
    emit(worker, 3)
    for _ <- 1..3, do: assert_receive({:telemetry, @stop, _, %{worker_id: ^id}}, 10_000)

    wait_until(fn ->
      match?(%{received: 4, emitted: 3, dropped: %{decode_error: 1}}, stream(id))
    end)
  end

  test "a worker without the batched RPC (as Snakepit's) gets StreamTelemetry" do
    {worker, id} = start_worker(["--no-batched"])
    Forwarder.attach([@stop])
    register!(id, worker)
    assert stream(id).protocol == :single
    emit(worker, 10)
    for _ <- 1..10, do: assert_receive({:telemetry, @stop, _, %{worker_id: ^id}}, 10_000)
    assert %{status: :connected, protocol: :single} = stream(id)
  end
end
