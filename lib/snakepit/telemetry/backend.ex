defmodule Snakepit.Telemetry.Backend do
  @moduledoc """
  Tells which implementation of `:telemetry` this build uses.

  `mix.exs` decides at compile time, in this order:

    1. the real `telemetry` application already on the code path (e.g. through
       `ERL_LIBS`) is used as it is;
    2. otherwise, when Hex is available (or `deps/telemetry` exists) and
       `SNAKEPIT_TELEMETRY_STANDIN` is not `"1"`, `{:telemetry, "~> 1.0"}` is
       declared as a normal dependency (what every user with Hex gets);
    3. otherwise (offline) the stand-in in `standin/telemetry/` is compiled
       into this application. It is not part of the Hex package.

  `telemetry_impl/0` reports which `:telemetry` module is actually loaded,
  so tests and demos can print it.
  """

  @doc """
  Returns `:real` for the telemetry package, `:standin` for the offline
  stand-in, or `:unavailable` when no `:telemetry` module can be loaded.

      iex> Snakepit.Telemetry.Backend.telemetry_impl() in [:real, :standin]
      true
  """
  @spec telemetry_impl() :: :real | :standin | :unavailable
  def telemetry_impl do
    # `apply/3` keeps the compiler from resolving :telemetry here: which module
    # that is depends on the build, and this check runs against the loaded one.
    if Code.ensure_loaded?(:telemetry) do
      attributes = apply(:telemetry, :module_info, [:attributes])
      if Keyword.has_key?(attributes, :snakepit_telemetry_standin), do: :standin, else: :real
    else
      :unavailable
    end
  end
end
