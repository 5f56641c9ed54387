defmodule Snakepit.Telemetry.DropReportTotalsTest do
  # A worker's drop report carries its reason's running total, so that a report lost on a
  # broken call is made up by the next one of its reason: the NIF raises that report's
  # :count by what never arrived, and :source_dropped stays the worker's own count. The
  # reports are put on a real worker's stream as they would arrive after such a loss
  # (the totals jump), over real gRPC into the real NIF.
  use ExUnit.Case, async: false

  alias Snakepit.Telemetry.Test.{Forwarder, Proto, PythonWorker}

  import Snakepit.Telemetry.Test.Streams

  @dropped [:snakepit, :python, :telemetry, :dropped]
  @timeout 10_000

  defp report(worker, reason, measurements) do
    bytes = Proto.event("telemetry.dropped", measurements, %{"reason" => reason})
    PythonWorker.run(worker, %{"op" => "raw_hex", "hex" => Proto.hex(bytes)})
  end

  test "reports that never arrived are made up from the next one's total, per reason" do
    {worker, id} = start_worker()
    Forwarder.attach([@dropped])
    register!(id, worker)

    report(worker, "overflow", %{count: 3, total: 3})
    # Reports of 4 and 5 were lost: this one says 2 more, 14 in all.
    report(worker, "overflow", %{count: 2, total: 14})
    report(worker, "encode_error", %{count: 1, total: 1})
    report(worker, "overflow", %{count: 1, total: 15})
    # A worker that sends no total (an older one) is taken at its word.
    report(worker, "disabled", %{count: 5})

    for {count, total, reason} <- [
          {3, 3, "overflow"},
          {11, 14, "overflow"},
          {1, 1, "encode_error"},
          {1, 15, "overflow"}
        ] do
      assert_receive {:telemetry, @dropped, %{count: ^count, total: ^total},
                      %{reason: ^reason, worker_id: ^id}},
                     @timeout
    end

    assert_receive {:telemetry, @dropped, %{count: 5} = measurements, %{reason: "disabled"}},
                   @timeout

    refute Map.has_key?(measurements, :total)

    wait_until(fn ->
      stream(id).source_dropped == %{"overflow" => 15, "encode_error" => 1, "disabled" => 5}
    end)
  end
end
