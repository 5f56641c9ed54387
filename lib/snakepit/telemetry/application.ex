defmodule Snakepit.Telemetry.Application do
  @moduledoc """
  The OTP application of `:snakepit_telemetry`.

  At start it validates the configuration with
  `Snakepit.Telemetry.Config.load!/0`: an invalid configuration makes the
  start fail with the `ArgumentError` that explains it. It then starts a
  supervisor with the `Snakepit.Telemetry.Dispatcher` partitions (which run the
  handlers, one per scheduler),
  a small ledger of worker restarts (for `Snakepit.Telemetry.Worker`'s
  `:restarted` event) and, after them, `{Snakepit.Telemetry.GrpcStream, config}`
  (which starts the NIF runtime; with `grpc_stream: false` it registers workers
  without opening their streams).

  Neither process holds state that a crash could lose (registrations, settings
  and counters live in the NIF runtime, kept until the application stops), so
  the supervisor restarts each on its own (`:one_for_one`) and tolerates up to
  20 restarts in 5 seconds before giving up. Stopping the application ends
  every stream.
  """

  use Application

  alias Snakepit.Telemetry.{Config, Dispatcher}

  @impl Application
  def start(_type, _args) do
    config = Config.load!()
    Dispatcher.put_partition_count(config.dispatchers)

    Supervisor.start_link(children(config),
      strategy: :one_for_one,
      max_restarts: 20,
      max_seconds: 5,
      name: Snakepit.Telemetry.Supervisor
    )
  end

  @impl Application
  def stop(_state), do: Snakepit.Telemetry.GrpcStream.stop_runtime()

  @doc false
  @spec children(Config.t()) :: [Supervisor.child_spec() | {module(), term()}]
  def children(%Config{} = config) do
    dispatchers =
      for partition <- 0..(config.dispatchers - 1),
          do: {Dispatcher, partition: partition}

    dispatchers ++ [Snakepit.Telemetry.WorkerLedger, {Snakepit.Telemetry.GrpcStream, config}]
  end
end
