defmodule Snakepit.Telemetry.ApplicationTest do
  # Stops and restarts the application: must not run alongside other tests.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog

  alias Snakepit.Telemetry.Config

  test "the supervisor runs GrpcStream with the config" do
    config = Config.load!([])

    assert Snakepit.Telemetry.Application.children(config) == [
             {Snakepit.Telemetry.GrpcStream, config}
           ]

    off = %{config | grpc_stream: false}
    assert Snakepit.Telemetry.Application.children(off) == [{Snakepit.Telemetry.GrpcStream, off}]
  end

  test "the application is running with the test config" do
    assert Process.whereis(Snakepit.Telemetry.Supervisor)

    assert [{Snakepit.Telemetry.GrpcStream, pid, :worker, _}] =
             Supervisor.which_children(Snakepit.Telemetry.Supervisor)

    assert is_pid(pid)
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
