# The demo: a real Python worker streams three spans; an attached :telemetry handler prints them.
# Run with scripts/demo (or `mix run examples/demo.exs` once set up).
alias Snakepit.Telemetry.GrpcStream

root = Path.expand("..", __DIR__)
python = System.get_env("SNAKEPIT_TELEMETRY_PYTHON") || Path.join(root, ".venv/bin/python")

IO.puts("telemetry implementation: #{Snakepit.Telemetry.Backend.telemetry_impl()}")

demo = self()

:telemetry.attach(
  "py-tools",
  [:snakepit, :python, :tool, :execution, :stop],
  fn _event, %{duration: d}, meta, _ ->
    ms = System.convert_time_unit(d, :native, :microsecond) / 1000
    IO.puts("#{meta.tool} took #{ms} ms (worker #{meta.worker_id}, correlation #{meta.correlation_id})")
    send(demo, :stop_seen)
  end,
  nil
)

port =
  Port.open({:spawn_executable, python}, [
    :binary,
    {:line, 4096},
    args: [Path.join(root, "examples/demo_worker.py")],
    env: [{~c"PYTHONPATH", String.to_charlist(Path.join(root, "priv/python"))}]
  ])

{:os_pid, os_pid} = Port.info(port, :os_pid)

endpoint =
  receive do
    {^port, {:data, {:eol, "GRPC_READY:" <> tcp_port}}} -> "127.0.0.1:" <> tcp_port
  after
    30_000 -> raise "the Python worker did not start"
  end

:ok = GrpcStream.register_worker("worker_1", endpoint, pool_name: :default, python_pid: os_pid)

for _ <- 1..3 do
  receive do
    :stop_seen -> :ok
  after
    10_000 -> raise "no event from the Python worker"
  end
end

[stream] = GrpcStream.list_streams()
IO.puts("stream: #{inspect(Map.take(stream, [:worker_id, :status, :received, :emitted, :dropped]))}")
:ok = GrpcStream.unregister_worker("worker_1")
Port.close(port)
