defmodule Snakepit.Telemetry.ConservationTest do
  # Every event accounted for, at both ends: a real worker whose queue overflows, a NIF
  # whose buffer overflows behind a slow handler, and afterwards
  # emitted == delivered + source drops + NIF drops, exactly, per reason.
  use ExUnit.Case, async: false

  alias Snakepit.Telemetry.Test.PythonWorker

  import Snakepit.Telemetry.Test.Streams

  @stop [:snakepit, :python, :tool, :execution, :stop]
  @dropped [:snakepit, :python, :telemetry, :dropped]

  def count_event(event, measurements, metadata, {table, id}) do
    if metadata.worker_id == id do
      case event do
        @stop ->
          Process.sleep(1)
          :ets.update_counter(table, :delivered, 1, {:delivered, 0})

        @dropped ->
          key = {:source, metadata.reason}
          :ets.update_counter(table, key, measurements.count, {key, 0})
      end
    end
  end

  test "emitted == delivered + source drops + NIF drops, per reason, with both ends overflowing" do
    restart_app_for_test(max_buffer_size: 64, max_batch_size: 16, max_in_flight_batches: 1)
    # StreamTelemetry: the NIF reads on and drops past its buffer, so both ends drop.
    {worker, id} = start_worker(["--no-batched", "--max-buffer", "200"])
    {table, source} = emit_5000_and_settle(worker, id)

    info = stream(id)
    delivered = :ets.lookup_element(table, :delivered, 2)
    reported = for {{:source, reason}, n} <- :ets.tab2list(table), into: %{}, do: {reason, n}
    nif_drops = Enum.sum(Map.values(info.dropped))
    source_by_reason = for {reason, n} <- source["dropped"], n > 0, into: %{}, do: {reason, n}

    assert source["emitted"] == 5_000
    assert delivered + Enum.sum(Map.values(reported)) + nif_drops == 5_000
    assert reported == source_by_reason
    assert info.source_dropped == source_by_reason
    assert source_by_reason["overflow"] > 0
    assert info.dropped.overflow > 0
    # Every message the NIF received was an event delivered, a drop report, or a NIF drop.
    reports = info.emitted - delivered
    assert reports > 0
    assert info.received == delivered + reports + nif_drops
  end

  test "batched: the NIF holds the worker back instead of dropping; every drop is the worker's, counted and reported" do
    restart_app_for_test(max_buffer_size: 64, max_batch_size: 16, max_in_flight_batches: 1)
    {worker, id} = start_worker(["--max-buffer", "200"])
    {table, _source} = emit_5000_and_settle(worker, id)
    assert stream(id).protocol == :batched

    info = stream(id)
    delivered = :ets.lookup_element(table, :delivered, 2)
    reported = for {{:source, reason}, n} <- :ets.tab2list(table), into: %{}, do: {reason, n}

    assert Enum.sum(Map.values(info.dropped)) == 0, "the NIF dropped: #{inspect(info.dropped)}"
    assert delivered + Enum.sum(Map.values(reported)) == 5_000
    assert reported["overflow"] > 0
    assert info.source_dropped == reported
  end

  # Counts this worker's delivered events and reported drops (count_event/4), has it emit
  # 5,000 events, and waits until everything is settled: the NIF has handled every message,
  # the handlers every batch, and the worker's last drop report has arrived. Returns the
  # count table and the worker's own stats.
  defp emit_5000_and_settle(worker, id) do
    table = :ets.new(:conservation, [:public, :set])
    handler = "conservation-#{id}"

    :ok =
      :telemetry.attach_many(handler, [@stop, @dropped], &__MODULE__.count_event/4, {table, id})

    on_exit(fn -> :telemetry.detach(handler) end)
    register!(id, worker)

    for _ <- 1..5 do
      PythonWorker.run(worker, %{
        "op" => "emit",
        "event" => "tool.execution.stop",
        "measurements" => %{"duration" => 1},
        "count" => 1_000
      })
    end

    PythonWorker.run(worker, %{"op" => "wait_sent", "timeout_ms" => 60_000})
    source = PythonWorker.stats(worker)

    wait_until(
      fn ->
        info = stream(id)

        info.received == PythonWorker.stats(worker)["sent"] and
          info.emitted + Enum.sum(Map.values(info.dropped)) == info.received and
          Enum.sum(Map.values(info.source_dropped)) == source["dropped_total"]
      end,
      60_000
    )

    {table, source}
  end
end
