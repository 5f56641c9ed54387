defmodule Snakepit.Telemetry.ReconnectTest do
  # Streams that survive their worker: real Python workers killed with SIGKILL and started
  # again, a port that accepts and never answers, the real NIF's retries.
  use ExUnit.Case, async: false

  alias Snakepit.Telemetry.{Dispatcher, GrpcStream}
  alias Snakepit.Telemetry.Test.{Forwarder, PythonWorker}

  import Snakepit.Telemetry.Test.Streams

  @stop [:snakepit, :python, :tool, :execution, :stop]
  @memory [:snakepit, :python, :memory, :sampled]
  @connection [:snakepit, :grpc, :connection]
  @stream [:snakepit, :grpc, :stream]
  @timeout 15_000

  setup do
    restart_app_for_test(reconnect: [initial_ms: 50, max_ms: 500])
    :ok
  end

  defp emit(worker, event, extra) do
    PythonWorker.run(
      worker,
      Map.merge(%{"op" => "emit", "event" => event, "measurements" => %{"duration" => 1}}, extra)
    )
  end

  test "a hand-registered worker killed with SIGKILL and started again on its port streams again by itself, with the settings made while it was down" do
    {first, id} = start_worker()

    Forwarder.attach([
      @stop,
      @memory,
      @connection ++ [:established],
      @connection ++ [:lost],
      @connection ++ [:reconnected],
      @stream ++ [:opened],
      @stream ++ [:closed]
    ])

    register!(id, first, pool_name: :survivors)

    assert_receive {:telemetry, [:snakepit, :grpc, :connection, :established], _,
                    %{worker_id: ^id, stream_id: generation}},
                   @timeout

    emit(first, "tool.execution.stop", %{"metadata" => %{"tool" => "before"}})
    assert_receive {:telemetry, @stop, _, %{worker_id: ^id, tool: "before"}}, @timeout

    System.cmd("kill", ["-9", Integer.to_string(first.os_pid)])
    assert PythonWorker.await_exit(first) == 137

    assert_receive {:telemetry, [:snakepit, :grpc, :connection, :lost], %{uptime: uptime},
                    %{worker_id: ^id, stream_id: ^generation, reason: reason}},
                   @timeout

    assert is_integer(uptime) and uptime >= 0
    assert reason == :worker_closed or match?({:stream_error, _}, reason)

    assert_receive {:telemetry, [:snakepit, :grpc, :stream, :closed], %{message_count: 1},
                    %{worker_id: ^id, reason: ^reason}},
                   @timeout

    wait_until(fn -> match?(%{status: :reconnecting, attempt: n} when n >= 1, stream(id)) end)
    assert %{connected_since: nil, last_error: {:connect_failed, _}} = stream(id)

    # Made while no stream is open: the new worker must get it, and the NIF applies it too.
    :ok = GrpcStream.update_filter(id, deny: ["python.memory.*"])

    second = PythonWorker.start(["--port", first.tcp_port])
    on_exit(fn -> PythonWorker.stop(second) end)

    assert_receive {:telemetry, [:snakepit, :grpc, :connection, :reconnected],
                    %{downtime: downtime, retry_count: retries},
                    %{worker_id: ^id, stream_id: ^generation}},
                   @timeout

    assert downtime > 0 and retries >= 1

    assert_receive {:telemetry, [:snakepit, :grpc, :stream, :opened], _, %{worker_id: ^id}},
                   @timeout

    PythonWorker.await_policy(second, &(&1["deny"] == ["python.memory.*"]))

    emit(second, "python.memory.sampled", %{"measurements" => %{"rss_bytes" => 1}})
    emit(second, "tool.execution.stop", %{"metadata" => %{"tool" => "after"}})

    assert_receive {:telemetry, @stop, _,
                    %{worker_id: ^id, tool: "after", pool_name: :survivors}},
                   @timeout

    refute_received {:telemetry, @memory, _, _}
    # Counted as emitted once the Dispatcher acknowledges the batch, after its handlers: the
    # two stop events and the worker's report of the event it filtered out (which may come
    # before or after the stop event).
    wait_until(fn -> match?(%{emitted: 3, source_dropped: %{"filtered_out" => 1}}, stream(id)) end)

    assert %{status: :connected, attempt: 0, last_error: nil, emitted: 3} = stream(id)
    assert PythonWorker.stats(second)["dropped"]["filtered_out"] == 1
  end

  test "stream and connection events that happen while the worker's Dispatcher is down reach the handlers once it is back, in order" do
    {first, id} = start_watched_worker()

    # Its partition's Dispatcher stopped (not restarted yet): the NIF has no one to send to.
    child = {Dispatcher, Dispatcher.partition(id)}
    :ok = Supervisor.terminate_child(Snakepit.Telemetry.Supervisor, child)

    System.cmd("kill", ["-9", Integer.to_string(first.os_pid)])
    assert PythonWorker.await_exit(first) == 137
    wait_until(fn -> match?(%{status: :reconnecting}, stream(id)) end)

    second = PythonWorker.start(["--port", first.tcp_port])
    on_exit(fn -> PythonWorker.stop(second) end)
    wait_until(fn -> stream(id).status == :connected end)
    refute_received {:telemetry, _, _, %{worker_id: ^id}}

    {:ok, _} = Supervisor.restart_child(Snakepit.Telemetry.Supervisor, child)

    assert_lost_and_reconnected(id)

    # The registration ends while the Dispatcher is down: its last event waits for it too.
    :ok = Supervisor.terminate_child(Snakepit.Telemetry.Supervisor, child)
    :ok = GrpcStream.unregister_worker(id)
    Process.sleep(100)
    {:ok, _} = Supervisor.restart_child(Snakepit.Telemetry.Supervisor, child)

    assert_receive {:telemetry, [:snakepit, :grpc, :stream, :closed], _,
                    %{worker_id: ^id, reason: :unregistered}},
                   @timeout

    refute_received {:telemetry, _, _, %{worker_id: ^id}}
  end

  test "stream and connection events in the mailbox of a Dispatcher that is killed reach the handlers through its successor, in order" do
    {first, id} = start_watched_worker()

    # The Dispatcher takes the loss and the reconnection into its mailbox but runs nothing.
    dispatcher = Dispatcher.whereis(id)
    :ok = :sys.suspend(dispatcher)
    System.cmd("kill", ["-9", Integer.to_string(first.os_pid)])
    assert PythonWorker.await_exit(first) == 137

    wait_until(fn ->
      match?({:message_queue_len, 1}, Process.info(dispatcher, :message_queue_len))
    end)

    second = PythonWorker.start(["--port", first.tcp_port])
    on_exit(fn -> PythonWorker.stop(second) end)

    wait_until(fn ->
      match?({:message_queue_len, 2}, Process.info(dispatcher, :message_queue_len))
    end)

    refute_received {:telemetry, _, _, %{worker_id: ^id}}

    # Killed with both messages unread: its successor gets them.
    Process.exit(dispatcher, :kill)

    assert_lost_and_reconnected(id)

    # The registration's last message too, though its task has nothing else left to do.
    successor = Dispatcher.whereis(id)
    refute successor in [nil, dispatcher]
    :ok = :sys.suspend(successor)
    :ok = GrpcStream.unregister_worker(id)

    wait_until(fn ->
      match?({:message_queue_len, 1}, Process.info(successor, :message_queue_len))
    end)

    Process.exit(successor, :kill)

    assert_receive {:telemetry, [:snakepit, :grpc, :stream, :closed], _,
                    %{worker_id: ^id, reason: :unregistered}},
                   @timeout

    Process.sleep(200)
    refute_received {:telemetry, _, _, %{worker_id: ^id}}
  end

  test "a receiver that takes status messages and never acknowledges them gets each at most 4 times" do
    {worker, id} = start_watched_worker()
    # This process stands in for the Dispatcher, as an old one would after a bad upgrade.
    partition = Dispatcher.partition(id)
    {:ok, :ok} = Snakepit.Telemetry.Native.set_receiver(GrpcStream.runtime(), partition, self())

    System.cmd("kill", ["-9", Integer.to_string(worker.os_pid)])
    assert PythonWorker.await_exit(worker) == 137

    # Each copy is dropped unread (and collected), so its ticket hands it back: sent again
    # three times, then no more.
    copies =
      Stream.repeatedly(fn ->
        receive do
          {:snakepit_telemetry_stream, ^id, _, {:lost, _, _}, _, _ticket} ->
            :erlang.garbage_collect()
            :copy
        after
          1_000 -> :none
        end
      end)
      |> Enum.take_while(&(&1 == :copy))

    assert length(copies) == 4
  end

  # A worker registered with its stream and connection events forwarded here, once its
  # stream has opened.
  defp start_watched_worker do
    {worker, id} = start_worker()

    events =
      [@stream ++ [:opened], @stream ++ [:closed]] ++
        for(e <- [:established, :lost, :reconnected], do: @connection ++ [e])

    Forwarder.attach(events)
    register!(id, worker)

    assert_receive {:telemetry, [:snakepit, :grpc, :connection, :established], _,
                    %{worker_id: ^id}},
                   @timeout

    assert_receive {:telemetry, [:snakepit, :grpc, :stream, :opened], _, %{worker_id: ^id}}
    {worker, id}
  end

  # The next four events of `id`: a stream lost and opened again, in order.
  defp assert_lost_and_reconnected(id) do
    assert [
             [:snakepit, :grpc, :stream, :closed],
             [:snakepit, :grpc, :connection, :lost],
             [:snakepit, :grpc, :stream, :opened],
             [:snakepit, :grpc, :connection, :reconnected]
           ] = for(_ <- 1..4, do: next_event(id))
  end

  defp next_event(id) do
    receive do
      {:telemetry, event, _, %{worker_id: ^id}} -> event
    after
      @timeout -> flunk("no stream event for #{id}")
    end
  end

  test "a port that accepts and never answers is a failed attempt after connect_timeout, not a hang" do
    restart_app_for_test(connect_timeout: 200, reconnect: [initial_ms: 20, max_ms: 50])
    {:ok, listener} = :gen_tcp.listen(0, [:binary, active: false, reuseaddr: true])
    {:ok, port} = :inet.port(listener)
    silent = spawn_link(fn -> accept_and_hold(listener, []) end)
    on_exit(fn -> Process.exit(silent, :kill) end)

    id = "silent-#{System.unique_integer([:positive])}"
    on_exit(fn -> GrpcStream.unregister_worker(id) end)
    assert :ok = GrpcStream.register_worker(id, "127.0.0.1:#{port}")

    wait_until(fn -> stream(id).attempt >= 2 end, @timeout)

    assert %{status: :connecting, last_error: {:connect_failed, "no response within 200 ms"}} =
             stream(id)

    # The manager answers all along.
    assert :ok = GrpcStream.toggle(id, false)
    assert :ok = GrpcStream.unregister_worker(id)
    assert stream(id) == nil
  end

  test "an invalid reconnect or connect_timeout config is refused with the key named" do
    assert_raise ArgumentError, ~r/invalid :reconnect .* max_ms >= initial_ms/, fn ->
      Snakepit.Telemetry.Config.load!(reconnect: [initial_ms: 500, max_ms: 100])
    end

    assert_raise ArgumentError, ~r/invalid :reconnect/, fn ->
      Snakepit.Telemetry.Config.load!(reconnect: [initial: 5])
    end

    assert_raise ArgumentError, ~r/invalid :connect_timeout .* positive integer/, fn ->
      Snakepit.Telemetry.Config.load!(connect_timeout: 0)
    end

    assert Snakepit.Telemetry.Config.load!(reconnect: [max_ms: 900]).reconnect ==
             [initial_ms: 100, max_ms: 900]
  end

  defp accept_and_hold(listener, held) do
    case :gen_tcp.accept(listener) do
      {:ok, socket} -> accept_and_hold(listener, [socket | held])
      {:error, _} -> :ok
    end
  end
end
