# The demo: a supervised Python worker (the project's worker with examples/demo_tools.py)
# runs a tool three times and the built-in telemetry_demo once; an attached :telemetry
# handler prints the spans the tools emit, with the call's correlation id.
# Run with scripts/demo (or `mix run examples/demo.exs` once set up).
alias Snakepit.Telemetry.{GrpcStream, Worker}

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

{:ok, supervisor} =
  Supervisor.start_link(
    [
      {Worker,
       id: "worker_1",
       pool_name: :default,
       python: python,
       tools: ["demo_tools"],
       env: [{"PYTHONPATH", Path.join(root, "examples")}]}
    ],
    strategy: :one_for_one
  )

for n <- 1..3 do
  {:ok, %{"score" => _}} =
    Worker.execute("worker_1", "predict", %{features: [1.0, 2.0]}, correlation_id: "abc-#{n}")
end

{:ok, demo_result} =
  Worker.execute("worker_1", "telemetry_demo", %{operation: "demo", delay_ms: 20})

IO.puts("telemetry_demo returned #{inspect(demo_result)}")

for _ <- 1..4 do
  receive do
    :stop_seen -> :ok
  after
    10_000 -> raise "no event from the Python worker"
  end
end

[stream] = GrpcStream.list_streams()
IO.puts("stream: #{inspect(Map.take(stream, [:worker_id, :status, :received, :emitted, :dropped]))}")
Supervisor.stop(supervisor)
