defmodule Snakepit.Telemetry.BackendTest do
  use ExUnit.Case, async: true

  doctest Snakepit.Telemetry.Backend

  test "telemetry_impl/0 reports the :telemetry module in use" do
    impl = Snakepit.Telemetry.Backend.telemetry_impl()
    assert impl in [:real, :standin]

    standin? = Keyword.has_key?(:telemetry.module_info(:attributes), :snakepit_telemetry_standin)
    assert impl == if(standin?, do: :standin, else: :real)
  end
end
