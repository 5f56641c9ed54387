defmodule Snakepit.Telemetry.Test.PythonWorker do
  @moduledoc """
  A real Python worker process for tests: `test/support/python/scripted_worker.py`, which
  serves StreamTelemetry on 127.0.0.1 with the `snakepit_bridge` package and emits events
  when told to on its stdin (one JSON command per line, acknowledged with `ACK <id>`).
  """

  defstruct [:port, :endpoint, :os_pid, :tcp_port, next_id: 1]

  @ready_timeout 30_000
  @ack_timeout 60_000

  def python do
    System.get_env("SNAKEPIT_TELEMETRY_PYTHON") ||
      Path.expand("../../.venv/bin/python", __DIR__)
  end

  @doc """
  Starts a worker; `args` are extra command-line flags such as `--ignore-control`, `env`
  extra environment variables (`[{"SNAKEPIT_WORKER_TOKEN", "..."}]`), `script` the worker
  script under `test/support` (any that speaks the same stdin protocol, such as
  `python/snakepit_style_worker.py`).
  """
  def start(args \\ [], env \\ [], script \\ "python/scripted_worker.py") do
    script = Path.expand(script, __DIR__)
    pythonpath = Path.expand("../../priv/python", __DIR__)

    port =
      Port.open({:spawn_executable, python()}, [
        :binary,
        :exit_status,
        {:line, 1_000_000},
        args: ["-u", script, "--port", "0" | args],
        env: [
          {~c"PYTHONPATH", String.to_charlist(pythonpath)}
          | for({k, v} <- env, do: {String.to_charlist(k), String.to_charlist(v)})
        ]
      ])

    {:os_pid, os_pid} = Port.info(port, :os_pid)

    receive do
      {^port, {:data, {:eol, "GRPC_READY:" <> tcp_port}}} ->
        %__MODULE__{
          port: port,
          os_pid: os_pid,
          tcp_port: tcp_port,
          endpoint: "127.0.0.1:" <> tcp_port
        }

      {^port, {:exit_status, status}} ->
        raise "python worker exited with status #{status} before it was ready"
    after
      @ready_timeout -> raise "python worker not ready after #{@ready_timeout} ms"
    end
  end

  @doc "Sends a command and waits until the worker has enqueued its events."
  def run(%__MODULE__{port: port} = worker, command) when is_map(command) do
    id = System.unique_integer([:positive])
    Port.command(port, [encode(Map.put(command, "id", id)), ?\n])
    await_line(port, "ACK #{id}")
    worker
  end

  @doc "Sends a command without waiting (for `exit`)."
  def send_command(%__MODULE__{port: port}, command) do
    Port.command(port, [encode(command), ?\n])
    :ok
  end

  @doc "The worker's own counters (`{\"op\": \"stats\"}`), as the raw JSON line."
  def stats_line(%__MODULE__{port: port} = worker) do
    send_command(worker, %{"op" => "stats"})
    await_prefix(port, "STATS ")
  end

  @doc "The worker's own counters and the settings it applies, decoded."
  def stats(worker), do: worker |> stats_line() |> Snakepit.Telemetry.Test.Json.decode!()

  @doc "Waits until the worker's applied settings (`policy` in its stats) satisfy `fun`."
  def await_policy(worker, fun, timeout \\ 10_000) do
    deadline = System.monotonic_time(:millisecond) + timeout

    Stream.repeatedly(fn -> stats(worker)["policy"] end)
    |> Enum.find(fn policy ->
      cond do
        fun.(policy) ->
          true

        System.monotonic_time(:millisecond) > deadline ->
          raise "worker policy: #{inspect(policy)}"

        true ->
          Process.sleep(5) && false
      end
    end)
  end

  @doc "Stops the worker (it exits when its stdin closes) and waits for it."
  def stop(%__MODULE__{port: port}) do
    if Port.info(port) do
      Port.close(port)
    end

    :ok
  catch
    :error, _ -> :ok
  end

  @doc "Waits until the worker process has exited."
  def await_exit(%__MODULE__{port: port}, timeout \\ 10_000) do
    receive do
      {^port, {:exit_status, status}} -> status
    after
      timeout -> raise "python worker did not exit"
    end
  end

  defp await_line(port, line) do
    receive do
      {^port, {:data, {:eol, ^line}}} -> :ok
      {^port, {:exit_status, status}} -> raise "python worker exited with status #{status}"
    after
      @ack_timeout -> raise "no #{inspect(line)} from the python worker"
    end
  end

  defp await_prefix(port, prefix) do
    size = byte_size(prefix)

    receive do
      {^port, {:data, {:eol, <<^prefix::binary-size(size), rest::binary>>}}} -> rest
      {^port, {:exit_status, status}} -> raise "python worker exited with status #{status}"
    after
      @ack_timeout -> raise "no #{inspect(prefix)} line from the python worker"
    end
  end

  @doc "A minimal JSON encoder for commands (no JSON library is available offline)."
  def encode(value) when is_map(value) do
    fields = Enum.map_join(value, ",", fn {k, v} -> encode(to_string(k)) <> ":" <> encode(v) end)
    "{" <> fields <> "}"
  end

  def encode(value) when is_list(value), do: "[" <> Enum.map_join(value, ",", &encode/1) <> "]"

  def encode(value) when is_binary(value),
    do: inspect(value, binaries: :as_strings, printable_limit: :infinity) |> json_string()

  def encode(true), do: "true"
  def encode(false), do: "false"
  def encode(nil), do: "null"
  def encode(value) when is_atom(value), do: encode(Atom.to_string(value))
  def encode(value) when is_integer(value), do: Integer.to_string(value)
  def encode(value) when is_float(value), do: Float.to_string(value)

  # Elixir's inspect of a printable string is valid JSON for the strings tests use
  # (ASCII, escaped quotes and backslashes); reject anything else loudly.
  defp json_string("\"" <> _ = quoted) do
    if String.contains?(quoted, ["\\e", "\\a", "\\v", "\\#"]) do
      raise ArgumentError, "string not encodable as JSON by this test encoder: #{quoted}"
    end

    quoted
  end
end
