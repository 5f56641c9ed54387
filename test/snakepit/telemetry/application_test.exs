defmodule Snakepit.Telemetry.ApplicationTest do
  # Stops and restarts the application: must not run alongside other tests.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog

  alias Snakepit.Telemetry.Config

  test "the supervisor runs the Dispatcher, the worker ledger, then GrpcStream with the config" do
    config = Config.load!([])

    assert Snakepit.Telemetry.Application.children(config) == [
             Snakepit.Telemetry.Dispatcher,
             Snakepit.Telemetry.WorkerLedger,
             {Snakepit.Telemetry.GrpcStream, config}
           ]
  end

  test "the application is running with the test config" do
    assert Process.whereis(Snakepit.Telemetry.Supervisor)

    children = Supervisor.which_children(Snakepit.Telemetry.Supervisor)

    assert {Snakepit.Telemetry.GrpcStream, pid, :worker, _} =
             List.keyfind(children, Snakepit.Telemetry.GrpcStream, 0)

    assert {Snakepit.Telemetry.Dispatcher, dispatcher, :worker, _} =
             List.keyfind(children, Snakepit.Telemetry.Dispatcher, 0)

    assert is_pid(pid) and is_pid(dispatcher)
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
