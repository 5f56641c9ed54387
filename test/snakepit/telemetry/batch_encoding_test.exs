defmodule Snakepit.Telemetry.BatchEncodingTest do
  # Within one batch the NIF builds an event's maps as updates of the previous event's when
  # they match (encode.rs). A differential test: the same events, once each in a batch of
  # its own (every map built from scratch) and once all in one batch, must reach the
  # handler as the same terms, bit for bit (term_to_binary tells -0.0 from 0.0).
  use ExUnit.Case, async: false

  alias Snakepit.Telemetry.Test.{Forwarder, Proto, PythonWorker}

  import Snakepit.Telemetry.Test.Streams

  @stop [:snakepit, :python, :tool, :execution, :stop]
  @cpu [:snakepit, :python, :cpu, :sampled]
  @timeout 10_000

  # {name, measurements, metadata, timestamp_ns, correlation_id}: each differs from the one
  # before in one way (or not at all), so that every branch of the update path is taken.
  @wide Map.new(1..40, &{"w#{&1}", "v#{&1}"})
  @events [
    {"tool.execution.stop", %{duration: 10}, %{"tool" => "a", "user" => "x"}, 1_000, nil},
    {"tool.execution.stop", %{duration: 10}, %{"tool" => "a", "user" => "x"}, 1_000, nil},
    {"tool.execution.stop", %{duration: 11}, %{"tool" => "a", "user" => "x"}, 2_000, "c1"},
    {"tool.execution.stop", %{duration: 11}, %{"tool" => "a", "user" => "x"}, 2_000, "c2"},
    {"tool.execution.stop", %{duration: 11}, %{"tool" => "a", "user" => "x"}, 2_000, nil},
    {"tool.execution.stop", %{duration: 12}, %{"tool" => "b", "user" => "x"}, 3_000, "c2"},
    {"tool.execution.stop", %{duration: 12}, %{"user" => "x", "tool" => "b"}, 3_000, "c2"},
    {"python.cpu.sampled", %{cpu_percent: 0.0}, %{"tool" => "b", "user" => "x"}, 3_000, nil},
    {"python.cpu.sampled", %{cpu_percent: :neg_zero}, %{"tool" => "b", "user" => "x"}, 3_000,
     nil},
    {"python.cpu.sampled", %{cpu_percent: 1.5}, %{"tool" => "b", "user" => "x"}, 4_000, nil},
    {"tool.execution.stop", %{duration: 13}, %{}, 5_000, nil},
    {"tool.execution.stop", %{duration: 13}, %{}, 5_000, nil},
    {"tool.execution.stop", %{duration: 14}, @wide, 6_000, nil},
    {"tool.execution.stop", %{duration: 14}, @wide, 7_000, "c3"},
    {"tool.execution.stop", %{duration: 15}, %{"tool" => "a", "user" => "x"}, 8_000, nil}
  ]

  setup do
    restart_app_for_test(max_in_flight_batches: 1, max_metadata_keys: 64)
    {worker, id} = start_worker()
    register!(id, worker)
    %{worker: worker, id: id}
  end

  defp send_event(worker, {name, measurements, metadata, ts, correlation_id}) do
    bytes =
      Proto.event(name, measurements, metadata, timestamp_ns: ts, correlation_id: correlation_id)

    PythonWorker.run(worker, %{"op" => "raw_hex", "hex" => Proto.hex(bytes)})
  end

  defp received(id, count) do
    for _ <- 1..count do
      assert_receive {:telemetry, event, measurements, %{worker_id: ^id} = metadata}, @timeout
      {event, measurements, metadata}
    end
  end

  test "maps made as updates of the previous event's are the maps made from scratch", %{
    worker: worker,
    id: id
  } do
    Forwarder.attach([@stop, @cpu])

    # Each in a batch of its own: the next is sent once the handler has seen the last.
    one_by_one =
      for event <- @events do
        send_event(worker, event)
        hd(received(id, 1))
      end

    # All in one batch: the Dispatcher is held on a first event (one batch in flight at
    # most), the others wait in the NIF's buffer and leave together once it lets go.
    gated = Forwarder.attach_gated(@stop, id)
    send_event(worker, hd(@events))
    assert_receive {:stuck, dispatcher}, @timeout
    received_before = stream(id).received
    Enum.each(@events, &send_event(worker, &1))
    wait_until(fn -> stream(id).received == received_before + length(@events) end)
    Forwarder.release(gated, dispatcher)
    [_held | batched] = received(id, length(@events) + 1)

    assert batched == one_by_one
    assert :erlang.term_to_binary(batched) == :erlang.term_to_binary(one_by_one)

    assert Enum.map(one_by_one, fn {_, m, _} -> m end)
           |> Enum.at(8)
           |> Map.fetch!(:cpu_percent)
           |> then(&<<&1::float>>) ==
             <<0x80, 0, 0, 0, 0, 0, 0, 0>>

    assert stream(id).dropped |> Map.values() |> Enum.sum() == 0
  end
end
