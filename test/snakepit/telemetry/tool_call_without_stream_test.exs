defmodule Snakepit.Telemetry.ToolCallWithoutStreamTest do
  # grpc_stream: false opens no telemetry stream, but the worker still takes tool calls.
  use ExUnit.Case, async: false

  alias Snakepit.Telemetry.{GrpcStream, Worker}
  alias Snakepit.Telemetry.Test.PythonWorker

  import Snakepit.Telemetry.Test.Streams

  test "with grpc_stream: false a registered worker is :not_streaming and still takes tool calls" do
    restart_app_for_test(grpc_stream: false)
    worker = PythonWorker.start([], [{"SNAKEPIT_WORKER_TOKEN", "tok-no-stream"}])
    on_exit(fn -> PythonWorker.stop(worker) end)
    id = "no-stream-#{System.unique_integer([:positive])}"
    :ok = GrpcStream.register_worker(id, worker.endpoint, token: "tok-no-stream")

    assert %{status: :not_streaming} = stream(id)
    assert {:ok, %{"tool" => "telemetry_demo"}} = Worker.execute(id, "telemetry_demo", %{})
    assert %{status: :not_streaming, received: 0} = stream(id)
  end
end
