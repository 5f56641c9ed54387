defmodule Snakepit.Telemetry.Application do
  @moduledoc """
  The OTP application of `:snakepit_telemetry`.

  At start it validates the configuration with
  `Snakepit.Telemetry.Config.load!/0`: an invalid configuration makes the
  start fail with the `ArgumentError` that explains it. It then starts a
  supervisor whose child is `{Snakepit.Telemetry.GrpcStream, config}` (with
  `grpc_stream: false` it registers workers without opening their streams).
  """

  use Application

  alias Snakepit.Telemetry.Config

  @impl Application
  def start(_type, _args) do
    config = Config.load!()

    Supervisor.start_link(children(config),
      strategy: :one_for_one,
      name: Snakepit.Telemetry.Supervisor
    )
  end

  @doc false
  @spec children(Config.t()) :: [Supervisor.child_spec() | {module(), term()}]
  def children(%Config{} = config), do: [{Snakepit.Telemetry.GrpcStream, config}]
end
