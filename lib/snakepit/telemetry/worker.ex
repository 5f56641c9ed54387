defmodule Snakepit.Telemetry.Worker do
  @moduledoc """
  A supervised Python worker: starts its OS process, waits until it serves, registers its
  telemetry stream with `Snakepit.Telemetry.GrpcStream`, and stops both together.

  Put it in your own supervision tree:

      children = [
        {Snakepit.Telemetry.Worker, id: "w1", pool_name: :default},
        {Snakepit.Telemetry.Worker, id: "w2", pool_name: :default, tools: ["my_app.tools"]}
      ]

      Supervisor.start_link(children, strategy: :one_for_one)

  Each child's id is `{Snakepit.Telemetry.Worker, worker_id}`, so several workers fit under
  one supervisor as they are; `Supervisor.child_spec({Snakepit.Telemetry.Worker, opts},
  id: other)` sets another.

  ## Options

    * `:id` (required) - the worker id, a non-empty string of at most 256 bytes; it is
      `:worker_id` in every event of this worker.
    * `:pool_name` (atom, default `:default`).
    * `:command` - `[executable | args]` to run. The executable is looked up on `PATH`
      unless it is a path. Default: the project's worker, `python -m
      snakepit_bridge.worker --port 0` (plus `--tools M` for each of `:tools`), with
      `priv/python` of this application first on `PYTHONPATH`.
    * `:python` - the Python executable of the default command (default: the
      `SNAKEPIT_TELEMETRY_PYTHON` environment variable, else `python3` on `PATH`).
    * `:tools` - Python modules the default worker imports (`--tools`), so their `@tool`
      functions can be called with `execute/4`.
    * `:env` - extra environment variables, `[{"NAME", "value"}]`.
    * `:cd` - the working directory.
    * `:ready_timeout` (ms, default `30_000`) - how long the process may take to serve.
    * `:shutdown_grace` (ms, default `2_000`) - after SIGTERM, how long the process may take
      to exit before SIGKILL.
    * `:metadata` - more registration metadata (see `GrpcStream.register_worker/3`).
    * `:mode` (`:grpc` or `:stderr`, default `:grpc`) - `:stderr` is a worker with no gRPC
      server: it is ready as soon as it runs, and its events arrive only as `TELEMETRY:`
      lines (its stream is registered with endpoint `:none`).
    * `:max_line_bytes` (default `65_536`) - the longest output line: a longer
      `TELEMETRY:` line is dropped and counted as `:oversize`, another is cut in the log.
    * `:unreachable_timeout` (ms, default `10_000`, or `:infinity`) - how long a `:grpc`
      worker's process may live on while its port refuses connections before it is
      restarted (see below).

  ## What it does

  The command runs under `priv/bin/worker_wrapper.bash`, in its own process group, with
  stdin from `/dev/null`. It is ready when it prints `GRPC_READY:<port>` or writes the
  port to the file named by `SNAKEPIT_READY_FILE` (Snakepit's convention; a fresh path is
  set for every start and the file is removed after). Every start gets a fresh random
  token in `SNAKEPIT_WORKER_TOKEN`; the worker refuses any call without it, and the
  stream is registered with it, so only this BEAM can read or steer the worker.

  The OS process never outlives this process: when the Worker stops, crashes or is killed,
  or the BEAM itself dies (even by `kill -9`), the port's pipe closes and the wrapper sends
  the process group SIGTERM, then SIGKILL after `:shutdown_grace`. When the OS process
  exits by itself, the Worker stops too, and its supervisor starts it again; the stream's
  registration (settings, counters) stays meanwhile, and the new Worker's stream is
  reported as reconnected. A planned stop unregisters the stream.

  A process can also live on without serving: its gRPC server died but the process did not
  (a tool that forked the process with `multiprocessing`'s `fork` context can do that), and
  its stream would stay `:reconnecting` for good. So a `:grpc` Worker checks its worker's
  port every quarter of `:unreachable_timeout` (but no more often than every 50 ms and at
  least every 5 s), by a TCP connect from the BEAM to loopback, closed at once. Once every
  check for `:unreachable_timeout` was refused, it logs a warning, stops the process as
  above and stops with `{:shutdown, {:worker_unreachable, ms}}`, keeping the registration,
  and its supervisor starts it again as after an exit. Only a refused connection counts: a
  slow or busy worker, whose connect waits or succeeds, is left alone.

  Its stdout and stderr (merged) go to `Logger` (`:info`) with `worker_id` and `pool_name`
  in the metadata; a line longer than `:max_line_bytes` is cut there. Lines in Snakepit's
  stderr-backend format, `TELEMETRY:{json}`, are events instead: once the stream is
  registered, each goes to the NIF, which checks it off the schedulers against the same
  catalog and with the same counters as a gRPC event (unknown events, bad JSON and unknown
  measurement keys are counted by reason in `GrpcStream.list_streams/0`; no atom is made).
  Such lines printed before the stream is registered are held (at most 256) and handed
  over right after; beyond that they are logged.

  ## Telemetry events

    * `[:snakepit, :pool, :worker, :spawn_started]`
      * Measurements: `:system_time`.
      * Metadata: `:node`, `:pool_name`, `:worker_id`, `:worker_module` (this module).
    * `[:snakepit, :pool, :worker, :spawned]` once the process serves.
      * Measurements: `:duration` (`:native` units, from start to ready).
      * Metadata: `:node`, `:pool_name`, `:worker_id`, `:worker_pid` (this process),
        `:python_pid` (the OS pid), `:python_port`, `:mode` (`:grpc`).
    * `[:snakepit, :pool, :worker_ready]` right after `:spawned` (Snakepit's pool event for
      a worker ready to take commands).
      * Measurements: `:duration` (`:native` units, from start to ready).
      * Metadata: `:node`, `:pool_name`, `:worker_id`, `:worker_pid`, `:python_pid`.
    * `[:snakepit, :pool, :worker, :spawn_failed]` when the process exits or misses
      `:ready_timeout`.
      * Measurements: `:duration`.
      * Metadata: `:node`, `:pool_name`, `:worker_id`, `:reason` (`:exited` or
        `:ready_timeout`), `:exit_code` (or `nil`), `:failure_reason` (the last output
        lines, as one string).
    * `[:snakepit, :pool, :worker, :terminated]` when a spawned worker ends.
      * Measurements: `:lifetime` (`:native` units).
      * Metadata: `:node`, `:pool_name`, `:worker_id`, `:reason` (`{:exited, code}` when
        the process exited by itself, `{:unreachable, ms}` when it was stopped for refusing
        connections that long, else the Worker's exit reason), `:planned` (`true` when
        stopped by its supervisor or `stop/1`), `:exit_code` (or `nil`).
    * `[:snakepit, :pool, :worker, :restarted]` when a worker id starts again after its
      previous Worker ended abnormally.
      * Measurements: `:downtime` (`:native` units), `:restart_count`.
      * Metadata: `:node`, `:pool_name`, `:worker_id`, `:new_pid`.
  """

  use GenServer, restart: :permanent

  require Logger

  alias Snakepit.Telemetry.{GrpcStream, WorkerLedger}

  @ready_prefix "GRPC_READY:"
  @child_prefix "SNAKEPIT_CHILD_PID:"
  @telemetry_prefix "TELEMETRY:"
  @output_tail 20
  @max_early_lines 256
  @defaults [
    pool_name: :default,
    ready_timeout: 30_000,
    shutdown_grace: 2_000,
    env: [],
    cd: nil,
    tools: [],
    metadata: [],
    mode: :grpc,
    max_line_bytes: 65_536,
    unreachable_timeout: 10_000
  ]
  @keys [:id, :command, :python | Keyword.keys(@defaults)]

  @type option ::
          {:id, String.t()}
          | {:pool_name, atom()}
          | {:command, [String.t()]}
          | {:python, String.t()}
          | {:tools, [String.t()]}
          | {:env, [{String.t(), String.t()}]}
          | {:cd, Path.t() | nil}
          | {:ready_timeout, pos_integer()}
          | {:shutdown_grace, pos_integer()}
          | {:metadata, keyword()}
          | {:mode, :grpc | :stderr}
          | {:max_line_bytes, pos_integer()}
          | {:unreachable_timeout, pos_integer() | :infinity}

  @doc """
  The child spec: id `{Snakepit.Telemetry.Worker, worker_id}`, restart `:permanent`, and
  a shutdown time that covers `:shutdown_grace`.

      iex> spec = Snakepit.Telemetry.Worker.child_spec(id: "w1")
      iex> {spec.id, spec.restart}
      {{Snakepit.Telemetry.Worker, "w1"}, :permanent}
  """
  @spec child_spec([option()]) :: Supervisor.child_spec()
  def child_spec(opts) do
    grace = Keyword.get(opts, :shutdown_grace, @defaults[:shutdown_grace])

    %{
      id: {__MODULE__, Keyword.get(opts, :id)},
      start: {__MODULE__, :start_link, [opts]},
      restart: :permanent,
      shutdown: grace + 3_000
    }
  end

  @doc """
  Starts the worker and returns once it serves and its stream is registered, or
  `{:error, {:spawn_failed, details}}`. Invalid options raise `ArgumentError`.

      iex> Snakepit.Telemetry.Worker.start_link(id: "")
      ** (ArgumentError) invalid :id for Snakepit.Telemetry.Worker: expected a non-empty string of at most 256 bytes, got: ""
  """
  @spec start_link([option()]) :: GenServer.on_start()
  def start_link(opts) do
    config = validate!(opts)
    GenServer.start_link(__MODULE__, config, timeout: config.ready_timeout + 5_000)
  end

  @doc "Stops the worker (a planned stop: its supervisor, if any, restarts it unless told otherwise)."
  @spec stop(GenServer.server()) :: :ok
  def stop(worker), do: GenServer.stop(worker, :normal)

  @doc """
  Calls the tool `tool` of any registered worker (started by a Worker or registered by
  hand) with `params`, a map or keyword list of JSON-able values (`nil`, booleans, numbers,
  strings, atoms as strings, lists, maps with atom or string keys); a value without a JSON
  form is `{:error, {:invalid_param, key}}` before anything is sent.

  Options: `:correlation_id` (default: a new one in Snakepit's form, `"sp-"` and 24 hex
  digits; it travels in the `x-snakepit-correlation-id` header and in the request's
  `metadata["correlation_id"]`, and every event the tool emits carries it), `:timeout`
  (ms, default `30_000`), `:session_id`, `:metadata` (a map of strings).

  Returns `{:ok, result}` (the tool's JSON result, maps with string keys),
  `{:error, :timeout}`, `{:error, :unknown_worker}`, `{:error, {:tool_failed, details}}`
  (the worker's error payload, decoded when it is JSON) or
  `{:error, {:grpc, status, message}}`. No scheduler waits on the network: the call runs on
  the NIF's runtime. See `Snakepit.Telemetry.ToolCall` for its telemetry events.

      iex> Snakepit.Telemetry.Worker.execute("nobody", "telemetry_demo", %{operation: "x"})
      {:error, :unknown_worker}
  """
  @spec execute(String.t(), String.t(), map() | keyword(), keyword()) ::
          Snakepit.Telemetry.ToolCall.result()
  defdelegate execute(worker_id, tool, params, opts \\ []), to: Snakepit.Telemetry.ToolCall

  @doc "The OS pid and port of the running worker."
  @spec info(GenServer.server()) :: %{
          worker_id: String.t(),
          python_pid: pos_integer(),
          python_port: pos_integer()
        }
  def info(worker), do: GenServer.call(worker, :info)

  ## Options

  defp validate!(opts) do
    unless Keyword.keyword?(opts), do: invalid!(:options, opts, "a keyword list")

    case Keyword.keys(opts) -- @keys do
      [] -> :ok
      [key | _] -> invalid!(key, opts[key], "one of #{inspect(@keys)}")
    end

    opts = Keyword.merge(@defaults, opts)
    id = opts[:id]

    unless is_binary(id) and byte_size(id) in 1..256 and String.valid?(id),
      do: invalid!(:id, id, "a non-empty string of at most 256 bytes")

    unless is_atom(opts[:pool_name]), do: invalid!(:pool_name, opts[:pool_name], "an atom")
    unless opts[:mode] in [:grpc, :stderr], do: invalid!(:mode, opts[:mode], ":grpc or :stderr")

    for key <- [:ready_timeout, :shutdown_grace, :max_line_bytes] do
      unless is_integer(opts[key]) and opts[key] > 0,
        do: invalid!(key, opts[key], "a positive integer")
    end

    unreachable = opts[:unreachable_timeout]

    unless unreachable == :infinity or (is_integer(unreachable) and unreachable > 0),
      do: invalid!(:unreachable_timeout, unreachable, "a positive integer (ms) or :infinity")

    unless is_list(opts[:env]) and Enum.all?(opts[:env], &string_pair?/1),
      do: invalid!(:env, opts[:env], "a list of {name, value} strings")

    unless is_list(opts[:tools]) and Enum.all?(opts[:tools], &is_binary/1),
      do: invalid!(:tools, opts[:tools], "a list of Python module names")

    unless is_nil(opts[:cd]) or (is_binary(opts[:cd]) and File.dir?(opts[:cd])),
      do: invalid!(:cd, opts[:cd], "an existing directory")

    unless Keyword.keyword?(opts[:metadata]),
      do: invalid!(:metadata, opts[:metadata], "a keyword list")

    [executable | args] = command(opts)

    %{
      id: id,
      pool_name: opts[:pool_name],
      executable: executable,
      args: args,
      env: opts[:env],
      cd: opts[:cd],
      ready_timeout: opts[:ready_timeout],
      shutdown_grace: opts[:shutdown_grace],
      metadata: opts[:metadata],
      mode: opts[:mode],
      max_line_bytes: opts[:max_line_bytes],
      unreachable_timeout: unreachable
    }
  end

  defp command(opts) do
    case opts[:command] do
      nil ->
        python = opts[:python] || System.get_env("SNAKEPIT_TELEMETRY_PYTHON") || "python3"
        tools = Enum.flat_map(opts[:tools], &["--tools", &1])
        [find_executable!(python), "-m", "snakepit_bridge.worker", "--port", "0" | tools]

      [executable | args] = command when is_binary(executable) ->
        unless Enum.all?(command, &is_binary/1),
          do: invalid!(:command, command, "a list of strings [executable | args]")

        [find_executable!(executable) | args]

      other ->
        invalid!(:command, other, "a non-empty list of strings [executable | args]")
    end
  end

  defp find_executable!(name) do
    cond do
      String.contains?(name, "/") and File.regular?(name) -> Path.expand(name)
      path = System.find_executable(name) -> path
      true -> invalid!(:command, name, "an executable on PATH or an existing path")
    end
  end

  defp string_pair?({k, v}), do: is_binary(k) and is_binary(v)
  defp string_pair?(_), do: false

  defp invalid!(key, value, expected) do
    raise ArgumentError,
          "invalid #{inspect(key)} for #{inspect(__MODULE__)}: expected #{expected}, got: #{inspect(value)}"
  end

  ## Server

  @impl GenServer
  def init(config) do
    Process.flag(:trap_exit, true)
    started = System.monotonic_time()
    meta = %{node: node(), pool_name: config.pool_name, worker_id: config.id}

    :telemetry.execute(
      [:snakepit, :pool, :worker, :spawn_started],
      %{system_time: System.system_time()},
      Map.put(meta, :worker_module, __MODULE__)
    )

    ready_file = ready_file_path()
    token = Base.url_encode64(:crypto.strong_rand_bytes(24), padding: false)
    port = open_port(config, ready_file, token)
    # A command that exits at once can close the port before we ask: its exit status
    # is already in our mailbox, and there is no OS process left to wait for.
    wrapper_pid =
      case Port.info(port, :os_pid) do
        {:os_pid, os_pid} -> os_pid
        nil -> nil
      end

    state = %{
      config: config,
      meta: meta,
      port: port,
      wrapper_pid: wrapper_pid,
      python_pid: nil,
      python_port: nil,
      started: started,
      spawned: nil,
      token: token,
      tail: [],
      partial: nil,
      early: [],
      # Since when every check of the worker's port was refused (monotonic ms), or nil.
      refused_since: nil
    }

    deadline = started + System.convert_time_unit(config.ready_timeout, :millisecond, :native)

    case await_ready(state, ready_file, deadline) do
      {:ok, state} ->
        File.rm(ready_file)
        spawned(state)

      {:error, reason, exit_code, state} ->
        File.rm(ready_file)
        close_port(state)
        failure = state.tail |> Enum.reverse() |> Enum.join("\n")

        :telemetry.execute(
          [:snakepit, :pool, :worker, :spawn_failed],
          %{duration: System.monotonic_time() - started},
          Map.merge(meta, %{reason: reason, exit_code: exit_code, failure_reason: failure})
        )

        {:stop, {:spawn_failed, %{reason: reason, exit_code: exit_code, output: failure}}}
    end
  end

  defp spawned(state) do
    %{config: config, meta: meta} = state

    registration =
      [pool_name: config.pool_name, python_pid: state.python_pid, python_port: state.python_port]
      |> Keyword.merge(config.metadata)
      |> Keyword.put(:token, state.token)

    endpoint = if config.mode == :stderr, do: :none, else: "127.0.0.1:#{state.python_port}"

    case GrpcStream.register_worker(config.id, endpoint, registration) do
      :ok ->
        now = System.monotonic_time()

        :telemetry.execute(
          [:snakepit, :pool, :worker, :spawned],
          %{duration: now - state.started},
          Map.merge(meta, %{
            worker_pid: self(),
            python_pid: state.python_pid,
            python_port: state.python_port,
            mode: config.mode
          })
        )

        # Snakepit's pool emits this when a worker is ready for commands: here, the same moment.
        :telemetry.execute(
          [:snakepit, :pool, :worker_ready],
          %{duration: now - state.started},
          Map.merge(meta, %{worker_pid: self(), python_pid: state.python_pid})
        )

        case WorkerLedger.started(config.id, self()) do
          {downtime, restarts} ->
            :telemetry.execute(
              [:snakepit, :pool, :worker, :restarted],
              %{downtime: downtime, restart_count: restarts},
              Map.put(meta, :new_pid, self())
            )

          nil ->
            :ok
        end

        state = %{state | spawned: now}
        schedule_port_check(state)
        early = Enum.reverse(state.early)

        {:ok,
         Enum.reduce(early, %{state | early: []}, fn {line, complete}, acc ->
           stderr_line(acc, line, complete)
         end)}

      {:error, reason} ->
        close_port(state)
        {:stop, {:register_failed, reason}}
    end
  end

  # Reads the port's output until the worker is ready (a GRPC_READY line, or the ready file),
  # exits, or the deadline passes.
  defp await_ready(state, ready_file, deadline) do
    state = %{state | python_port: state.python_port || read_ready_file(ready_file)}

    if state.python_pid && (state.python_port || state.config.mode == :stderr) do
      {:ok, state}
    else
      wait = System.convert_time_unit(deadline - System.monotonic_time(), :native, :millisecond)
      port = state.port

      receive do
        {^port, {:data, data}} ->
          await_ready(output(state, data), ready_file, deadline)

        {^port, {:exit_status, status}} ->
          {:error, :exited, status, drain_output(state)}
      after
        min(max(wait, 0), 20) ->
          if wait <= 0,
            do: {:error, :ready_timeout, nil, state},
            else: await_ready(state, ready_file, deadline)
      end
    end
  end

  defp read_ready_file(path) do
    with {:ok, text} <- File.read(path),
         {port, ""} when port in 1..65_535 <- Integer.parse(String.trim(text)) do
      port
    else
      _ -> nil
    end
  end

  defp drain_output(%{port: port} = state) do
    receive do
      {^port, {:data, data}} -> drain_output(output(state, data))
    after
      0 -> state
    end
  end

  @impl GenServer
  def handle_call(:info, _from, state) do
    {:reply,
     %{worker_id: state.config.id, python_pid: state.python_pid, python_port: state.python_port},
     state}
  end

  @impl GenServer
  def handle_info({port, {:data, data}}, %{port: port} = state),
    do: {:noreply, output(state, data)}

  # The OS process ended by itself: the registration stays (its stream shows :reconnecting)
  # until the supervisor's next Worker of this id registers again, which reopens it.
  def handle_info({port, {:exit_status, status}}, %{port: port} = state) do
    state = drain_output(state)
    terminated(state, {:exited, status}, false, status)
    {:stop, {:shutdown, {:worker_exited, status}}, %{state | port: nil}}
  end

  def handle_info(:check_port, %{port: port} = state) when port != nil do
    now = System.monotonic_time(:millisecond)

    state =
      case check_port(state.python_port) do
        :refused -> %{state | refused_since: state.refused_since || now}
        :accepted -> %{state | refused_since: nil}
        :unknown -> state
      end

    refused_ms = if state.refused_since, do: now - state.refused_since, else: 0

    if refused_ms >= state.config.unreachable_timeout do
      unreachable(state, refused_ms)
    else
      schedule_port_check(state)
      {:noreply, state}
    end
  end

  def handle_info({:EXIT, port, _reason}, %{port: port} = state), do: {:noreply, state}

  # The parent (a supervisor) is stopping us: terminate/2 cleans up.
  def handle_info({:EXIT, _pid, reason}, state), do: {:stop, reason, state}

  def handle_info(_other, state), do: {:noreply, state}

  # The process lives on, but nothing listens on its port any more: stop it, keep the
  # registration (as when it exits by itself) and let the supervisor start it again.
  defp unreachable(state, refused_ms) do
    Logger.warning(
      "worker #{state.config.id} (OS pid #{state.python_pid}) has refused connections on " <>
        "port #{state.python_port} for #{refused_ms} ms while its process runs: restarting it",
      worker_id: state.config.id,
      pool_name: state.config.pool_name
    )

    exit_code = close_port(state)
    terminated(state, {:unreachable, refused_ms}, false, exit_code)
    {:stop, {:shutdown, {:worker_unreachable, refused_ms}}, %{state | port: nil}}
  end

  # A few checks per :unreachable_timeout, at least every 5 s and at most every 50 ms.
  defp schedule_port_check(%{config: %{mode: :grpc, unreachable_timeout: timeout}})
       when is_integer(timeout) do
    Process.send_after(self(), :check_port, timeout |> div(4) |> max(50) |> min(5_000))
  end

  defp schedule_port_check(_state), do: :ok

  # Only a refusal says that nothing listens: a connect that waits (a full accept queue) or
  # fails otherwise says nothing either way.
  defp check_port(port) do
    case :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false], 1_000) do
      {:ok, socket} ->
        :gen_tcp.close(socket)
        :accepted

      {:error, :econnrefused} ->
        :refused

      {:error, _other} ->
        :unknown
    end
  end

  @impl GenServer
  def terminate(_reason, %{port: nil}), do: :ok

  def terminate(reason, state) do
    planned = reason in [:normal, :shutdown] or match?({:shutdown, _}, reason)
    if planned, do: WorkerLedger.stopped(state.config.id)
    GrpcStream.unregister_worker(state.config.id)
    exit_code = close_port(state)
    terminated(state, reason, planned, exit_code)
  end

  defp terminated(state, reason, planned, exit_code) do
    :telemetry.execute(
      [:snakepit, :pool, :worker, :terminated],
      %{lifetime: System.monotonic_time() - state.started},
      Map.merge(state.meta, %{reason: reason, planned: planned, exit_code: exit_code})
    )
  end

  # The token never reaches a crash report or :sys.get_status/1 (OTP 25's format_status/1).
  @doc false
  def format_status(status) do
    Map.update(status, :state, nil, fn
      %{token: _} = state -> %{state | token: :redacted}
      other -> other
    end)
  end

  ## The OS process

  defp open_port(config, ready_file, token) do
    wrapper = Path.join(:code.priv_dir(:snakepit_telemetry), "bin/worker_wrapper.bash")
    grace = Float.to_string(config.shutdown_grace / 1000)
    pythonpath = Path.join(:code.priv_dir(:snakepit_telemetry), "python")

    # priv/python first, then the PYTHONPATH given in :env (or else the BEAM's own).
    {given, env} = Enum.split_with(config.env, fn {name, _} -> name == "PYTHONPATH" end)

    pythonpath =
      case List.last(given, {"PYTHONPATH", System.get_env("PYTHONPATH")}) do
        {_, nil} -> pythonpath
        {_, ""} -> pythonpath
        {_, more} -> pythonpath <> ":" <> more
      end

    env =
      [
        {"PYTHONPATH", pythonpath},
        {"SNAKEPIT_READY_FILE", ready_file},
        {"SNAKEPIT_WORKER_TOKEN", token}
        | env
      ]
      |> Enum.map(fn {k, v} -> {String.to_charlist(k), String.to_charlist(v)} end)

    options =
      [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        :use_stdio,
        {:line, config.max_line_bytes},
        {:env, env},
        {:args, [wrapper, grace, config.executable | config.args]}
      ] ++ if(config.cd, do: [{:cd, config.cd}], else: [])

    Port.open({:spawn_executable, bash!()}, options)
  end

  defp bash! do
    System.find_executable("bash") || raise "bash not found: the worker wrapper needs it"
  end

  # Closes the port (the wrapper then stops the process group) and waits until the OS
  # process is gone; returns its exit code when the port reported one.
  defp close_port(%{port: port, wrapper_pid: wrapper_pid, config: config}) do
    exit_code =
      try do
        Port.close(port)
        nil
      rescue
        ArgumentError -> nil
      end

    deadline = System.monotonic_time(:millisecond) + config.shutdown_grace + 2_000
    await_gone(wrapper_pid, deadline)
    exit_code
  end

  defp await_gone(nil, _deadline), do: :ok

  defp await_gone(os_pid, deadline) do
    cond do
      not File.exists?("/proc/#{os_pid}") ->
        :ok

      System.monotonic_time(:millisecond) > deadline ->
        # The wrapper itself is stuck: end it and its group by force.
        System.cmd("kill", ["-KILL", "--", "-#{os_pid}"], stderr_to_stdout: true)
        System.cmd("kill", ["-KILL", "#{os_pid}"], stderr_to_stdout: true)
        :ok

      true ->
        Process.sleep(10)
        await_gone(os_pid, deadline)
    end
  end

  defp ready_file_path do
    name = "snakepit-ready-#{System.unique_integer([:positive])}-#{:os.getpid()}"
    Path.join(System.tmp_dir!(), name)
  end

  ## Output

  defp output(state, {:noeol, chunk}) do
    # A line longer than max_line_bytes arrives in pieces: keep the first, drop the rest.
    case state.partial do
      nil -> %{state | partial: chunk}
      _kept -> state
    end
  end

  defp output(%{partial: nil} = state, {:eol, chunk}), do: line(state, chunk)

  defp output(%{partial: @telemetry_prefix <> _} = state, {:eol, _rest}) do
    stderr_line(%{state | partial: nil}, state.partial, false)
  end

  defp output(%{partial: kept} = state, {:eol, _rest}),
    do: log(%{state | partial: nil}, kept <> " [cut]")

  defp line(state, @child_prefix <> pid) do
    case Integer.parse(pid) do
      {os_pid, ""} -> %{state | python_pid: os_pid}
      _ -> state
    end
  end

  defp line(%{python_port: nil} = state, @ready_prefix <> port) do
    case Integer.parse(port) do
      {port, ""} when port in 1..65_535 -> %{state | python_port: port}
      _ -> log(state, @ready_prefix <> port)
    end
  end

  defp line(state, @telemetry_prefix <> _ = line), do: stderr_line(state, line, true)

  defp line(state, line), do: log(state, line)

  # A telemetry line goes to the NIF (which counts a cut one as :oversize); before the
  # stream is registered, it waits.
  defp stderr_line(%{spawned: nil, early: early} = state, line, complete)
       when length(early) < @max_early_lines,
       do: %{state | early: [{line, complete} | early]}

  defp stderr_line(%{spawned: nil} = state, line, _complete), do: log(state, line)

  defp stderr_line(state, line, complete) do
    case GrpcStream.runtime() do
      nil -> :ok
      runtime -> Snakepit.Telemetry.Native.stderr_line(runtime, state.config.id, line, complete)
    end

    state
  end

  defp log(state, line) do
    Logger.info(line, worker_id: state.config.id, pool_name: state.config.pool_name)
    tail = Enum.take([line | state.tail], @output_tail)
    %{state | tail: tail}
  end
end
