defmodule Snakepit.Telemetry.ToolCallTest do
  # Worker.execute/4 against real supervised Python workers (the project's worker, with the
  # built-in telemetry_demo tool and test/support/python/tool_modules/integration_tools.py).
  use ExUnit.Case, async: false

  alias Snakepit.Telemetry.{GrpcStream, ToolCall, Worker}
  alias Snakepit.Telemetry.Test.{Forwarder, PythonWorker}

  doctest ToolCall

  @start [:snakepit, :python, :tool, :execution, :start]
  @stop [:snakepit, :python, :tool, :execution, :stop]
  @result_size [:snakepit, :python, :tool, :result_size]
  @call [:snakepit, :grpc, :call]
  @tools_dir Path.expand("../../support/python/tool_modules", __DIR__)

  setup_all do
    id = "tools-#{System.unique_integer([:positive])}"

    {:ok, supervisor} =
      Supervisor.start_link(
        [
          {Worker,
           id: id,
           python: PythonWorker.python(),
           tools: ["integration_tools"],
           env: [{"PYTHONPATH", @tools_dir}]}
        ],
        strategy: :one_for_one
      )

    on_exit(fn -> Process.exit(supervisor, :shutdown) end)
    %{id: id}
  end

  test "telemetry_demo with a correlation id: start/stop carry it, the duration covers the delay",
       %{id: id} do
    Forwarder.attach([@start, @stop, @result_size, @call ++ [:start], @call ++ [:stop]])

    assert {:ok, result} =
             Worker.execute(id, "telemetry_demo", %{operation: "test", delay_ms: 100},
               correlation_id: "abc-123"
             )

    assert %{"tool" => "telemetry_demo", "operation" => "test", "correlation_id" => "abc-123"} =
             result

    assert_receive {:telemetry, @start, _,
                    %{worker_id: ^id, correlation_id: "abc-123", operation: "test"}},
                   5_000

    assert_receive {:telemetry, @stop, %{duration: duration},
                    %{worker_id: ^id, correlation_id: "abc-123"}},
                   5_000

    assert System.convert_time_unit(duration, :native, :millisecond) >= 100

    assert_receive {:telemetry, @result_size, %{bytes: bytes},
                    %{correlation_id: "abc-123", tool: "telemetry_demo"}},
                   5_000

    assert bytes > 0

    assert_receive {:telemetry, [:snakepit, :grpc, :call, :start], _,
                    %{worker_id: ^id, rpc_method: "ExecuteTool", correlation_id: "abc-123"}}

    assert_receive {:telemetry, [:snakepit, :grpc, :call, :stop],
                    %{request_size: _, response_size: _}, %{grpc_status: :ok, success: true}}
  end

  test "without a correlation id, one in Snakepit's form is made and reaches the tool and its events",
       %{id: id} do
    Forwarder.attach([@stop])

    assert {:ok, %{"correlation_id" => correlation_id}} =
             Worker.execute(id, "telemetry_demo", %{})

    assert correlation_id =~ ~r/^sp-[0-9a-f]{24}$/

    assert_receive {:telemetry, @stop, _, %{worker_id: ^id, correlation_id: ^correlation_id}},
                   5_000
  end

  test "events emitted from a thread the tool starts with its context carry the id", %{id: id} do
    Forwarder.attach([@stop])
    assert {:ok, "emitted"} = Worker.execute(id, "emit_from_thread", [], correlation_id: "thr-1")

    assert_receive {:telemetry, @stop, _,
                    %{worker_id: ^id, tool: "threaded", correlation_id: "thr-1"}},
                   5_000
  end

  test "parameters of every JSON kind arrive as sent; the result has string keys", %{id: id} do
    params = %{
      "nested" => %{a: [1, 2.5, nil, true, false], b: %{"deep" => %{"x" => "é✓"}}},
      big: 4_611_686_018_427_387_904,
      negative: -9_223_372_036_854_775_808,
      atom: :some_atom,
      empty: %{},
      list: []
    }

    assert {:ok, %{"params" => echoed}} = Worker.execute(id, "echo", params)

    assert echoed == %{
             "nested" => %{"a" => [1, 2.5, nil, true, false], "b" => %{"deep" => %{"x" => "é✓"}}},
             "big" => 4_611_686_018_427_387_904,
             "negative" => -9_223_372_036_854_775_808,
             "atom" => "some_atom",
             "empty" => %{},
             "list" => []
           }

    wide = Map.new(1..300, &{"k#{&1}", &1})
    assert {:ok, %{"params" => ^wide}} = Worker.execute(id, "echo", wide)
  end

  test "a raising tool gives its error payload, and the worker serves the next call", %{id: id} do
    Forwarder.attach([@call ++ [:stop]])

    assert {:error, {:tool_failed, %{"type" => "ValueError", "message" => "bad input"} = details}} =
             Worker.execute(id, "boom", %{message: "bad input"})

    assert details["traceback"] =~ "ValueError"
    assert_receive {:telemetry, [:snakepit, :grpc, :call, :stop], _, %{success: false}}
    assert {:ok, %{"params" => %{}}} = Worker.execute(id, "echo", %{})

    assert {:error, {:tool_failed, %{"type" => "UnknownToolError"}}} =
             Worker.execute(id, "no_such_tool", %{})
  end

  test "a call longer than its timeout gives {:error, :timeout} and an exception event", %{id: id} do
    Forwarder.attach([@call ++ [:exception]])
    assert {:error, :timeout} = Worker.execute(id, "slow", %{delay_ms: 2_000}, timeout: 200)

    assert_receive {:telemetry, [:snakepit, :grpc, :call, :exception], %{duration: _},
                    %{grpc_status: :timeout, worker_id: ^id}}

    # The worker is still fine.
    assert {:ok, "done"} = Worker.execute(id, "slow", %{delay_ms: 1})
  end

  test "bad arguments are errors before anything is sent", %{id: id} do
    assert {:error, {:invalid_param, :p}} = Worker.execute(id, "echo", %{p: {1, 2}})
    assert {:error, {:invalid_param, "r"}} = Worker.execute(id, "echo", %{"r" => make_ref()})
    assert {:error, {:invalid_param, :b}} = Worker.execute(id, "echo", b: <<255, 0>>)
    assert {:error, {:invalid_param, :i}} = Worker.execute(id, "echo", i: 2 ** 70)
    assert {:error, {:invalid_param, :d}} = Worker.execute(id, "echo", d: deep(200))
    assert {:error, {:invalid_param, {1}}} = Worker.execute(id, "echo", %{{1} => 1})
    assert {:error, {:invalid_option, :timeout}} = Worker.execute(id, "echo", %{}, timeout: 0)
    assert {:error, {:invalid_option, :colour}} = Worker.execute(id, "echo", %{}, colour: 1)

    assert {:error, {:invalid_option, :correlation_id}} =
             Worker.execute(id, "echo", %{}, correlation_id: "with space")

    assert {:error, {:invalid_tool, ""}} = Worker.execute(id, "", %{})
    assert {:error, :unknown_worker} = Worker.execute("nobody-here", "echo", %{})
  end

  test "a worker registered without its token refuses the call: {:grpc, :unauthenticated, _}" do
    worker = PythonWorker.start([], [{"SNAKEPIT_WORKER_TOKEN", "the-right-token"}])
    on_exit(fn -> PythonWorker.stop(worker) end)
    id = "tokenless-#{System.unique_integer([:positive])}"
    on_exit(fn -> GrpcStream.unregister_worker(id) end)
    :ok = GrpcStream.register_worker(id, worker.endpoint)
    assert {:error, {:grpc, :unauthenticated, _}} = Worker.execute(id, "telemetry_demo", %{})
    :ok = GrpcStream.register_worker(id, worker.endpoint, token: "the-right-token")
    assert {:ok, %{"tool" => "telemetry_demo"}} = Worker.execute(id, "telemetry_demo", %{})
  end

  test "tool calls past what the worker runs at once are refused at once with :resource_exhausted" do
    # A worker of its own: a call that timed out on this side still runs its tool there.
    id = "tools-#{System.unique_integer([:positive])}"

    start_supervised!(
      {Worker,
       id: id,
       python: PythonWorker.python(),
       tools: ["integration_tools"],
       env: [{"PYTHONPATH", @tools_dir}]}
    )

    # Its server keeps 2 of its 8 threads for telemetry calls (pytest shows a stream opening
    # and flowing meanwhile): 6 tool calls at once, so of 7 one is refused.
    results =
      1..7
      |> Enum.map(fn _ ->
        Task.async(fn ->
          :timer.tc(fn -> Worker.execute(id, "slow", %{delay_ms: 3_000}, timeout: 10_000) end)
        end)
      end)
      |> Enum.map(&Task.await(&1, 15_000))

    {refused, done} = Enum.split_with(results, &match?({_, {:error, _}}, &1))
    assert [{micros, {:error, {:grpc, :resource_exhausted, message}}}] = refused
    assert message =~ "runs 6 tool calls at a time"
    assert micros < 1_000_000
    assert Enum.map(done, &elem(&1, 1)) == List.duplicate({:ok, "done"}, 6)
    # The slots are free again.
    assert {:ok, _} = Worker.execute(id, "echo", %{})
  end

  defp deep(0), do: []
  defp deep(n), do: [deep(n - 1)]
end
