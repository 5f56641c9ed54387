defmodule Snakepit.Telemetry.WorkerTest do
  # Supervised Python workers: real OS processes under real supervisors, checked against
  # the OS process table; kill -9 of the worker and of a whole BEAM.
  use ExUnit.Case, async: false

  alias Snakepit.Telemetry.Worker
  alias Snakepit.Telemetry.Test.{Forwarder, PythonWorker}

  import Snakepit.Telemetry.Test.Streams

  doctest Worker

  @stop [:snakepit, :python, :tool, :execution, :stop]
  @pool [:snakepit, :pool, :worker]
  @connection [:snakepit, :grpc, :connection]
  @timeout 20_000
  @script Path.expand("../../support/python/emitting_worker.py", __DIR__)

  setup do
    restart_app_for_test(reconnect: [initial_ms: 50, max_ms: 500])
    %{id: "sup-#{System.unique_integer([:positive])}"}
  end

  defp worker_opts(id, extra \\ []) do
    [
      id: id,
      pool_name: :test_pool,
      command: [PythonWorker.python(), @script, "--every-ms", "20"],
      shutdown_grace: 500
    ] ++ extra
  end

  defp alive?(os_pid), do: File.exists?("/proc/#{os_pid}")

  defp events(names), do: Forwarder.attach(Enum.map(names, &(@pool ++ [&1])) ++ [@stop])

  test "a supervised worker spawns, registers its stream with a fresh token, and its events flow",
       %{id: id} do
    events([:spawn_started, :spawned])
    Forwarder.attach([[:snakepit, :pool, :worker_ready]])
    pid = start_supervised!({Worker, worker_opts(id)})
    %{python_pid: python_pid, python_port: python_port} = Worker.info(pid)

    assert_receive {:telemetry, [:snakepit, :pool, :worker, :spawn_started], %{system_time: _},
                    %{worker_id: ^id, pool_name: :test_pool, worker_module: Worker}}

    assert_receive {:telemetry, [:snakepit, :pool, :worker, :spawned], %{duration: duration},
                    %{
                      worker_id: ^id,
                      worker_pid: ^pid,
                      python_pid: ^python_pid,
                      python_port: ^python_port
                    }}

    assert duration > 0

    assert_receive {:telemetry, [:snakepit, :pool, :worker_ready], %{duration: ^duration},
                    %{
                      worker_id: ^id,
                      pool_name: :test_pool,
                      worker_pid: ^pid,
                      python_pid: ^python_pid
                    }}

    assert alive?(python_pid)
    # The OS pid is the Python process itself, not the wrapper.
    assert File.read!("/proc/#{python_pid}/cmdline") =~ "emitting_worker.py"

    assert_receive {:telemetry, @stop, _,
                    %{
                      worker_id: ^id,
                      pool_name: :test_pool,
                      python_pid: ^python_pid,
                      tool: "tick"
                    }},
                   @timeout

    assert %{status: :connected, endpoint: endpoint} = stream(id)
    assert endpoint == "127.0.0.1:#{python_port}"
    # The token is in the Worker's state, never in what :sys.get_status or a crash report shows.
    token = :sys.get_state(pid).token
    assert byte_size(token) >= 32
    refute inspect(:sys.get_status(pid)) =~ token
    refute inspect(stream(id)) =~ token
  end

  test "kill -9 of the worker's OS process: lost, restarted by the supervisor, reconnected, events flow again with no manual step",
       %{id: id} do
    events([:spawned, :terminated, :restarted])
    Forwarder.attach([@connection ++ [:lost], @connection ++ [:reconnected]])
    pid = start_supervised!({Worker, worker_opts(id)})
    %{python_pid: first} = Worker.info(pid)
    assert_receive {:telemetry, [:snakepit, :pool, :worker, :spawned], _, %{python_pid: ^first}}
    assert_receive {:telemetry, @stop, _, %{worker_id: ^id, python_pid: ^first}}, @timeout

    System.cmd("kill", ["-9", Integer.to_string(first)])

    assert_receive {:telemetry, [:snakepit, :grpc, :connection, :lost], _, %{worker_id: ^id}},
                   @timeout

    assert_receive {:telemetry, [:snakepit, :pool, :worker, :terminated], %{lifetime: _},
                    %{worker_id: ^id, planned: false, exit_code: 137}},
                   @timeout

    assert_receive {:telemetry, [:snakepit, :pool, :worker, :spawned], _,
                    %{worker_id: ^id, python_pid: second}},
                   @timeout

    assert second != first

    assert_receive {:telemetry, [:snakepit, :pool, :worker, :restarted],
                    %{downtime: downtime, restart_count: 1}, %{worker_id: ^id}},
                   @timeout

    assert downtime > 0

    assert_receive {:telemetry, [:snakepit, :grpc, :connection, :reconnected],
                    %{downtime: _, retry_count: _}, %{worker_id: ^id}},
                   @timeout

    assert_receive {:telemetry, @stop, _, %{worker_id: ^id, python_pid: ^second}}, @timeout
    refute alive?(first)
    assert %{status: :connected, received: received} = stream(id)
    # The counters of the first process's stream carried over to the second.
    assert received > 1
  end

  test "stopping the supervisor (or the Worker) leaves no Python process and no registration",
       %{id: id} do
    events([:terminated])
    pid = start_supervised!({Worker, worker_opts(id)})
    %{python_pid: python_pid} = Worker.info(pid)
    wait_until(fn -> stream(id)[:status] == :connected end)

    :ok = stop_supervised(Worker.child_spec(id: id).id)

    refute alive?(python_pid)
    assert stream(id) == nil

    assert_receive {:telemetry, [:snakepit, :pool, :worker, :terminated], _,
                    %{worker_id: ^id, planned: true, reason: :shutdown}}
  end

  test "Process.exit(worker, :kill) takes its OS process (and the processes it started) with it",
       %{id: id} do
    Process.flag(:trap_exit, true)
    # The command leaves a process of its own behind: the whole process group must go.
    marker = "grandchild-#{System.unique_integer([:positive])}"

    command = [
      "bash",
      "-c",
      "(exec -a #{marker} sleep 300) & exec #{PythonWorker.python()} #{@script}"
    ]

    {:ok, pid} = Worker.start_link(id: id, command: command, shutdown_grace: 500)
    # A killed Worker cannot unregister: its registration stays for its next incarnation.
    on_exit(fn -> Snakepit.Telemetry.GrpcStream.unregister_worker(id) end)
    %{python_pid: python_pid} = Worker.info(pid)
    assert {_, 0} = System.cmd("pgrep", ["-f", marker])
    Process.exit(pid, :kill)
    assert_receive {:EXIT, ^pid, :killed}
    wait_until(fn -> not alive?(python_pid) end, 5_000)
    wait_until(fn -> match?({"", 1}, System.cmd("pgrep", ["-f", marker])) end, 5_000)
  end

  test "kill -9 of the whole BEAM leaves no Python process" do
    ebin = Application.app_dir(:snakepit_telemetry, "ebin")

    code = """
    {:ok, _} = Application.ensure_all_started(:snakepit_telemetry)
    {:ok, pid} = Snakepit.Telemetry.Worker.start_link(
      id: "orphan-check", command: [#{inspect(PythonWorker.python())}, #{inspect(@script)}])
    IO.puts("PIDS \#{System.pid()} \#{Snakepit.Telemetry.Worker.info(pid).python_pid}")
    Process.sleep(:infinity)
    """

    port =
      Port.open({:spawn_executable, System.find_executable("elixir")}, [
        :binary,
        :exit_status,
        {:line, 4096},
        args: ["-pa", ebin, "-e", code]
      ])

    {beam, python} = await_pids(port)
    assert alive?(python)
    System.cmd("kill", ["-9", Integer.to_string(beam)])
    wait_until(fn -> not alive?(beam) end, 5_000)
    wait_until(fn -> not alive?(python) end, 10_000)
  end

  defp await_pids(port) do
    receive do
      {^port, {:data, {:eol, "PIDS " <> pids}}} ->
        [beam, python] = pids |> String.split() |> Enum.map(&String.to_integer/1)
        {beam, python}

      {^port, {:data, _other}} ->
        await_pids(port)

      {^port, {:exit_status, status}} ->
        flunk("the second BEAM exited with #{status}")
    after
      @timeout -> flunk("no PIDS line from the second BEAM")
    end
  end

  describe "a worker that never serves" do
    setup do
      Process.flag(:trap_exit, true)
      :ok
    end

    test "a command that exits at once gives :spawn_failed with its exit code and output", %{
      id: id
    } do
      events([:spawn_failed])
      command = ["sh", "-c", "echo 'cannot start: no model' >&2; exit 3"]

      assert {:error, {:spawn_failed, %{reason: :exited, exit_code: 3, output: output}}} =
               Worker.start_link(id: id, command: command)

      assert output =~ "cannot start: no model"

      assert_receive {:telemetry, [:snakepit, :pool, :worker, :spawn_failed], %{duration: _},
                      %{worker_id: ^id, reason: :exited, exit_code: 3, failure_reason: reason}}

      assert reason =~ "cannot start: no model"
      assert stream(id) == nil
    end

    test "commands that exit before the port reports their OS pid still give :spawn_failed", %{
      id: id
    } do
      # Seen in CI on a loaded machine: `exit 3` ended before Port.info/2 ran in init and
      # the Worker crashed with a badmatch. Busy processes on every scheduler make the
      # Worker lose its scheduler between opening the port and asking for its OS pid.
      busy = for _ <- 1..(System.schedulers_online() * 4), do: spawn(fn -> spin() end)

      try do
        for n <- 1..40 do
          assert {:error, {:spawn_failed, %{reason: :exited, exit_code: 3}}} =
                   Worker.start_link(id: "#{id}-#{n}", command: ["sh", "-c", "exit 3"])
        end
      after
        Enum.each(busy, &Process.exit(&1, :kill))
      end
    end

    test "a command that never becomes ready gives :spawn_failed after ready_timeout, and is stopped",
         %{id: id} do
      marker = "never-ready-#{System.unique_integer([:positive])}"
      command = ["bash", "-c", "exec -a #{marker} sleep 30"]

      assert {:error, {:spawn_failed, %{reason: :ready_timeout, exit_code: nil}}} =
               Worker.start_link(id: id, command: command, ready_timeout: 300)

      {out, _} = System.cmd("pgrep", ["-f", marker])
      assert out == ""
    end
  end

  describe "TELEMETRY: lines on the worker's output" do
    test "a stderr-only worker reaches handlers; broken, unknown, oversize and overflowing lines are counted; no atom is made",
         %{id: id} do
      Forwarder.attach([@stop])

      good =
        ~s(TELEMETRY:{"event":"tool.execution.stop","measurements":{"duration":5},) <>
          ~s("metadata":{"tool":"stderr-only","zz_never_an_atom_4711":"v"},"timestamp_ns":1,"correlation_id":"c-1"})

      lines = [
        good,
        ~s(TELEMETRY:{broken),
        ~s(TELEMETRY:{"event":"zz_never.zz_heard_4711","measurements":{}}),
        ~s(TELEMETRY:{"event":"tool.execution.stop","measurements":{"zz_not_a_key_4711":1}}),
        ~s(TELEMETRY:{"event":"tool.execution.stop","measurements":{"duration":NaN}}),
        "TELEMETRY:" <> String.duplicate("x", 3_000),
        "an ordinary log line",
        String.replace(good, "stderr-only", "last")
      ]

      script =
        Enum.map_join(lines, "\n", &"printf '%s\\n' #{shell_quote(&1)} >&2") <> "\nexec sleep 30"

      # Names nothing has made atoms of; afterwards they must still not be atoms. (The
      # atom count itself moves as modules load, so it proves nothing here.)
      fresh = ["zz_never_an_atom_4711", "zz_not_a_key_4711", "zz_never", "zz_heard_4711"]
      for name <- fresh, do: assert_raise(ArgumentError, fn -> String.to_existing_atom(name) end)

      _pid =
        start_supervised!(
          {Worker, id: id, mode: :stderr, command: ["bash", "-c", script], max_line_bytes: 1_024}
        )

      assert_receive {:telemetry, @stop, %{duration: _},
                      %{worker_id: ^id, tool: "stderr-only", correlation_id: "c-1"} = meta},
                     @timeout

      assert meta["zz_never_an_atom_4711"] == "v"
      assert_receive {:telemetry, @stop, _, %{worker_id: ^id, tool: "last"}}, @timeout

      wait_until(fn -> stream(id).received == 7 end)

      # Counted as emitted once the Dispatcher acknowledges the batch, after its handlers.
      wait_until(fn -> stream(id).emitted == 2 end)
      assert %{status: :not_streaming, endpoint: :none, emitted: 2, dropped: dropped} = stream(id)

      assert %{decode_error: 1, unknown_event: 1, invalid_measurement: 2, oversize: 1} = dropped

      for name <- fresh, do: assert_raise(ArgumentError, fn -> String.to_existing_atom(name) end)
    end

    test "the Python package's StderrBackend (Snakepit's line, values unconverted) reaches handlers",
         %{id: id} do
      Forwarder.attach([@stop, [:snakepit, :python, :tool, :execution, :start]])

      # Snakepit's own stderr backend, as an adapter would install it: int, float, bool and
      # None metadata go on the line as JSON values, not strings.
      program = """
      import time
      from snakepit_bridge import telemetry
      from snakepit_bridge.telemetry.backends.stderr import StderrBackend
      from snakepit_bridge.telemetry.manager import set_backend
      set_backend(StderrBackend())
      telemetry.emit("tool.execution.stop", {"duration": 7, "count": True},
                     {"tool": "stderr-backend", "attempt": 2, "ratio": 0.5, "cached": False, "parent": None})
      telemetry.emit("tool.execution.stop", {"duration": float("nan")}, {"tool": "nan"})
      with telemetry.span("tool.execution", {"tool": "spanned"}, correlation_id="cid-5"):
          pass
      time.sleep(30)
      """

      # The Worker puts priv/python on the PYTHONPATH.
      start_supervised!(
        {Worker, id: id, mode: :stderr, command: [PythonWorker.python(), "-c", program]}
      )

      assert_receive {:telemetry, @stop, %{duration: _} = first,
                      %{worker_id: ^id, tool: "stderr-backend", correlation_id: nil} = meta},
                     @timeout

      assert first.count == 1

      assert {meta["attempt"], meta["ratio"], meta["cached"], meta["parent"]} ==
               {"2", "0.5", "False", "None"}

      assert_receive {:telemetry, [:snakepit, :python, :tool, :execution, :start],
                      %{system_time: _},
                      %{worker_id: ^id, tool: "spanned", correlation_id: "cid-5"}},
                     @timeout

      assert_receive {:telemetry, @stop, %{duration: _},
                      %{worker_id: ^id, tool: "spanned", correlation_id: "cid-5"}},
                     @timeout

      refute_received {:telemetry, @stop, _, %{tool: "nan"}}
      wait_until(fn -> stream(id).received == 4 end)
      # Counted as emitted once the Dispatcher acknowledges the batch, after its handlers.
      wait_until(fn -> stream(id).emitted == 3 end)
      assert %{emitted: 3, dropped: %{invalid_measurement: 1}} = stream(id)
    end

    test "a gRPC worker's stderr lines arrive beside its stream", %{id: id} do
      Forwarder.attach([@stop])

      command = [PythonWorker.python(), @script, "--every-ms", "20", "--stderr-lines"]
      start_supervised!({Worker, id: id, command: command})

      assert_receive {:telemetry, @stop, %{duration: _}, %{worker_id: ^id, tool: "stderr"}},
                     @timeout

      assert_receive {:telemetry, @stop, _, %{worker_id: ^id, tool: "tick"}}, @timeout
      assert stream(id).status == :connected
    end
  end

  defp shell_quote(text), do: "'" <> String.replace(text, "'", "'\\''") <> "'"

  test "readiness from SNAKEPIT_READY_FILE alone (Snakepit's convention); the file is removed after",
       %{id: id} do
    Process.flag(:trap_exit, true)
    on_exit(fn -> Snakepit.Telemetry.GrpcStream.unregister_worker(id) end)

    script =
      ~s(printf 4242 > "$SNAKEPIT_READY_FILE.tmp"; mv "$SNAKEPIT_READY_FILE.tmp" "$SNAKEPIT_READY_FILE"; ) <>
        ~s(exec sleep 30)

    {:ok, pid} = Worker.start_link(id: id, command: ["bash", "-c", script], shutdown_grace: 200)
    assert %{python_port: 4242} = Worker.info(pid)
    assert stream(id).endpoint == "127.0.0.1:4242"
    ready_files = Path.wildcard(Path.join(System.tmp_dir!(), "snakepit-ready-*-#{:os.getpid()}"))
    assert ready_files == []
    Worker.stop(pid)
  end

  @tag :capture_log
  test "the worker's output goes to Logger with its worker id", %{id: id} do
    line = "hello from the worker #{System.unique_integer([:positive])}"
    script = ~s(echo "#{line}"; echo "GRPC_READY:4243"; exec sleep 30)
    on_exit(fn -> Snakepit.Telemetry.GrpcStream.unregister_worker(id) end)

    log =
      ExUnit.CaptureLog.capture_log([metadata: [:worker_id]], fn ->
        pid = start_supervised!({Worker, id: id, command: ["bash", "-c", script]})
        assert %{python_port: 4243} = Worker.info(pid)
        stop_supervised!(Worker.child_spec(id: id).id)
      end)

    assert log =~ line
    assert log =~ "worker_id=#{id}"
  end

  describe "a worker whose process lives on without serving" do
    test "is restarted after :unreachable_timeout of refused connections, keeping its registration; its stream comes back",
         %{id: id} do
      events([:spawned, :terminated, :restarted])
      Forwarder.attach([@connection ++ [:reconnected]])
      # Every start of this worker stops serving after 1.5 s and lives on.
      opts = worker_opts(id, unreachable_timeout: 400)
      opts = Keyword.update!(opts, :command, &(&1 ++ ["--stop-serving-after-ms", "1500"]))
      pid = start_supervised!({Worker, opts})
      %{python_pid: first} = Worker.info(pid)
      assert_receive {:telemetry, [:snakepit, :pool, :worker, :spawned], _, %{python_pid: ^first}}
      assert_receive {:telemetry, @stop, _, %{worker_id: ^id, python_pid: ^first}}, @timeout

      assert_receive {:telemetry, [:snakepit, :pool, :worker, :terminated], %{lifetime: lifetime},
                      %{worker_id: ^id, planned: false, reason: {:unreachable, refused_ms}}},
                     @timeout

      assert refused_ms >= 400
      # Stopped for it, after it had served: not at once, not never.
      assert System.convert_time_unit(lifetime, :native, :millisecond) >= 1_500 + 400
      refute alive?(first)

      assert_receive {:telemetry, [:snakepit, :pool, :worker, :spawned], _,
                      %{worker_id: ^id, python_pid: second}},
                     @timeout

      assert second != first

      assert_receive {:telemetry, [:snakepit, :pool, :worker, :restarted], %{restart_count: 1},
                      %{worker_id: ^id}},
                     @timeout

      assert_receive {:telemetry, [:snakepit, :grpc, :connection, :reconnected], _,
                      %{worker_id: ^id}},
                     @timeout

      assert_receive {:telemetry, @stop, _, %{worker_id: ^id, python_pid: ^second}}, @timeout
    end

    test "with unreachable_timeout: :infinity it is left alone", %{id: id} do
      events([:terminated])
      opts = worker_opts(id, unreachable_timeout: :infinity)
      opts = Keyword.update!(opts, :command, &(&1 ++ ["--stop-serving-after-ms", "300"]))
      pid = start_supervised!({Worker, opts})
      %{python_pid: python_pid, python_port: port} = Worker.info(pid)
      assert_receive {:telemetry, @stop, _, %{worker_id: ^id}}, @timeout
      wait_until(fn -> refused?(port) end, @timeout)
      Process.sleep(1_500)
      refute_received {:telemetry, [:snakepit, :pool, :worker, :terminated], _, _}
      assert alive?(python_pid)
      assert %{python_pid: ^python_pid} = Worker.info(pid)
    end

    test "a worker that serves is never restarted by the check, however often it runs",
         %{id: id} do
      events([:terminated])
      pid = start_supervised!({Worker, worker_opts(id, unreachable_timeout: 100)})
      %{python_pid: python_pid} = Worker.info(pid)
      # 50 ms between checks: about 30 of them (each a connection the worker accepts).
      Process.sleep(1_500)
      refute_received {:telemetry, [:snakepit, :pool, :worker, :terminated], _, _}
      assert %{python_pid: ^python_pid} = Worker.info(pid)
      assert_receive {:telemetry, @stop, _, %{worker_id: ^id, python_pid: ^python_pid}}, @timeout
      assert %{status: :connected} = stream(id)
    end
  end

  defp refused?(port) do
    case :gen_tcp.connect({127, 0, 0, 1}, port, [active: false], 1_000) do
      {:ok, socket} -> :gen_tcp.close(socket) && false
      {:error, :econnrefused} -> true
      {:error, _} -> false
    end
  end

  test "invalid options raise ArgumentError naming the option" do
    assert_raise ArgumentError, ~r/invalid :command .* on PATH/, fn ->
      Worker.start_link(id: "x", command: ["no-such-executable-anywhere"])
    end

    assert_raise ArgumentError, ~r/invalid :colour/, fn ->
      Worker.start_link(id: "x", colour: 1)
    end

    assert_raise ArgumentError, ~r/invalid :env/, fn ->
      Worker.start_link(id: "x", env: [{"A", 1}])
    end

    assert_raise ArgumentError, ~r/invalid :ready_timeout/, fn ->
      Worker.start_link(id: "x", ready_timeout: 0)
    end

    assert_raise ArgumentError, ~r/invalid :unreachable_timeout .* or :infinity/, fn ->
      Worker.start_link(id: "x", unreachable_timeout: 0)
    end
  end

  defp spin, do: spin()
end
