import Config

# The :snakepit_telemetry keys are documented in Snakepit.Telemetry.Config.
# This file only configures this repository's own builds and tests; an
# application depending on snakepit_telemetry sets them in its own config.

env_config = Path.join(__DIR__, "#{config_env()}.exs")

if File.exists?(env_config) do
  import_config "#{config_env()}.exs"
end
