import Config

# The tests run the application's own Snakepit.Telemetry.GrpcStream with the real NIF,
# and one app-defined worker event (see Snakepit.Telemetry.Config).
config :snakepit_telemetry,
  grpc_stream: true,
  events: [
    [
      name: "myapp.model.loaded",
      event: [:myapp, :model, :loaded],
      measurements: [:weights_loaded]
    ]
  ]
