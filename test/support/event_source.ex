defmodule Snakepit.Telemetry.Test.EventSource do
  @moduledoc """
  The Rust event source (`native/snakepit_telemetry_core/examples/event_source.rs`): an
  HTTP/2 server that streams pre-encoded `tool.execution.stop` events to every client, with
  no Python in the way. Used by the HTTP/2 tests and `bench/nif_path.exs`. `scripts/test`
  builds it (`cargo build --release --examples -p snakepit_telemetry_core`).
  """

  defstruct [:port, :endpoint]

  @binary Path.expand("../../target/release/examples/event_source", __DIR__)

  @doc """
  Starts a source: `events` per stream, `protocol` `:single` (each event its own message
  and DATA frame; the batched RPC answers UNIMPLEMENTED) or `:batched` (`batch` events per
  message). The events cycle through `variants` (default 1) that differ in timestamp and
  duration; `rate` (default 0: as fast as flow control allows) paces each stream's
  messages at that many per second. It stops when its port closes (the owner exits, or
  `stop/1`).
  """
  def start(opts \\ []) do
    unless File.exists?(@binary) do
      raise "#{@binary} is missing: run `cargo build --release --examples -p snakepit_telemetry_core`"
    end

    args = [
      "--events",
      to_string(Keyword.get(opts, :events, 100_000)),
      "--protocol",
      to_string(Keyword.get(opts, :protocol, :single)),
      "--batch",
      to_string(Keyword.get(opts, :batch, 512)),
      "--variants",
      to_string(Keyword.get(opts, :variants, 1)),
      "--rate",
      to_string(Keyword.get(opts, :rate, 0))
    ]

    port =
      Port.open({:spawn_executable, @binary}, [:binary, :exit_status, {:line, 1024}, args: args])

    receive do
      {^port, {:data, {:eol, "event_source listening=" <> endpoint}}} ->
        %__MODULE__{port: port, endpoint: endpoint}

      {^port, {:exit_status, status}} ->
        raise "event_source exited with status #{status}"
    after
      10_000 -> raise "event_source did not start in 10 s"
    end
  end

  @doc "Stops the source (closing its stdin ends it)."
  def stop(%__MODULE__{port: port}) do
    Port.close(port)
    :ok
  rescue
    ArgumentError -> :ok
  end
end
