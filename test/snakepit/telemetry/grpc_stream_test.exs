defmodule Snakepit.Telemetry.GrpcStreamTest do
  # Real Python workers (test/support/python/scripted_worker.py) over real gRPC on
  # loopback, the real NIF, and the application's own GrpcStream process.
  use ExUnit.Case, async: false

  alias Snakepit.Telemetry.GrpcStream
  alias Snakepit.Telemetry.Test.{Forwarder, PythonWorker}

  import Snakepit.Telemetry.Test.Streams

  doctest GrpcStream

  @tool [:snakepit, :python, :tool, :execution]
  @timeout 10_000

  setup do
    {worker, id} = start_worker()
    %{worker: worker, id: id}
  end

  describe "a span in the worker" do
    test "reaches :telemetry handlers as start and stop with exact names, measurements and metadata",
         %{worker: worker, id: id} do
      Forwarder.attach([@tool ++ [:start], @tool ++ [:stop]])
      register!(id, worker, pool_name: :default, python_pid: worker.os_pid)

      before_ns = System.os_time(:nanosecond)

      PythonWorker.run(worker, %{
        "op" => "span",
        "operation" => "tool.execution",
        "metadata" => %{"tool" => "predict"},
        "correlation_id" => "abc-123",
        "sleep_ms" => 20
      })

      assert_receive {:telemetry, [:snakepit, :python, :tool, :execution, :start], start,
                      start_meta},
                     @timeout

      assert_receive {:telemetry, [:snakepit, :python, :tool, :execution, :stop], stop, meta},
                     @timeout

      assert Map.keys(start) == [:system_time]

      assert_in_delta start.system_time,
                      System.convert_time_unit(before_ns, :nanosecond, :native),
                      System.convert_time_unit(5, :second, :native)

      assert Map.keys(stop) == [:duration]
      assert stop.duration >= System.convert_time_unit(20, :millisecond, :native)
      assert stop.duration < System.convert_time_unit(5, :second, :native)

      for m <- [start_meta, meta] do
        assert %{
                 tool: "predict",
                 worker_id: ^id,
                 pool_name: :default,
                 node: node,
                 correlation_id: "abc-123",
                 timestamp_ns: ts
               } = m

        assert m.python_pid == worker.os_pid
        assert node == node()
        assert ts >= before_ns and ts < before_ns + 5_000_000_000
      end
    end

    test "every worker event carries :correlation_id: nil when blank, never the worker's own key",
         %{worker: worker, id: id} do
      Forwarder.attach([@tool ++ [:stop]])
      register!(id, worker)

      for {correlation_id, metadata} <- [
            {nil, %{"tool" => "a"}},
            {"", %{"tool" => "b"}},
            {nil, %{"tool" => "c", "correlation_id" => "forged"}},
            {"real", %{"tool" => "d", "correlation_id" => "forged"}}
          ] do
        PythonWorker.run(worker, %{
          "op" => "emit",
          "event" => "tool.execution.stop",
          "measurements" => %{"duration" => 1},
          "metadata" => metadata,
          "correlation_id" => correlation_id
        })
      end

      got =
        for _ <- 1..4 do
          assert_receive {:telemetry, _, _, meta}, @timeout
          {meta.tool, Map.fetch!(meta, :correlation_id)}
        end

      assert got == [{"a", nil}, {"b", nil}, {"c", nil}, {"d", "real"}]
    end

    test "that raises emits exception with duration, error_type and error_message",
         %{worker: worker, id: id} do
      Forwarder.attach([@tool ++ [:exception]])
      register!(id, worker)

      PythonWorker.run(worker, %{
        "op" => "span",
        "operation" => "tool.execution",
        "metadata" => %{"tool" => "predict"},
        "raise" => true
      })

      assert_receive {:telemetry, [:snakepit, :python, :tool, :execution, :exception],
                      %{duration: d}, meta},
                     @timeout

      assert is_integer(d) and d >= 0

      assert %{error_type: "RuntimeError", error_message: "boom", tool: "predict", worker_id: ^id} =
               meta
    end
  end

  test "bad input is dropped and counted by reason, and the stream goes on", %{
    worker: worker,
    id: id
  } do
    Forwarder.attach([@tool ++ [:stop]])
    register!(id, worker)

    PythonWorker.run(worker, %{
      "op" => "emit",
      "event" => "tool.nope.stop",
      "measurements" => %{"duration" => 1}
    })

    PythonWorker.run(worker, %{
      "op" => "emit",
      "event" => "tool.execution.stop",
      "measurements" => %{"evil_key" => 1}
    })

    # Field 1 (event_parts) claims 5 bytes but the message ends after 1.
    PythonWorker.run(worker, %{"op" => "raw_hex", "hex" => "0a05ab"})
    PythonWorker.run(worker, %{"op" => "bad_utf8", "event" => "tool.execution.stop"})

    PythonWorker.run(worker, %{
      "op" => "emit",
      "event" => "tool.execution.stop",
      "measurements" => %{"duration" => 7},
      "metadata" => %{"tool" => "after-bad-input"}
    })

    assert_receive {:telemetry, _, %{duration: _}, %{tool: "after-bad-input"}}, @timeout
    refute_received {:telemetry, _, _, _}

    # Counters are atomics updated right after the hand-off: wait for them to settle.
    wait_until(fn -> stream(id).received == 5 and stream(id).emitted == 1 end)
    info = stream(id)
    assert info.status == :connected

    assert info.dropped == %{
             unknown_event: 1,
             invalid_measurement: 1,
             decode_error: 2,
             overflow: 0,
             undeliverable: 0,
             disabled: 0,
             filtered_out: 0,
             sampled_out: 0,
             oversize: 0,
             too_many_keys: 0,
             lost_in_transit: 0
           }
  end

  test "nothing a worker sends creates an atom" do
    # A buffer large enough that the worker itself drops nothing of the flood.
    {worker, id} = start_worker(["--max-buffer", "100000"], "atoms")

    Forwarder.attach([@tool ++ [:stop]])
    register!(id, worker)

    flood = fn count ->
      PythonWorker.run(worker, %{"op" => "random", "count" => count, "seed" => count})

      for i <- 1..10 do
        keys =
          for j <- 1..5,
              into: %{},
              do: {"meta_#{count}_#{i}_#{j}_#{:rand.uniform(1_000_000)}", "v"}

        PythonWorker.run(worker, %{
          "op" => "emit",
          "event" => "tool.execution.stop",
          "measurements" => %{"duration" => i},
          "metadata" => keys
        })
      end
    end

    # Warm up every code path once (module loading makes atoms of its own).
    flood.(100)
    wait_until(fn -> stream(id).received == 110 end)
    for _ <- 1..10, do: assert_receive({:telemetry, _, _, _}, @timeout)

    before = :erlang.system_info(:atom_count)
    flood.(10_000)
    wait_until(fn -> stream(id).received == 110 + 10_010 end, 60_000)

    for _ <- 1..10 do
      assert_receive {:telemetry, _, _, meta}, @timeout
      assert Enum.count(Map.keys(meta), &is_binary/1) == 5
    end

    assert :erlang.system_info(:atom_count) == before
    info = stream(id)
    assert info.emitted == 20
    assert info.dropped.unknown_event + info.dropped.invalid_measurement == 10_100
  end

  test "a handler slower than the worker: the mailbox stays bounded and overflow is counted" do
    # StreamTelemetry: the NIF reads on and drops past its buffer (a batched stream stops
    # reading instead; see conservation_test.exs). A small buffer, so that the handler has a
    # few hundred events to get through rather than a few thousand (at 1 ms each, and much
    # more on a loaded machine).
    restart_app_for_test(max_buffer_size: 128, max_batch_size: 32)
    {worker, id} = start_worker(["--no-batched", "--max-buffer", "100000"], "slow")

    Forwarder.attach([@tool ++ [:stop]], %{sleep_ms: 1})
    register!(id, worker)
    # The Dispatcher runs the handlers and receives the batches; GrpcStream owns the streams.
    receiver = Snakepit.Telemetry.Dispatcher.whereis(id)
    sampler = Task.async(fn -> sample_mailbox(receiver, id, 0) end)

    for _ <- 1..6 do
      PythonWorker.run(worker, %{
        "op" => "emit",
        "event" => "tool.execution.stop",
        "measurements" => %{"duration" => 1},
        "count" => 1000
      })
    end

    wait_until(fn -> stream(id).received == 6000 end, 60_000)
    wait_until(fn -> stream(id).emitted + stream(id).dropped.overflow == 6000 end, 60_000)
    max_mailbox = Task.await(sampler, 60_000)

    info = stream(id)
    assert info.dropped.overflow > 0
    assert info.emitted > 0
    config = Snakepit.Telemetry.Config.load!()
    # At most the unacknowledged batches of this worker.
    assert max_mailbox <= config.max_in_flight_batches
  end

  # Counts this worker's batches only: the Dispatcher's mailbox is shared with every other
  # stream (and their status messages), which are not this test's business.
  defp sample_mailbox(pid, id, max) do
    {:messages, messages} = Process.info(pid, :messages)
    len = Enum.count(messages, &match?({:snakepit_telemetry_batch, _, ^id, _, _}, &1))
    info = stream(id)

    if info.received == 6000 and info.emitted + info.dropped.overflow == 6000 do
      max(max, len)
    else
      Process.sleep(5)
      sample_mailbox(pid, id, max(max, len))
    end
  end

  test "unregister stops delivery", %{worker: worker, id: id} do
    Forwarder.attach([@tool ++ [:stop], [:snakepit, :grpc, :stream, :closed]])
    register!(id, worker)

    stop = %{
      "op" => "emit",
      "event" => "tool.execution.stop",
      "measurements" => %{"duration" => 1}
    }

    PythonWorker.run(worker, stop)

    assert_receive {:telemetry, [:snakepit, :python, :tool, :execution, :stop], _,
                    %{worker_id: ^id}},
                   @timeout

    assert :ok = GrpcStream.unregister_worker(id)

    assert_receive {:telemetry, [:snakepit, :grpc, :stream, :closed], %{message_count: 1},
                    %{worker_id: ^id, reason: :unregistered}},
                   @timeout

    PythonWorker.run(worker, stop)
    refute_receive {:telemetry, [:snakepit, :python, :tool, :execution, :stop], _, _}, 300
    assert stream(id) == nil
    assert {:error, :unknown_worker} = GrpcStream.unregister_worker(id)
  end

  test "a worker that exits mid-stream leaves the VM and the other streams unaffected",
       %{worker: survivor, id: survivor_id} do
    {doomed, doomed_id} = start_worker([], "doomed")

    Forwarder.attach([@tool ++ [:stop], [:snakepit, :grpc, :stream, :closed]])
    register!(survivor_id, survivor)
    register!(doomed_id, doomed)
    manager = Process.whereis(GrpcStream)

    emit = %{
      "op" => "emit",
      "event" => "tool.execution.stop",
      "measurements" => %{"duration" => 1},
      "count" => 50
    }

    PythonWorker.run(doomed, emit)
    PythonWorker.send_command(doomed, %{"op" => "exit", "code" => 3})
    assert PythonWorker.await_exit(doomed) == 3

    assert_receive {:telemetry, [:snakepit, :grpc, :stream, :closed], _,
                    %{worker_id: ^doomed_id, reason: reason}},
                   @timeout

    assert reason == :worker_closed or match?({:stream_error, _}, reason)
    # Still registered: the NIF keeps trying to reopen it (see reconnect_test.exs).
    wait_until(fn ->
      match?(%{status: :reconnecting, attempt: n} when n >= 1, stream(doomed_id))
    end)

    assert {:connect_failed, _} = stream(doomed_id).last_error

    PythonWorker.run(survivor, Map.put(emit, "metadata", %{"tool" => "survivor"}))

    for _ <- 1..50 do
      assert_receive {:telemetry, _, _, %{worker_id: ^survivor_id, tool: "survivor"}}, @timeout
    end

    assert Process.whereis(GrpcStream) == manager
    assert stream(survivor_id).status == :connected
  end

  @tag :capture_log
  test "a handler that raises is telemetry's business, not the manager's", %{
    worker: worker,
    id: id
  } do
    :ok = :telemetry.attach("raising", @tool ++ [:stop], &Forwarder.raise_always/4, nil)
    on_exit(fn -> :telemetry.detach("raising") end)
    Forwarder.attach([@tool ++ [:stop]])
    register!(id, worker)
    manager = Process.whereis(GrpcStream)

    emit = %{
      "op" => "emit",
      "event" => "tool.execution.stop",
      "measurements" => %{"duration" => 1},
      "count" => 3
    }

    PythonWorker.run(worker, emit)
    for _ <- 1..3, do: assert_receive({:telemetry, _, _, _}, @timeout)

    assert Process.whereis(GrpcStream) == manager
    assert :telemetry.list_handlers(@tool ++ [:stop]) |> Enum.all?(&(&1.id != "raising"))
  end

  test "registering an id again replaces its stream", %{worker: worker, id: id} do
    Forwarder.attach([@tool ++ [:stop], [:snakepit, :grpc, :stream, :closed]])
    register!(id, worker)
    {other, _} = start_worker()

    assert :ok = GrpcStream.register_worker(id, other.endpoint, pool_name: :second)

    assert_receive {:telemetry, [:snakepit, :grpc, :stream, :closed], _,
                    %{worker_id: ^id, reason: :replaced}},
                   @timeout

    wait_until(fn ->
      stream(id)[:status] == :connected and stream(id).endpoint == other.endpoint
    end)

    PythonWorker.run(other, %{
      "op" => "emit",
      "event" => "tool.execution.stop",
      "measurements" => %{"duration" => 2}
    })

    assert_receive {:telemetry, _, %{duration: _}, %{worker_id: ^id, pool_name: :second}},
                   @timeout
  end

  test "app-defined events from config are delivered with their own measurement keys",
       %{worker: worker, id: id} do
    Forwarder.attach([[:myapp, :model, :loaded]])
    register!(id, worker)

    PythonWorker.run(worker, %{
      "op" => "emit",
      "event" => "myapp.model.loaded",
      "measurements" => %{"weights_loaded" => 3, "duration" => 5}
    })

    assert_receive {:telemetry, [:myapp, :model, :loaded], %{weights_loaded: 3, duration: _},
                    %{worker_id: ^id}},
                   @timeout
  end

  describe "bad arguments" do
    test "get clear errors and leave the manager running" do
      manager = Process.whereis(GrpcStream)
      assert {:error, {:invalid_endpoint, _}} = GrpcStream.register_worker("w", "no-port-here")
      assert {:error, {:invalid_endpoint, _}} = GrpcStream.register_worker("w", "https://h:1")
      assert {:error, {:invalid_endpoint, 42}} = GrpcStream.register_worker("w", 42)
      assert {:error, {:invalid_worker_id, :w}} = GrpcStream.register_worker(:w, "127.0.0.1:1")

      assert {:error, {:invalid_worker_id, <<0xFF>>}} =
               GrpcStream.register_worker(<<0xFF>>, "127.0.0.1:1")

      assert {:error, {:invalid_option, :worker_id}} =
               GrpcStream.register_worker("w", "127.0.0.1:1", worker_id: "x")

      assert {:error, {:invalid_metadata, :pool_name}} =
               GrpcStream.register_worker("w", "127.0.0.1:1", pool_name: {1})

      assert {:error, {:invalid_option, "x"}} =
               GrpcStream.register_worker("w", "127.0.0.1:1", ["x"])

      assert Process.whereis(GrpcStream) == manager
      assert stream("w") == nil
    end

    test "an unreachable worker stays :connecting, retrying, with the last error shown" do
      Forwarder.attach([[:snakepit, :grpc, :stream, :closed]])
      id = "unreachable-#{System.unique_integer([:positive])}"
      on_exit(fn -> GrpcStream.unregister_worker(id) end)
      # Nothing listens on port 1.
      assert :ok = GrpcStream.register_worker(id, "127.0.0.1:1")

      wait_until(fn -> stream(id).attempt >= 3 end)

      assert %{status: :connecting, last_error: {:connect_failed, _}, connected_since: nil} =
               stream(id)

      # No stream was ever open, so none was closed.
      assert :ok = GrpcStream.unregister_worker(id)
      refute_receive {:telemetry, [:snakepit, :grpc, :stream, :closed], _, %{worker_id: ^id}}, 300
    end
  end

  test "System.stop/0 of a VM with open streams does not hang", %{worker: worker} do
    # A separate VM: this library's application, one open stream, then System.stop/0.
    ebin = Path.wildcard(Path.join(Mix.Project.build_path(), "lib/*/ebin"))
    args = Enum.flat_map(ebin, &["-pa", &1])

    script = """
    {:ok, _} = Application.ensure_all_started(:snakepit_telemetry)
    :ok = Snakepit.Telemetry.GrpcStream.register_worker("w", "#{worker.endpoint}")
    Stream.repeatedly(fn -> Process.sleep(10); Snakepit.Telemetry.GrpcStream.list_streams() end)
    |> Enum.find(fn [s] -> s.status == :connected end)
    IO.puts("connected")
    System.stop()
    Process.sleep(:infinity)
    """

    port =
      Port.open({:spawn_executable, System.find_executable("elixir")}, [
        :binary,
        :exit_status,
        {:line, 4096},
        args: args ++ ["-e", script]
      ])

    assert_receive {^port, {:data, {:eol, "connected"}}}, @timeout
    # Generous: a hang is what this looks for, not a speed.
    assert_receive {^port, {:exit_status, 0}}, @timeout
  end
end
