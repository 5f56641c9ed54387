defmodule Snakepit.Telemetry.ApplicationTest do
  # Stops and restarts the application: must not run alongside other tests.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog

  alias Snakepit.Telemetry.Config

  test "the supervisor runs one Dispatcher per scheduler, the worker ledger, then GrpcStream" do
    config = Config.load!([])
    partitions = System.schedulers_online()
    dispatchers = for p <- 0..(partitions - 1), do: {Snakepit.Telemetry.Dispatcher, partition: p}

    assert Snakepit.Telemetry.Application.children(config) ==
             dispatchers ++
               [Snakepit.Telemetry.WorkerLedger, {Snakepit.Telemetry.GrpcStream, config}]
  end

  test "the application is running with the test config" do
    assert Process.whereis(Snakepit.Telemetry.Supervisor)

    children = Supervisor.which_children(Snakepit.Telemetry.Supervisor)

    assert {Snakepit.Telemetry.GrpcStream, pid, :worker, _} =
             List.keyfind(children, Snakepit.Telemetry.GrpcStream, 0)

    assert {{Snakepit.Telemetry.Dispatcher, 0}, dispatcher, :worker, _} =
             List.keyfind(children, {Snakepit.Telemetry.Dispatcher, 0}, 0)

    assert is_pid(pid) and is_pid(dispatcher)
    assert Enum.all?(Snakepit.Telemetry.Dispatcher.pids(), &is_pid/1)
  end

  test "an invalid config makes the start fail with the explanation" do
    capture_log(fn ->
      :ok = Application.stop(:snakepit_telemetry)
      Application.put_env(:snakepit_telemetry, :sampling_rate, 7)

      try do
        assert {:error, reason} = Application.start(:snakepit_telemetry)
        assert inspect(reason) =~ "invalid :sampling_rate"

        Application.delete_env(:snakepit_telemetry, :sampling_rate)
        Application.put_env(:snakepit_telemetry, :no_such_key, 1)
        assert {:error, reason} = Application.start(:snakepit_telemetry)
        assert inspect(reason) =~ "unknown key(s)"
      after
        Application.delete_env(:snakepit_telemetry, :sampling_rate)
        Application.delete_env(:snakepit_telemetry, :no_such_key)
        :ok = Application.ensure_started(:snakepit_telemetry)
      end
    end)
  end
end
