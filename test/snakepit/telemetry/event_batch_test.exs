defmodule Snakepit.Telemetry.EventBatchTest do
  # A batch reaches its receiver as a resource, and the receiver makes the terms itself
  # (`Native.take_events/1`), at most about 200 µs of them per call (event_batch.rs). This
  # process stands in for the Dispatcher of a worker's partition and takes the batches.
  use ExUnit.Case, async: false

  alias Snakepit.Telemetry.{Dispatcher, GrpcStream, Native}
  alias Snakepit.Telemetry.Test.{Proto, PythonWorker}

  import Snakepit.Telemetry.Test.Streams

  @timeout 10_000
  @events 1_000

  setup do
    # One batch may hold every event, so that a batch has more than one call's worth.
    restart_app_for_test(max_batch_size: @events, max_in_flight_batches: 1)
    {worker, id} = start_worker()
    partition = Dispatcher.partition(id)
    {:ok, :ok} = Native.set_receiver(GrpcStream.runtime(), partition, self())
    register!(id, worker)
    %{worker: worker, id: id}
  end

  test "a batch of wide events is taken in several calls, every event once, in order", %{
    worker: worker,
    id: id
  } do
    emit_wide_into_nif(worker, id)
    calls = take_batches(id, @events, [])
    events = calls |> Enum.flat_map(fn {_more, events} -> events end)

    assert length(events) == @events
    assert Enum.any?(calls, &match?({:more, _}, &1))
    # Every call returns at least one event, and a batch ends with :done.
    assert Enum.all?(calls, fn {_, events} -> events != [] end)
    assert {:done, _} = List.last(calls)

    for {event, measurements, metadata} <- events do
      assert event == [:snakepit, :python, :tool, :execution, :stop]
      assert measurements == %{duration: 5}
      assert map_size(metadata) == 120 + 4
    end

    timestamps = for {_, _, metadata} <- events, do: metadata.timestamp_ns
    assert timestamps == Enum.sort(timestamps)

    wait_until(fn -> stream(id).emitted == @events end)
    assert stream(id).dropped |> Map.values() |> Enum.sum() == 0
  end

  test "a receiver that dies mid-batch: the chunks it asked past count as emitted, the rest as :undeliverable",
       %{worker: worker, id: id} do
    # A receiver of its own, which acknowledges whole batches until it gets one of several
    # calls; of that one it takes two chunks and dies without acknowledging: it ran the
    # first chunk's handlers (it asked for more), not the second's.
    test = self()

    receiver =
      spawn(fn ->
        receive do
          :go -> die_in_second_chunk(id, test, 0)
        end
      end)

    partition = Dispatcher.partition(id)
    {:ok, :ok} = Native.set_receiver(GrpcStream.runtime(), partition, receiver)

    emit_wide_into_nif(worker, id)
    ref = Process.monitor(receiver)
    send(receiver, :go)
    assert_receive {:took, acked, first_chunk, second_chunk}, @timeout
    assert_receive {:DOWN, ^ref, :process, _, _}, @timeout
    assert first_chunk > 0 and second_chunk > 0

    # The rest of the batch and whatever followed, taken here.
    {:ok, :ok} = Native.set_receiver(GrpcStream.runtime(), partition, self())
    undeliverable_at_least = second_chunk
    wait_until(fn -> Map.get(stream(id).dropped, :undeliverable, 0) >= undeliverable_at_least end)
    undeliverable = stream(id).dropped.undeliverable
    after_death = @events - acked - first_chunk - undeliverable
    seen = take_batches(id, after_death, []) |> Enum.flat_map(fn {_, events} -> events end)
    assert length(seen) == after_death

    # Handlers ran for acked + first_chunk + after_death events: exactly what is emitted.
    wait_until(fn -> stream(id).emitted == acked + first_chunk + after_death end)
    assert stream(id).emitted + undeliverable == @events
    assert undeliverable >= second_chunk
    assert stream(id).dropped |> Map.delete(:undeliverable) |> Map.values() |> Enum.sum() == 0
  end

  test "a batch taken whole answers {:done, []} after", %{worker: worker, id: id} do
    PythonWorker.run(worker, %{
      "op" => "emit",
      "event" => "tool.execution.stop",
      "measurements" => %{"duration" => 5},
      "count" => 3
    })

    # The worker's first event after a quiet spell leaves at once, so the three may come in
    # one batch or in more: each batch is checked.
    take_whole_batches(id, 3)
    wait_until(fn -> stream(id).emitted == 3 end)
  end

  test "a fixed key held as a binary (the catalog lacks it) wins over the worker's key of that name",
       %{worker: worker, id: registered} do
    # A runtime of its own, with this process as its receiver and a catalog without
    # `timestamp_ns` and `correlation_id`: those two fixed keys are binaries in its events.
    # The worker serves one telemetry stream: the application's lets go of it first.
    :ok = GrpcStream.unregister_worker(registered)
    config = Snakepit.Telemetry.Config.load!()
    options = GrpcStream.runtime_options(config)
    catalog = options.catalog
    fixed = ~w(timestamp_ns correlation_id)a
    catalog = %{catalog | metadata_keys: Enum.reject(catalog.metadata_keys, &(&1 in fixed))}
    options = %{options | catalog: catalog, partitions: 1} |> Map.put(:node, node())
    {:ok, runtime} = Native.start([self()], options)
    on_exit(fn -> Native.stop(runtime) end)
    settings = Snakepit.Telemetry.Settings.to_native(Snakepit.Telemetry.Settings.new(config))
    id = "binary-fixed-#{System.unique_integer([:positive])}"

    {:ok, _generation} =
      Native.register_worker(runtime, id, worker.endpoint, [], settings, nil, 0)

    # The event is sent once this runtime's stream is open, not on the one being closed.
    wait_until(fn ->
      Enum.any?(Native.stream_info(runtime), &(&1.worker_id == id and &1.status == :connected))
    end)

    bytes =
      Proto.event(
        "tool.execution.stop",
        %{duration: 1},
        %{"timestamp_ns" => "forged", "correlation_id" => "forged", "tool" => "t"},
        timestamp_ns: 1_234,
        correlation_id: "real"
      )

    PythonWorker.run(worker, %{"op" => "raw_hex", "hex" => Proto.hex(bytes)})
    [{:done, [{_event, _measurements, metadata}]}] = take_batches(id, 1, [])

    assert metadata["timestamp_ns"] == 1_234
    assert metadata["correlation_id"] == "real"
    assert metadata[:tool] == "t"
    refute Map.has_key?(metadata, :timestamp_ns)
  end

  # Has the worker emit @events events of 120 metadata keys (hash maps, made whole for the
  # first event of each call and as updates after it: 1,000 of them take several calls) and
  # waits until the NIF has all of them. Nothing is taken before: with one batch in flight
  # at most, the rest wait in the buffer and leave as one large batch, however they came on
  # the wire.
  defp emit_wide_into_nif(worker, id) do
    PythonWorker.run(worker, %{
      "op" => "emit",
      "event" => "tool.execution.stop",
      "measurements" => %{"duration" => 5},
      "wide" => 120,
      "count" => @events
    })

    wait_until(fn -> stream(id).received >= @events end)
  end

  # Takes batches of `id` until `left` events came, acknowledging each; every call's answer
  # in order. Status messages are acknowledged and otherwise ignored.
  defp take_batches(_id, 0, calls), do: Enum.reverse(calls)

  defp take_batches(id, left, calls) do
    receive do
      {:snakepit_telemetry_batch, batch, ^id, _generation, _node} ->
        batch_calls = take_all(batch, [])
        :ok = Native.ack(batch)
        taken = batch_calls |> Enum.map(fn {_, events} -> length(events) end) |> Enum.sum()
        take_batches(id, left - taken, Enum.reverse(batch_calls) ++ calls)

      {:snakepit_telemetry_stream, _, _, _, _, ticket} ->
        Native.ack_status(ticket)
        take_batches(id, left, calls)
    after
      @timeout -> flunk("#{left} events did not come")
    end
  end

  # Acknowledges whole batches of `id` (counting their events) until one needs more than one
  # call; takes two calls of that one, reports, and returns (the process then ends).
  defp die_in_second_chunk(id, test, acked) do
    receive do
      {:snakepit_telemetry_batch, batch, ^id, _generation, _node} ->
        case Native.take_events(batch) do
          {:done, events} ->
            :ok = Native.ack(batch)
            die_in_second_chunk(id, test, acked + length(events))

          {:more, first} ->
            {_more_or_done, second} = Native.take_events(batch)
            send(test, {:took, acked, length(first), length(second)})
        end

      {:snakepit_telemetry_stream, _, _, _, _, ticket} ->
        Native.ack_status(ticket)
        die_in_second_chunk(id, test, acked)
    after
      @timeout -> send(test, {:gave_up, acked})
    end
  end

  defp take_whole_batches(_id, left) when left <= 0, do: :ok

  defp take_whole_batches(id, left) do
    assert_receive {:snakepit_telemetry_batch, batch, ^id, _generation, node}, @timeout
    assert node == node()
    assert {:done, [_ | _] = events} = Native.take_events(batch)
    assert {:done, []} = Native.take_events(batch)
    assert :ok = Native.ack(batch)
    take_whole_batches(id, left - length(events))
  end

  defp take_all(batch, calls) do
    case Native.take_events(batch) do
      {:more, _} = call -> take_all(batch, [call | calls])
      {:done, _} = call -> Enum.reverse([call | calls])
    end
  end
end
