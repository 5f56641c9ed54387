defmodule Snakepit.Telemetry.Test.Streams do
  @moduledoc "Helpers for tests with real workers: start and register them, read their stream, wait."

  import ExUnit.Assertions

  alias Snakepit.Telemetry.GrpcStream
  alias Snakepit.Telemetry.Test.PythonWorker

  @timeout 30_000

  @doc """
  Starts a Python worker (extra command-line `args`) and picks a fresh worker id; both are
  cleaned up when the test exits. Returns `{worker, id}`.
  """
  def start_worker(args \\ [], prefix \\ "worker") do
    worker = PythonWorker.start(args)
    id = "#{prefix}-#{System.unique_integer([:positive])}"

    ExUnit.Callbacks.on_exit(fn ->
      GrpcStream.unregister_worker(id)
      PythonWorker.stop(worker)
    end)

    {worker, id}
  end

  @doc "Registers `id` at the worker's endpoint and waits until its stream is connected."
  def register!(id, worker, opts \\ []) do
    assert :ok = GrpcStream.register_worker(id, worker.endpoint, opts)
    wait_until(fn -> stream(id)[:status] == :connected end)
  end

  @doc "The `list_streams/0` entry of `id`, or nil."
  def stream(id), do: Enum.find(GrpcStream.list_streams(), &(&1.worker_id == id))

  @doc "Polls `fun` until it returns true; fails the test after `timeout` ms."
  def wait_until(fun, timeout \\ @timeout) do
    deadline = System.monotonic_time(:millisecond) + timeout

    Stream.repeatedly(fun)
    |> Enum.find(fn
      true ->
        true

      _ ->
        if System.monotonic_time(:millisecond) > deadline,
          do: flunk("condition not met in #{timeout} ms")

        Process.sleep(5)
        false
    end)
  end

  @doc "Restarts the `:snakepit_telemetry` application with `env` added to its environment."
  def restart_app(env) do
    :ok = Application.stop(:snakepit_telemetry)
    for {key, value} <- env, do: Application.put_env(:snakepit_telemetry, key, value)
    {:ok, _} = Application.ensure_all_started(:snakepit_telemetry)
  end

  @doc """
  Restarts the application with `env` added to its environment for the rest of the test;
  the original environment is restored (and the application restarted) when it exits.
  """
  def restart_app_for_test(env) do
    original = Application.get_all_env(:snakepit_telemetry)

    ExUnit.Callbacks.on_exit(fn ->
      :ok = Application.stop(:snakepit_telemetry)

      for {key, _} <- Application.get_all_env(:snakepit_telemetry),
          do: Application.delete_env(:snakepit_telemetry, key)

      for {key, value} <- original, do: Application.put_env(:snakepit_telemetry, key, value)
      {:ok, _} = Application.ensure_all_started(:snakepit_telemetry)
    end)

    restart_app(env)
  end
end
