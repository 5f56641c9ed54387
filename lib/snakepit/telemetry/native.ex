defmodule Snakepit.Telemetry.Native do
  @moduledoc """
  The NIF boundary: stubs of the functions in the Rust crate `native/snakepit_telemetry_nif`.

  Nothing here is public API; `Snakepit.Telemetry.GrpcStream` is. Every function returns
  in microseconds: the NIF does no I/O and never waits on its runtime (a tokio runtime on
  its own threads, one per `start/2`).

  Messages the runtime sends to its receiver (`Snakepit.Telemetry.Dispatcher`, set by
  `start/2` and `set_receiver/3`, one per partition; a worker's partition is given at
  `register_worker/7`):

    * `{:snakepit_telemetry_batch, batch, worker_id, generation, node}`; the receiver calls
      `take_events(batch)` for the events, as terms made on its own heap: `{:more, events}`
      (call again: one call makes terms for at most about 200 µs) or `{:done, events}`, each
      event `{event, measurements, metadata}`. Then it calls `ack(batch)` once it has run
      the handlers. A batch dropped unacknowledged counts as emitted the events of the
      chunks taken before the last call (asking for more says their handlers ran) and the
      rest as `:undeliverable`.
      `measurements` and `metadata` are maps.
    * `{:snakepit_telemetry_stream, worker_id, generation, status, sent, ticket}` with `status`
      `{:opened, :established | {:reconnected, downtime_ms, attempts}}`,
      `{:lost, reason, uptime_ms}` (a retry follows), and last `{:closed, reason}` (a stream
      was open) or `{:ended, reason}` (none was); `sent` is the number of events handed
      over on the stream that ended (0 otherwise). A status message the receiver is not
      there to take (its Dispatcher is restarting) waits in the NIF, ahead of the stream's
      batches, until `set_receiver/3` names the next one (an ended registration waits up to
      5 s for it). The receiver calls `ack_status(ticket)` once it has emitted the message's
      events; a ticket dropped unacknowledged (the receiver was killed with the message in
      its mailbox, or while it ran its handlers: then they see it twice) has the message
      sent again, in its place among the others, up to 3 times.

  If the library cannot be loaded, `load_error/0` says why, and `Snakepit.Telemetry.GrpcStream`
  refuses to start with that reason rather than failing later with `:nif_not_loaded`.
  """

  @on_load :load_nif

  @doc false
  def load_nif do
    path =
      :filename.join(:code.priv_dir(:snakepit_telemetry), ~c"native/libsnakepit_telemetry_nif")

    case :erlang.load_nif(path, 0) do
      :ok ->
        :persistent_term.erase({__MODULE__, :load_error})
        :ok

      {:error, {reason, text}} ->
        # Returning :ok keeps the module (and its clear error) available instead of
        # leaving callers with an undefined module.
        :persistent_term.put({__MODULE__, :load_error}, {reason, List.to_string(text)})
        :ok
    end
  end

  @doc "Why the NIF library did not load, or `nil` when it did."
  @spec load_error() :: nil | {atom(), String.t()}
  def load_error, do: :persistent_term.get({__MODULE__, :load_error}, nil)

  @doc false
  def start(_receivers, _options), do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def stop(_runtime), do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def set_receiver(_runtime, _partition, _pid), do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def set_node(_runtime, _node), do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def register_worker(_runtime, _worker_id, _endpoint, _metadata, _settings, _token, _partition),
    do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def unregister_worker(_runtime, _worker_id), do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def stderr_line(_runtime, _worker_id, _line, _complete), do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def execute_tool(
        _runtime,
        _worker_id,
        _tool,
        _params,
        _session_id,
        _metadata,
        _correlation_id,
        _timeout_ms,
        _caller
      ),
      do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def json_encode_params(_params), do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def json_decode(_json), do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def worker_settings(_runtime, _worker_id), do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def update_settings(_runtime, _changes), do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def update_settings_dirty(_runtime, _changes), do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def take_events(_batch), do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def ack(_batch), do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def ack_status(_ticket), do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def stream_info(_runtime), do: :erlang.nif_error(:nif_not_loaded)
end
