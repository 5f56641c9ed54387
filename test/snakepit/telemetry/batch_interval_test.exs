defmodule Snakepit.Telemetry.BatchIntervalTest do
  # `min_batch_interval_us`: while the Dispatcher holds none of a stream's batches, a batch
  # that is not full waits until the interval has passed since the stream's previous one.
  # A real worker on Snakepit's one-event-per-message protocol, the real NIF; the batches
  # are counted where they arrive (the Dispatcher's receive, traced).
  use ExUnit.Case, async: false

  alias Snakepit.Telemetry.{Dispatcher, GrpcStream}
  alias Snakepit.Telemetry.Test.PythonWorker

  import Snakepit.Telemetry.Test.Streams

  @stop [:snakepit, :python, :tool, :execution, :stop]
  @emit %{"op" => "emit", "event" => "tool.execution.stop", "measurements" => %{"duration" => 1}}

  def forward(_event, _measurements, metadata, {pid, id}) do
    if metadata.worker_id == id, do: send(pid, {:event, metadata.correlation_id})
  end

  # Starts a StreamTelemetry-only worker, registers it, and traces what its Dispatcher
  # receives; returns the worker and its id.
  defp start_traced_worker do
    {worker, id} = start_worker(["--no-batched"])
    register!(id, worker)
    assert stream(id).protocol == :single
    handler = {__MODULE__, id}
    :ok = :telemetry.attach(handler, @stop, &__MODULE__.forward/4, {self(), id})
    on_exit(fn -> :telemetry.detach(handler) end)
    dispatcher = Dispatcher.whereis(id)
    :erlang.trace(dispatcher, true, [:receive])

    on_exit(fn ->
      if Process.alive?(dispatcher), do: :erlang.trace(dispatcher, false, [:receive])
    end)

    {worker, id}
  end

  # Emits one event tagged `tag` (its correlation id).
  defp emit(worker, tag), do: PythonWorker.run(worker, Map.put(@emit, "correlation_id", tag))

  defp await_events(tags) do
    for tag <- tags, do: assert_receive({:event, ^tag}, 30_000)
  end

  # The batch messages the Dispatcher received for `id` so far.
  defp batches_received(id) do
    receive do
      {:trace, _pid, :receive, {:snakepit_telemetry_batch, _batch, ^id, _generation, _node}} ->
        1 + batches_received(id)

      {:trace, _pid, :receive, _other} ->
        batches_received(id)
    after
      0 -> 0
    end
  end

  # One event, then five 20 ms apart: returns how many batches carried the five.
  defp five_after_one(worker, id) do
    emit(worker, "first")
    await_events(["first"])
    assert batches_received(id) == 1

    for i <- 1..5 do
      emit(worker, "later-#{i}")
      Process.sleep(20)
    end

    await_events(for i <- 1..5, do: "later-#{i}")
    batches_received(id)
  end

  test "events that come one per message wait for the interval and leave in one batch" do
    # An interval far longer than the five take to arrive (about 100 ms).
    restart_app_for_test(min_batch_interval_us: 3_000_000)
    {worker, id} = start_traced_worker()
    assert five_after_one(worker, id) == 1
    assert stream(id).emitted == 6
  end

  test "with an interval of 0 every event leaves as it comes" do
    restart_app_for_test(min_batch_interval_us: 0)
    {worker, id} = start_traced_worker()
    # The Dispatcher is idle between them (20 ms apart): each event is a batch of its own.
    assert five_after_one(worker, id) == 5
  end

  test "a toggle removes the events waiting for the interval, counted as disabled" do
    restart_app_for_test(min_batch_interval_us: 3_000_000)
    {worker, id} = start_traced_worker()
    emit(worker, "first")
    await_events(["first"])
    # Within the interval: these wait in the NIF's buffer.
    emit(worker, "held-1")
    emit(worker, "held-2")
    wait_until(fn -> stream(id).received == 2 + 1 end)
    assert :ok = GrpcStream.toggle(id, false)
    wait_until(fn -> stream(id).dropped.disabled == 2 end)
    refute_receive {:event, "held-" <> _}, 3_500
    info = stream(id)
    assert info.emitted == 1
    assert info.received == info.emitted + info.dropped.disabled
  end

  test "unregistering sends the events waiting for the interval instead of dropping them" do
    restart_app_for_test(min_batch_interval_us: 3_000_000)
    {worker, id} = start_traced_worker()
    closed = {__MODULE__, :closed, id}
    test_pid = self()

    :ok =
      :telemetry.attach(
        closed,
        [:snakepit, :grpc, :stream, :closed],
        fn _event, measurements, metadata, _config ->
          if metadata.worker_id == id, do: send(test_pid, {:closed, measurements.message_count})
        end,
        nil
      )

    on_exit(fn -> :telemetry.detach(closed) end)
    emit(worker, "first")
    await_events(["first"])
    emit(worker, "held-1")
    emit(worker, "held-2")
    wait_until(fn -> stream(id).received == 2 + 1 end)
    # Still waiting: the interval (3 s) runs from the first event's batch.
    refute_received {:event, "held-" <> _}
    assert :ok = GrpcStream.unregister_worker(id)
    # Far sooner than the interval: they left when the registration ended.
    assert_receive {:event, "held-1"}, 1_000
    assert_receive {:event, "held-2"}, 1_000
    # The closed stream counts them as sent: none was dropped as undeliverable.
    assert_receive {:closed, 3}, 1_000
  end
end
