defmodule Snakepit.Telemetry.WorkerTokenTest do
  # Only the BEAM that holds a worker's token may read or steer it: a real Python worker
  # started with SNAKEPIT_WORKER_TOKEN, registered without, with a wrong and with the right token.
  use ExUnit.Case, async: false

  alias Snakepit.Telemetry.GrpcStream
  alias Snakepit.Telemetry.Test.{Forwarder, PythonWorker}

  import Snakepit.Telemetry.Test.Streams

  @stop [:snakepit, :python, :tool, :execution, :stop]
  @token "tok-" <> Base.encode16(:crypto.strong_rand_bytes(16), case: :lower)

  setup do
    restart_app_for_test(reconnect: [initial_ms: 20, max_ms: 100])
    worker = PythonWorker.start([], [{"SNAKEPIT_WORKER_TOKEN", @token}])
    id = "guarded-#{System.unique_integer([:positive])}"

    on_exit(fn ->
      GrpcStream.unregister_worker(id)
      PythonWorker.stop(worker)
    end)

    %{worker: worker, id: id}
  end

  test "without the token, or with a wrong one, the stream is refused and retried; with it, events flow",
       %{worker: worker, id: id} do
    Forwarder.attach([@stop])

    for opts <- [[], [token: "wrong-" <> @token], [token: String.upcase(@token)]] do
      assert :ok = GrpcStream.register_worker(id, worker.endpoint, opts)
      wait_until(fn -> stream(id).attempt >= 2 end)
      assert %{status: :connecting, last_error: {:connect_failed, text}} = stream(id)
      assert text =~ "Unauthenticated"
      refute inspect(GrpcStream.list_streams()) =~ @token
    end

    assert :ok = GrpcStream.register_worker(id, worker.endpoint, token: @token)
    wait_until(fn -> stream(id).status == :connected end)

    PythonWorker.run(worker, %{
      "op" => "emit",
      "event" => "tool.execution.stop",
      "measurements" => %{"duration" => 1}
    })

    assert_receive {:telemetry, @stop, _, %{worker_id: ^id}}, 10_000
    refute inspect(GrpcStream.list_streams()) =~ @token
  end

  test "a token that no header can carry is refused before anything is sent", %{worker: w} do
    for bad <- ["", "has space", "new\nline", "é", String.duplicate("x", 4097), 42] do
      assert {:error, {:invalid_option, :token}} =
               GrpcStream.register_worker("t", w.endpoint, token: bad)
    end

    assert {:error, {:invalid_option, :token}} =
             GrpcStream.register_worker("t", w.endpoint, token: "a", token: "b")

    assert stream("t") == nil
  end
end
