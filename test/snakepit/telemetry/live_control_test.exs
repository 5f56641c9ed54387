defmodule Snakepit.Telemetry.LiveControlTest do
  # Live control of real Python workers over gRPC: toggle, sampling and filters, at the
  # source (the worker) and in the NIF.
  use ExUnit.Case, async: false

  alias Snakepit.Telemetry.GrpcStream
  alias Snakepit.Telemetry.Test.{EventCounter, PythonWorker}

  import Snakepit.Telemetry.Test.Streams,
    except: [start_worker: 2, start_worker: 1, start_worker: 0]

  @stop [:snakepit, :python, :tool, :execution, :stop]
  @call_start [:snakepit, :python, :call, :start]
  @call_stop [:snakepit, :python, :call, :stop]
  # The worker's drop reports are delivered events too (`settle/5` counts every event).
  @dropped [:snakepit, :python, :telemetry, :dropped]
  @events [@stop, @call_start, @call_stop, @dropped]
  @timeout 30_000

  # Workers here buffer enough that they never drop for lack of room.
  defp start_worker(args \\ []) do
    Snakepit.Telemetry.Test.Streams.start_worker(["--max-buffer", "100000" | args], "ctl")
  end

  defp settings(id),
    do: Map.take(stream(id), [:enabled, :sampling_rate, :sampling_rules, :allow, :deny])

  defp emit(worker, event, count) do
    measurements =
      if String.ends_with?(event, ".start"), do: %{"system_time" => 1}, else: %{"duration" => 1}

    PythonWorker.run(worker, %{
      "op" => "emit",
      "event" => event,
      "measurements" => measurements,
      "count" => count
    })
  end

  # Everything the worker sent has arrived and its handlers have run. `earlier` counts the
  # events of this id delivered under an earlier registration (unregistering resets the
  # NIF's counters; registering again keeps them); `base` is `baseline/2` taken before the
  # events were emitted when the worker or the registration changed since they started.
  defp settle(worker, id, table, earlier \\ 0, base \\ {0, 0}) do
    {sent_before, received_before} = base
    PythonWorker.run(worker, %{"op" => "wait_sent", "timeout_ms" => @timeout})

    # `sent` is read again each time: the worker's drop reports (also sent) may still come.
    wait_until(fn ->
      stream(id).received - received_before == PythonWorker.stats(worker)["sent"] - sent_before
    end)

    wait_until(fn ->
      info = stream(id)

      info.emitted + Enum.sum(Map.values(info.dropped)) == info.received and
        EventCounter.total(table, id) == earlier + info.emitted
    end)
  end

  defp baseline(worker, id), do: {PythonWorker.stats(worker)["sent"], stream(id).received}

  # Binomial(n, p): within 5 standard deviations of n * p.
  defp assert_binomial(observed, n, p) do
    bound = 5 * :math.sqrt(n * p * (1 - p))
    assert abs(observed - n * p) <= bound, "#{observed} not within #{n * p} ± #{bound}"
  end

  test "update_sampling/2 keeps about the rate, sampled at the source" do
    {worker, id} = start_worker()
    table = EventCounter.attach(@events)
    register!(id, worker)

    assert :ok = GrpcStream.update_sampling(id, 0.1)
    PythonWorker.await_policy(worker, &(&1["sampling_rate"] == 0.1))
    for _ <- 1..4, do: emit(worker, "tool.execution.stop", 5_000)
    settle(worker, id, table)

    delivered = EventCounter.get(table, id, @stop)
    assert_binomial(delivered, 20_000, 0.1)
    # The worker honours sampling itself: what it dropped never crossed the wire.
    assert PythonWorker.stats(worker)["dropped"]["sampled_out"] == 20_000 - delivered
    assert stream(id).dropped.sampled_out == 0
    assert %{sampling_rate: 0.1, sampling_rules: []} = settings(id)
  end

  test "update_sampling/3 with patterns leaves other events at 100 %" do
    {worker, id} = start_worker()
    table = EventCounter.attach(@events)
    register!(id, worker)

    assert :ok = GrpcStream.update_sampling(id, 0.1, ["python.call.*"])
    PythonWorker.await_policy(worker, &(&1["sampling_rules"] != []))
    for _ <- 1..4, do: emit(worker, "python.call.start", 5_000)
    emit(worker, "tool.execution.stop", 2_000)
    settle(worker, id, table)

    assert_binomial(EventCounter.get(table, id, @call_start), 20_000, 0.1)
    assert EventCounter.get(table, id, @stop) == 2_000

    assert %{sampling_rate: 1.0, sampling_rules: [%{patterns: ["python.call.*"], rate: 0.1}]} =
             settings(id)
  end

  test "toggle/2 stops one worker while others keep streaming, and resumes it" do
    {a, a_id} = start_worker()
    {b, b_id} = start_worker()
    table = EventCounter.attach(@events)
    register!(a_id, a)
    register!(b_id, b)

    assert :ok = GrpcStream.toggle(a_id, false)
    PythonWorker.await_policy(a, &(&1["enabled"] == false))
    emit(a, "tool.execution.stop", 100)
    emit(b, "tool.execution.stop", 100)
    settle(a, a_id, table)
    settle(b, b_id, table)
    assert EventCounter.get(table, a_id, @stop) == 0
    assert EventCounter.get(table, b_id, @stop) == 100
    assert PythonWorker.stats(a)["dropped"]["disabled"] == 100

    assert :ok = GrpcStream.toggle(a_id, true)
    PythonWorker.await_policy(a, &(&1["enabled"] == true))
    emit(a, "tool.execution.stop", 100)
    settle(a, a_id, table)
    assert EventCounter.get(table, a_id, @stop) == 100
  end

  test "update_filter/2: allow, deny wins over allow, and :all reaches every worker" do
    {a, a_id} = start_worker()
    {b, b_id} = start_worker()
    table = EventCounter.attach(@events)
    register!(a_id, a)
    register!(b_id, b)

    assert :ok = GrpcStream.update_filter(a_id, allow: ["python.call.*"])
    PythonWorker.await_policy(a, &(&1["allow"] == ["python.call.*"]))
    emit(a, "python.call.start", 10)
    emit(a, "tool.execution.stop", 10)
    settle(a, a_id, table)
    assert EventCounter.get(table, a_id, @call_start) == 10
    assert EventCounter.get(table, a_id, @stop) == 0

    assert :ok =
             GrpcStream.update_filter(a_id, allow: ["python.call.*"], deny: ["python.call.start"])

    PythonWorker.await_policy(a, &(&1["deny"] == ["python.call.start"]))
    emit(a, "python.call.start", 10)
    emit(a, "python.call.stop", 10)
    settle(a, a_id, table)
    assert EventCounter.get(table, a_id, @call_start) == 10
    assert EventCounter.get(table, a_id, @call_stop) == 10

    assert :ok = GrpcStream.update_filter(:all, deny: ["tool.*"])

    for {worker, id} <- [{a, a_id}, {b, b_id}] do
      PythonWorker.await_policy(worker, &(&1["deny"] == ["tool.*"] and &1["allow"] == []))
      emit(worker, "tool.execution.stop", 10)
      emit(worker, "python.call.stop", 10)
      settle(worker, id, table)
      assert EventCounter.get(table, id, @stop) == 0
      assert %{allow: [], deny: ["tool.*"]} = settings(id)
    end

    assert EventCounter.get(table, a_id, @call_stop) == 20
    assert EventCounter.get(table, b_id, @call_stop) == 10
  end

  test "a worker that ignores control messages is still filtered by the NIF" do
    {worker, id} = start_worker(["--ignore-control"])
    table = EventCounter.attach(@events)
    register!(id, worker)

    assert :ok = GrpcStream.update_filter(id, allow: ["python.call.*"])
    emit(worker, "tool.execution.stop", 50)
    emit(worker, "python.call.start", 50)
    settle(worker, id, table)
    assert EventCounter.get(table, id, @stop) == 0
    assert EventCounter.get(table, id, @call_start) == 50
    assert stream(id).dropped.filtered_out == 50
    # It really ignored them: it still applies the defaults.
    assert %{"allow" => [], "enabled" => true} = PythonWorker.stats(worker)["policy"]

    assert :ok = GrpcStream.toggle(id, false)
    emit(worker, "python.call.start", 30)
    settle(worker, id, table)
    assert EventCounter.get(table, id, @call_start) == 50
    assert stream(id).dropped.disabled == 30

    # Pattern-scoped sampling is never sent to a worker that does not announce it applies
    # patterns: the NIF alone samples, and other events stay at 100 %.
    assert :ok = GrpcStream.toggle(id, true)
    assert :ok = GrpcStream.update_filter(id, [])
    assert :ok = GrpcStream.update_sampling(id, 0.1, ["python.call.*"])
    for _ <- 1..4, do: emit(worker, "python.call.stop", 5_000)
    emit(worker, "tool.execution.stop", 1_000)
    settle(worker, id, table)
    delivered = EventCounter.get(table, id, @call_stop)
    assert_binomial(delivered, 20_000, 0.1)
    assert EventCounter.get(table, id, @stop) == 1_000
    assert stream(id).dropped.sampled_out == 20_000 - delivered
  end

  test "settings made before connect are in force from the first event and survive re-registration" do
    {worker, id} = start_worker()
    table = EventCounter.attach(@events)

    # Registered where nothing listens: the stream never connects.
    assert :ok = GrpcStream.register_worker(id, "127.0.0.1:1")
    assert :ok = GrpcStream.update_filter(id, allow: ["python.call.*"])
    assert :ok = GrpcStream.update_sampling(id, 0.5, ["tool.*"])
    expected = settings(id)

    # The worker emits before its stream exists; the events wait in its buffer.
    emit(worker, "tool.execution.stop", 20)
    emit(worker, "python.call.start", 20)
    assert :ok = GrpcStream.register_worker(id, worker.endpoint)
    wait_until(fn -> stream(id).status == :connected end)
    settle(worker, id, table)

    assert EventCounter.get(table, id, @stop) == 0
    assert EventCounter.get(table, id, @call_start) == 20
    assert settings(id) == expected

    # A restarted worker: a new process and endpoint under the same id keeps the settings.
    {restarted, _} = start_worker()
    assert :ok = GrpcStream.register_worker(id, restarted.endpoint)

    wait_until(fn ->
      stream(id).status == :connected and stream(id).endpoint == restarted.endpoint
    end)

    PythonWorker.await_policy(restarted, &(&1["allow"] == ["python.call.*"]))
    base = baseline(restarted, id)
    emit(restarted, "tool.execution.stop", 10)
    # The counters carried over: the first worker's 20 delivered events are in `emitted`.
    settle(restarted, id, table, 0, base)
    assert EventCounter.get(table, id, @stop) == 0
    assert settings(id) == expected

    # Unregistering forgets them: registering again starts from the config defaults.
    assert :ok = GrpcStream.unregister_worker(id)
    assert :ok = GrpcStream.register_worker(id, restarted.endpoint)

    assert settings(id) == %{
             enabled: true,
             sampling_rate: 1.0,
             sampling_rules: [],
             allow: [],
             deny: []
           }

    wait_until(fn -> stream(id).status == :connected end)
    PythonWorker.await_policy(restarted, &(&1["allow"] == []))
    base = baseline(restarted, id)
    emit(restarted, "tool.execution.stop", 10)
    settle(restarted, id, table, 20, base)
    assert EventCounter.get(table, id, @stop) == 10
  end

  test "invalid input returns its error and changes nothing" do
    {worker, id} = start_worker()
    register!(id, worker)
    assert :ok = GrpcStream.update_filter(id, allow: ["python.*"], deny: ["python.gc.*"])
    assert :ok = GrpcStream.update_sampling(id, 0.5, ["tool.*"])
    before = settings(id)

    assert {:error, {:invalid_rate, 1.5}} = GrpcStream.update_sampling(id, 1.5)
    assert {:error, {:invalid_rate, -0.1}} = GrpcStream.update_sampling(:all, -0.1)
    assert {:error, {:invalid_rate, "0.5"}} = GrpcStream.update_sampling(id, "0.5", ["tool.*"])

    assert {:error, {:invalid_pattern, "bad pattern"}} =
             GrpcStream.update_sampling(id, 0.5, ["tool.*", "bad pattern"])

    assert {:error, {:invalid_pattern, ""}} = GrpcStream.update_filter(id, deny: [""])
    assert {:error, {:invalid_pattern, :tool}} = GrpcStream.update_filter(:all, allow: [:tool])

    assert {:error, {:invalid_option, :block}} =
             GrpcStream.update_filter(id, allow: ["x"], block: ["y"])

    assert {:error, {:invalid_option, :maybe}} = GrpcStream.toggle(id, :maybe)
    assert {:error, :unknown_worker} = GrpcStream.toggle("nobody", false)
    assert {:error, :unknown_worker} = GrpcStream.update_sampling("nobody", 0.5)
    assert {:error, {:invalid_worker_id, 42}} = GrpcStream.update_filter(42, allow: [])

    assert settings(id) == before
    assert before.sampling_rules == [%{patterns: ["tool.*"], rate: 0.5}]
  end

  test "the README's IEx session works as written" do
    {worker, _} = start_worker()
    table = EventCounter.attach(@events)
    on_exit(fn -> GrpcStream.unregister_worker("worker_1") end)
    :ok = GrpcStream.register_worker("worker_1", worker.endpoint, pool_name: :default)
    wait_until(fn -> stream("worker_1").status == :connected end)

    readme = File.read!(Path.expand("../../../README.md", __DIR__))
    [_, rest] = String.split(readme, "<!-- iex-session:start -->\n", parts: 2)
    [session, _] = String.split(rest, "<!-- iex-session:end -->", parts: 2)
    code = session |> String.replace("```elixir\n", "") |> String.replace("```\n", "")

    lines = for "iex> " <> line <- String.split(code, "\n"), do: line
    assert length(lines) >= 5

    # One evaluation, as one IEx session: aliases carry from line to line.
    Code.eval_string(Enum.join(lines, "\n"))

    # The session ends with the worker enabled and narrowed to python.call.*.
    assert %{enabled: true, allow: ["python.call.*"]} = settings("worker_1")
    PythonWorker.await_policy(worker, &(&1["allow"] == ["python.call.*"]))
    emit(worker, "tool.execution.stop", 10)
    settle(worker, "worker_1", table)
    assert EventCounter.get(table, "worker_1", @stop) == 0
  end

  @tag :capture_log
  test "config: defaults for new workers, excluded_events denied everywhere, grpc_stream: false" do
    restart_app_for_test(excluded_events: ["tool.*"], sampling_rate: 0.5)
    {worker, id} = start_worker()
    table = EventCounter.attach(@events)
    register!(id, worker)
    assert %{enabled: true, sampling_rate: 0.5, deny: []} = settings(id)
    PythonWorker.await_policy(worker, &(&1["deny"] == ["tool.*"] and &1["sampling_rate"] == 0.5))

    # The worker's own deny list comes on top of the excluded events.
    assert :ok = GrpcStream.update_filter(id, deny: ["python.gc.*"])
    PythonWorker.await_policy(worker, &(Enum.sort(&1["deny"]) == ["python.gc.*", "tool.*"]))
    assert :ok = GrpcStream.update_sampling(id, 1.0)
    PythonWorker.await_policy(worker, &(&1["sampling_rate"] == 1.0))
    emit(worker, "tool.execution.stop", 10)
    emit(worker, "python.call.stop", 10)
    settle(worker, id, table)
    assert EventCounter.get(table, id, @stop) == 0
    assert EventCounter.get(table, id, @call_stop) == 10

    restart_app(grpc_stream: false)
    assert :ok = GrpcStream.register_worker(id, worker.endpoint)
    assert %{status: :not_streaming, received: 0} = stream(id)
    assert :ok = GrpcStream.toggle(id, false)
    assert %{enabled: false} = settings(id)
    assert :ok = GrpcStream.unregister_worker(id)
    assert stream(id) == nil
  end
end
