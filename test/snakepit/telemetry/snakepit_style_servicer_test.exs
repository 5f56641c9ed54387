defmodule Snakepit.Telemetry.SnakepitStyleServicerTest do
  # Issue 10: a Python worker wired as Snakepit v0.13 wires its gRPC server (a grpc.aio
  # servicer whose StreamTelemetry is `async for event in self.telemetry_stream.stream(...)`,
  # test/support/python/snakepit_style_worker.py) over real gRPC on loopback, with the real
  # NIF and the application's own GrpcStream process.
  use ExUnit.Case, async: false

  alias Snakepit.Telemetry.GrpcStream
  alias Snakepit.Telemetry.Test.{Forwarder, PythonWorker}

  import Snakepit.Telemetry.Test.Streams,
    only: [register!: 2, register!: 3, stream: 1, wait_until: 1]

  @moduletag timeout: 180_000

  @tool_start [:snakepit, :python, :tool, :execution, :start]
  @tool_stop [:snakepit, :python, :tool, :execution, :stop]
  @call_start [:snakepit, :python, :call, :start]
  @call_stop [:snakepit, :python, :call, :stop]
  @dropped [:snakepit, :python, :telemetry, :dropped]
  @lost [:snakepit, :grpc, :connection, :lost]

  @timeout 30_000

  defp start_worker(env \\ []) do
    worker = PythonWorker.start([], env, "python/snakepit_style_worker.py")

    id = "snakepit-style-#{System.unique_integer([:positive])}"

    on_exit(fn ->
      GrpcStream.unregister_worker(id)
      PythonWorker.stop(worker)
    end)

    {worker, id}
  end

  defp emit(worker, event, count, extra) do
    measurements =
      if String.ends_with?(event, ".start"), do: %{"system_time" => 1}, else: %{"duration" => 1}

    PythonWorker.run(
      worker,
      Map.merge(
        %{"op" => "emit", "event" => event, "measurements" => measurements, "count" => count},
        extra
      )
    )
  end

  # The worker's own view: Snakepit's `dropped_count`, `enabled`, `sampling_rate`, and the
  # pattern settings it applies (`policy`).
  defp stats(worker), do: PythonWorker.stats(worker)

  defp await_stats(worker, fun) do
    wait_until(fn -> fun.(stats(worker)) end)
    stats(worker)
  end

  # Receives exactly `count` `event`s of worker `id` whose metadata `tool` is `tag`.
  defp receive_tagged(id, event, tag, count) do
    for _ <- 1..count//1 do
      assert_receive {:telemetry, ^event, _, %{worker_id: ^id, tool: ^tag}}, @timeout
    end
  end

  defp native(ns), do: System.convert_time_unit(ns, :nanosecond, :native)

  test "emit and span events arrive under Snakepit's names with their measurements, metadata and correlation ids" do
    {worker, id} = start_worker()
    Forwarder.attach([@tool_start, @tool_stop, @call_start, @call_stop])
    register!(id, worker, pool_name: :default, python_pid: worker.os_pid)
    # Only StreamTelemetry is served, as by Snakepit's servicer: one event per message.
    assert %{protocol: :single, status: :connected} = stream(id)
    # Snakepit's list_streams/0 keys.
    assert %{worker_id: ^id, pool_name: :default, task_alive: true} = stream(id)

    none = id <> "-none"
    assert :ok = GrpcStream.register_worker(none, :none)
    assert %{status: :not_streaming, pool_name: nil, task_alive: false} = stream(none)
    assert :ok = GrpcStream.unregister_worker(none)

    before_ns = System.os_time(:nanosecond)

    # On the event loop's thread, with an explicit correlation id.
    PythonWorker.run(worker, %{
      "op" => "emit",
      "event" => "python.call.start",
      "measurements" => %{"system_time" => 123_456_789, "count" => 1},
      "metadata" => %{"command" => "predict", "call_type" => "tool"},
      "correlation_id" => "abc"
    })

    # From another thread (asyncio.to_thread), as adapters emit from tool threads; no id.
    PythonWorker.run(worker, %{
      "op" => "emit",
      "event" => "python.call.stop",
      "measurements" => %{"duration" => 5_000},
      "metadata" => %{"command" => "predict", "result" => "ok"},
      "thread" => true
    })

    # A span on the loop's thread, with an event emitted inside it without an id.
    PythonWorker.run(worker, %{
      "op" => "span",
      "operation" => "tool.execution",
      "metadata" => %{"tool" => "resize"},
      "correlation_id" => "span-7",
      "inner" => "python.call.start"
    })

    # A span on another thread.
    PythonWorker.run(worker, %{
      "op" => "span",
      "operation" => "tool.execution",
      "metadata" => %{"tool" => "crop"},
      "correlation_id" => "span-8",
      "thread" => true
    })

    got =
      for _ <- 1..7 do
        assert_receive {:telemetry, event, measurements, %{worker_id: ^id} = metadata},
                       @timeout

        {event, measurements, metadata}
      end

    assert [
             {@call_start, call_start, call_start_meta},
             {@call_stop, call_stop, call_stop_meta},
             {@tool_start, span_start, span_start_meta},
             {@call_start, inner, inner_meta},
             {@tool_stop, span_stop, span_stop_meta},
             {@tool_start, thread_start, thread_start_meta},
             {@tool_stop, thread_stop, thread_stop_meta}
           ] = got

    assert call_start == %{system_time: native(123_456_789), count: 1}
    assert %{command: "predict", call_type: "tool", correlation_id: "abc"} = call_start_meta

    assert call_stop == %{duration: native(5_000)}
    assert %{command: "predict", result: "ok"} = call_stop_meta
    assert Map.fetch!(call_stop_meta, :correlation_id) == nil

    assert inner == %{count: 1}
    assert %{tool: "resize", correlation_id: "span-7"} = inner_meta

    for {start, start_meta, stop, stop_meta, tool, cid} <- [
          {span_start, span_start_meta, span_stop, span_stop_meta, "resize", "span-7"},
          {thread_start, thread_start_meta, thread_stop, thread_stop_meta, "crop", "span-8"}
        ] do
      assert Map.keys(start) == [:system_time]
      assert_in_delta start.system_time, native(before_ns), native(30_000_000_000)
      assert Map.keys(stop) == [:duration]
      assert stop.duration >= 0 and stop.duration < native(30_000_000_000)
      assert %{tool: ^tool, correlation_id: ^cid} = start_meta
      assert %{tool: ^tool, correlation_id: ^cid} = stop_meta
    end

    for {_, _, meta} <- got do
      assert %{worker_id: ^id, pool_name: :default, node: node, timestamp_ns: ts} = meta
      assert meta.python_pid == worker.os_pid
      assert node == node()
      assert ts >= before_ns - 5_000_000_000 and ts < before_ns + 60_000_000_000
    end

    refute_received {:telemetry, _, _, %{worker_id: ^id}}
    # The span restored the context: outside it the worker has no correlation id.
    assert stats(worker)["correlation_id"] == nil
    # Counters are atomics updated right after the hand-off: wait for them to settle.
    wait_until(fn -> match?(%{emitted: 7, received: 7}, stream(id)) end)
  end

  test "toggle/2 stops the worker's events at the source and brings them back" do
    {worker, id} = start_worker()
    Forwarder.attach([@tool_stop, @dropped])
    register!(id, worker)

    assert :ok = GrpcStream.toggle(id, false)
    assert %{"enabled" => false} = await_stats(worker, &(&1["enabled"] == false))
    before = stats(worker)["dropped_count"]

    emit(worker, "tool.execution.stop", 20, %{"metadata" => %{"tool" => "off"}})
    emit(worker, "tool.execution.stop", 5, %{"metadata" => %{"tool" => "off"}, "thread" => true})

    assert %{"enabled" => false, "dropped_count" => dropped} = stats(worker)
    assert dropped - before == 25

    # The worker reports what it dropped (no setting removes drop reports).
    wait_until(fn -> stream(id).source_dropped == %{"disabled" => 25} end)

    assert :ok = GrpcStream.toggle(id, true)
    assert %{"enabled" => true} = await_stats(worker, &(&1["enabled"] == true))
    emit(worker, "tool.execution.stop", 5, %{"metadata" => %{"tool" => "on"}})
    receive_tagged(id, @tool_stop, "on", 5)

    # The stream is ordered: had any disabled event been sent, it would have come first.
    refute_received {:telemetry, @tool_stop, _, %{tool: "off"}}
    assert stats(worker)["dropped_count"] == dropped
    # Nothing disabled crossed the wire: the NIF had nothing to drop.
    assert %{dropped: %{disabled: 0}} = stream(id)
  end

  test "update_sampling/2,3: rate 0.0 keeps nothing, 1.0 everything, and a pattern-scoped rate only matching events" do
    {worker, id} = start_worker()
    Forwarder.attach([@tool_stop, @call_start])
    register!(id, worker)

    assert :ok = GrpcStream.update_sampling(id, 0.0)
    assert %{"sampling_rate" => +0.0} = await_stats(worker, &(&1["sampling_rate"] == 0.0))
    before = stats(worker)["dropped_count"]

    emit(worker, "tool.execution.stop", 40, %{"metadata" => %{"tool" => "sampled"}})

    assert %{"sampling_rate" => +0.0, "enabled" => true, "dropped_count" => dropped} =
             stats(worker)

    assert dropped - before == 40

    assert :ok = GrpcStream.update_sampling(id, 1.0)
    assert %{"sampling_rate" => 1.0} = await_stats(worker, &(&1["sampling_rate"] == 1.0))
    emit(worker, "tool.execution.stop", 5, %{"metadata" => %{"tool" => "kept"}})
    receive_tagged(id, @tool_stop, "kept", 5)
    refute_received {:telemetry, @tool_stop, _, %{tool: "sampled"}}
    assert stats(worker)["dropped_count"] == dropped

    # Pattern-scoped: the NIF sends patterns only to a worker whose response headers say
    # `sampling-patterns`; the worker applying the rule shows it got them.
    assert :ok = GrpcStream.update_sampling(id, 0.0, ["python.call.*"])

    assert %{"sampling_rate" => 1.0} =
             await_stats(
               worker,
               &(&1["policy"]["sampling_rules"] == [
                   %{"patterns" => ["python.call.*"], "rate" => 0.0}
                 ])
             )

    emit(worker, "python.call.start", 30, %{"metadata" => %{"tool" => "scoped"}})
    emit(worker, "tool.execution.stop", 10, %{"metadata" => %{"tool" => "unscoped"}})
    receive_tagged(id, @tool_stop, "unscoped", 10)
    refute_received {:telemetry, @call_start, _, _}
    assert stats(worker)["dropped_count"] - dropped == 30

    assert %{
             sampling_rate: 1.0,
             sampling_rules: [%{patterns: ["python.call.*"], rate: +0.0}],
             # Sampled at the source: none of it reached the NIF.
             dropped: %{sampled_out: 0}
           } = stream(id)

    wait_until(fn -> stream(id).source_dropped == %{"sampled_out" => 70} end)
  end

  test "update_filter/2 with a deny pattern drops only matching events" do
    {worker, id} = start_worker()
    Forwarder.attach([@tool_stop, @call_stop])
    register!(id, worker)

    assert :ok = GrpcStream.update_filter(id, deny: ["python.call.*"])
    await_stats(worker, &(&1["policy"]["deny"] == ["python.call.*"]))
    before = stats(worker)["dropped_count"]

    emit(worker, "python.call.stop", 20, %{"metadata" => %{"tool" => "denied"}})

    emit(worker, "tool.execution.stop", 10, %{
      "metadata" => %{"tool" => "allowed"},
      "thread" => true
    })

    receive_tagged(id, @tool_stop, "allowed", 10)
    refute_received {:telemetry, @call_stop, _, _}
    assert %{"dropped_count" => dropped, "enabled" => true} = stats(worker)
    assert dropped - before == 20
    assert %{deny: ["python.call.*"], allow: [], dropped: %{filtered_out: 0}} = stream(id)
    wait_until(fn -> stream(id).source_dropped == %{"filtered_out" => 20} end)

    # Cleared: the same events pass again.
    assert :ok = GrpcStream.update_filter(id, [])
    await_stats(worker, &(&1["policy"]["deny"] == []))
    emit(worker, "python.call.stop", 3, %{"metadata" => %{"tool" => "denied"}})
    receive_tagged(id, @call_stop, "denied", 3)
    assert stats(worker)["dropped_count"] == dropped
  end

  test "with SNAKEPIT_WORKER_TOKEN only the token's holder reads or steers the worker" do
    token = "tok-" <> Base.encode16(:crypto.strong_rand_bytes(16), case: :lower)
    {worker, id} = start_worker([{"SNAKEPIT_WORKER_TOKEN", token}])
    intruder = id <> "-intruder"
    on_exit(fn -> GrpcStream.unregister_worker(intruder) end)
    Forwarder.attach([@tool_stop])

    # Without the token, or with a wrong one: refused, retried, never connected.
    for opts <- [[], [token: "wrong-" <> token]] do
      assert :ok = GrpcStream.register_worker(id, worker.endpoint, opts)
      wait_until(fn -> stream(id).attempt >= 2 end)
      assert %{status: :connecting, last_error: {:connect_failed, text}} = stream(id)
      assert text =~ "Unauthenticated"
    end

    register!(id, worker, token: token)
    assert :ok = GrpcStream.update_sampling(id, 1.0)

    # A second client without the token while the owner streams: refused; the owner's call
    # and settings stay (it would otherwise replace the owner's call and reset them).
    assert :ok = GrpcStream.register_worker(intruder, worker.endpoint)
    wait_until(fn -> stream(intruder).attempt >= 2 end)
    assert %{status: :connecting} = stream(intruder)
    assert :ok = GrpcStream.unregister_worker(intruder)

    emit(worker, "tool.execution.stop", 3, %{"metadata" => %{"tool" => "owned"}})
    receive_tagged(id, @tool_stop, "owned", 3)
    assert %{status: :connected, attempt: 0} = stream(id)
    refute inspect(GrpcStream.list_streams()) =~ token
  end

  test "killing the worker with SIGKILL crashes none of our processes" do
    {worker, id} = start_worker()
    Forwarder.attach([@tool_stop, @lost])
    register!(id, worker)

    emit(worker, "tool.execution.stop", 1, %{"metadata" => %{"tool" => "before"}})
    receive_tagged(id, @tool_stop, "before", 1)

    grpc_stream = Process.whereis(GrpcStream)
    children = Supervisor.which_children(Snakepit.Telemetry.Supervisor)

    {_, 0} = System.cmd("kill", ["-9", Integer.to_string(worker.os_pid)])
    assert PythonWorker.await_exit(worker) == 137

    assert_receive {:telemetry, @lost, %{uptime: uptime}, %{worker_id: ^id, reason: reason}},
                   @timeout

    assert is_integer(uptime) and uptime >= 0
    assert reason == :worker_closed or match?({:stream_error, _}, reason)
    wait_until(fn -> stream(id).status == :reconnecting end)

    # The same processes, alive, and answering.
    assert Process.whereis(GrpcStream) == grpc_stream
    assert Process.alive?(grpc_stream)
    assert Supervisor.which_children(Snakepit.Telemetry.Supervisor) == children
    assert :ok = GrpcStream.toggle(id, false)
    assert %{enabled: false, status: :reconnecting, emitted: 1} = stream(id)
    assert :ok = GrpcStream.unregister_worker(id)
    assert stream(id) == nil
  end
end
