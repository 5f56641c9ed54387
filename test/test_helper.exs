# Tests tagged :telemetry_standin exercise the offline stand-in of :telemetry;
# they are skipped when the real telemetry package is in use.
exclude =
  if Snakepit.Telemetry.Backend.telemetry_impl() == :standin, do: [], else: [:telemetry_standin]

ExUnit.start(exclude: exclude)
