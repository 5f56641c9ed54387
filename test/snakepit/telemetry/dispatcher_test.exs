defmodule Snakepit.Telemetry.DispatcherTest do
  # Handlers of different workers run in parallel Dispatcher partitions: real workers, a
  # handler stuck on one worker's events, and per-worker order.
  use ExUnit.Case, async: false

  alias Snakepit.Telemetry.Dispatcher
  alias Snakepit.Telemetry.Test.{Forwarder, PythonWorker}

  import Snakepit.Telemetry.Test.Streams

  doctest Dispatcher

  @stop [:snakepit, :python, :tool, :execution, :stop]

  setup do
    restart_app_for_test(dispatchers: 4)
    :ok
  end

  # Two worker ids whose events go to different partitions.
  defp ids_in_two_partitions do
    [a | rest] = for n <- 1..100, do: "part-#{System.unique_integer([:positive])}-#{n}"
    b = Enum.find(rest, &(Dispatcher.partition(&1) != Dispatcher.partition(a)))
    {a, b}
  end

  defp emit(worker, tool, count) do
    PythonWorker.run(worker, %{
      "op" => "emit",
      "event" => "tool.execution.stop",
      "measurements" => %{"duration" => 1},
      "metadata" => %{"tool" => tool},
      "count" => count
    })
  end

  test "there are as many Dispatchers as configured, each registered" do
    assert Dispatcher.partition_count() == 4
    pids = Dispatcher.pids()
    assert length(pids) == 4 and Enum.all?(pids, &is_pid/1)
    assert length(Enum.uniq(pids)) == 4
  end

  test "each Dispatcher keeps a heap of at least about 1 MiB, also when it comes back after a kill" do
    for pid <- Dispatcher.pids(), do: assert(heap_floor(pid) == 121_536)
    [first | _] = Dispatcher.pids()
    Process.exit(first, :kill)

    successor =
      Enum.find_value(1..500, fn _ ->
        case Dispatcher.pids() do
          [pid | _] when is_pid(pid) and pid != first -> pid
          _ -> Process.sleep(10) && nil
        end
      end)

    assert is_pid(successor)
    assert heap_floor(successor) == 121_536
  end

  defp heap_floor(pid) do
    {:garbage_collection, gc} = Process.info(pid, :garbage_collection)
    Keyword.fetch!(gc, :min_heap_size)
  end

  test "a handler stuck on one worker's events stalls only that worker's partition" do
    {slow_id, fast_id} = ids_in_two_partitions()
    {slow, _} = start_worker()
    {fast, _} = start_worker()

    on_exit(fn ->
      Enum.each([slow_id, fast_id], &Snakepit.Telemetry.GrpcStream.unregister_worker/1)
    end)

    gated = Forwarder.attach_gated(@stop, slow_id)
    on_exit(fn -> :telemetry.detach(elem(gated, 0)) end)
    Forwarder.attach([@stop])
    register!(slow_id, slow)
    register!(fast_id, fast)

    emit(slow, "slow", 10)
    assert_receive {:stuck, stuck_dispatcher}, 10_000
    assert stuck_dispatcher == Dispatcher.whereis(slow_id)

    emit(fast, "fast", 100)
    for _ <- 1..100, do: assert_receive({:telemetry, @stop, _, %{worker_id: ^fast_id}}, 10_000)

    Forwarder.release(gated, stuck_dispatcher)
    for _ <- 1..10, do: assert_receive({:telemetry, @stop, _, %{worker_id: ^slow_id}}, 10_000)
  end

  test "each worker's events keep their order, whichever partition runs them" do
    workers = for _ <- 1..4, do: start_worker()
    Forwarder.attach([@stop])

    for {worker, id} <- workers do
      register!(id, worker)

      PythonWorker.run(worker, %{
        "op" => "emit",
        "event" => "tool.execution.stop",
        "measurements" => %{"duration" => 1},
        "count" => 300
      })
    end

    # timestamp_ns is the worker's wall clock at emit: per worker it must never go back.
    received =
      for _ <- 1..(4 * 300) do
        assert_receive {:telemetry, @stop, _, %{worker_id: id, timestamp_ns: ts}}, 10_000
        {id, ts}
      end

    for {_worker, id} <- workers do
      stamps = for {^id, ts} <- received, do: ts
      assert length(stamps) == 300
      assert stamps == Enum.sort(stamps)
    end
  end
end
