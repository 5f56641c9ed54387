defmodule Snakepit.Telemetry.GrpcStream do
  @moduledoc """
  Receives telemetry from Python workers and emits it through `:telemetry`; steers what
  each worker sends.

  Started by the `:snakepit_telemetry` application. It starts the NIF runtime: a tokio
  runtime on its own threads that holds one gRPC stream
  (`snakepit.bridge.BridgeService/StreamTelemetry`) per registered worker, checks every event
  against the catalog and the worker's settings, and sends the events in batches to
  `Snakepit.Telemetry.Dispatcher`, which runs the handlers. Nothing here waits on the
  network: every call returns once the NIF has the request, and no handler ever runs in
  this process.

  Registrations, settings and counters live in the NIF runtime, which the application
  keeps for as long as it runs: if this process (or the Dispatcher) crashes, it is
  restarted and finds every worker where it was, streams still open.

  ## Limits

  Every argument is bounded, and checked before anything reaches a worker: a worker id is
  1 to 256 bytes of UTF-8; an endpoint at most 1024 bytes; registration metadata uses
  catalog metadata keys only, with atom, number or string values (strings at most 4096
  bytes); a pattern at most 256 bytes (see `Snakepit.Telemetry.Control`); and a worker's
  settings hold at most the config's `max_patterns` patterns in all.

      :ok = Snakepit.Telemetry.GrpcStream.register_worker("worker_1", "127.0.0.1:50051",
              pool_name: :default, python_pid: 4242)
      :ok = Snakepit.Telemetry.GrpcStream.update_sampling("worker_1", 0.1)
      :ok = Snakepit.Telemetry.GrpcStream.update_filter(:all, deny: ["python.gc.*"])
      :ok = Snakepit.Telemetry.GrpcStream.toggle("worker_1", false)

  ## Settings

  Each worker has settings: `enabled`, a sampling rate with optional pattern-scoped rates,
  and allow/deny filters (patterns as in `Snakepit.Telemetry.Control`: globs over the dotted
  name the worker sends, such as `"python.call.*"`). They are the worker's desired state:
  set before the stream connects, they are in force from its first event; they are sent
  again whenever its stream opens anew; they survive registering the same id again (a
  restarted worker) and are forgotten by `unregister_worker/1`. New workers start from the
  config (`Snakepit.Telemetry.Config`: `enabled`, `sampling_rate`, `excluded_events`).

  The worker applies them at the source (a removed event is never built), and the NIF
  applies them again to what arrives, so a worker that ignores control messages is still
  filtered. What they remove is counted as `:disabled`, `:filtered_out` or `:sampled_out`.
  `Snakepit.Telemetry.Settings` describes the value.

  ## Telemetry events

  Every worker event of the catalog (see the README's catalog table), for example:

    * `[:snakepit, :python, :tool, :execution, :stop]`
      * Measurements: `:duration` (`:native` time units, measured on the worker's monotonic
        clock), `:count` when sent.
      * Metadata: what the worker sent (catalog keys as atoms, other keys as binaries), then
        `:worker_id`, `:node` (the node's name when the event is delivered),
        `:timestamp_ns` (the worker's wall clock), `:correlation_id` (`nil` when the
        worker sent none) and the registration metadata (`:pool_name`, `:python_pid`,
        ...), which win over keys of the same name sent by the worker.

  And, for each stream (emitted by `Snakepit.Telemetry.Dispatcher`, so a handler may call
  any function of this module):

    * `[:snakepit, :grpc, :stream, :opened]` each time a worker's stream opens (the first
      time and after every reconnection).
      * Measurements: `:system_time`.
      * Metadata: `:node`, `:worker_id`, `:stream_id` (the registration's generation),
        `:rpc_method` (`"StreamTelemetry"`).
    * `[:snakepit, :grpc, :stream, :closed]` each time an open stream ends, for whatever
      reason.
      * Measurements: `:message_count` (events handed to the Dispatcher on this stream).
      * Metadata: `:node`, `:worker_id`, `:stream_id`, `:reason`: `:unregistered`,
        `:replaced` or `:shutdown` (the registration ended), or `:worker_closed`,
        `{:stream_error, text}` or `:panicked` (a reconnection follows).
    * `[:snakepit, :grpc, :connection, :established]` when a registration's first stream
      opens.
      * Measurements: `:system_time`.
      * Metadata: `:node`, `:worker_id`, `:stream_id`.
    * `[:snakepit, :grpc, :connection, :lost]` when an open stream ends for any reason but
      the registration ending; the stream is opened again with backoff (see `:reconnect`
      in `Snakepit.Telemetry.Config`) until it is unregistered.
      * Measurements: `:uptime` (ms the stream was open).
      * Metadata: `:node`, `:worker_id`, `:stream_id`, `:reason` (as for `:closed`).
    * `[:snakepit, :grpc, :connection, :reconnected]` when a stream opens again after a loss.
      * Measurements: `:downtime` (ms since the loss), `:retry_count` (attempts it took,
        at least 1).
      * Metadata: `:node`, `:worker_id`, `:stream_id`.

  Settings made while a stream is down are sent to the worker on the new stream and apply
  to the first event after it (the NIF also applies them to what arrives).
  """

  use GenServer

  alias Snakepit.Telemetry.{Catalog, Config, Control, Dispatcher, Native, Settings}

  @type worker_id :: String.t()
  @type target :: worker_id() | :all
  @typedoc "Why a stream ended or an attempt to open one failed."
  @type close_reason ::
          :unregistered
          | :replaced
          | :shutdown
          | :worker_closed
          | :panicked
          | {:stream_error, String.t()}
          | {:connect_failed, String.t()}
  @type stream_info :: %{
          worker_id: worker_id(),
          endpoint: String.t() | :none,
          status: :connecting | :connected | :reconnecting | :not_streaming,
          protocol: :batched | :single | nil,
          connected_since: DateTime.t() | nil,
          attempt: non_neg_integer(),
          last_error: close_reason() | nil,
          received: non_neg_integer(),
          emitted: non_neg_integer(),
          dropped: %{atom() => non_neg_integer()},
          source_dropped: %{String.t() => non_neg_integer()},
          metadata: map(),
          pool_name: term(),
          task_alive: boolean(),
          enabled: boolean(),
          sampling_rate: float(),
          sampling_rules: [Settings.rule()],
          allow: [Control.pattern()],
          deny: [Control.pattern()]
        }

  @runtime_key {__MODULE__, :runtime}
  # What the NIF takes for `:none` (no stream: stderr telemetry lines only).
  @no_endpoint "none"
  @allowed_metadata MapSet.new(Catalog.metadata_keys())
  # Set by the NIF on every event: not accepted as registration metadata.
  @reserved_metadata [:worker_id, :node, :timestamp_ns, :correlation_id]
  @max_metadata_string_bytes 4096

  ## API

  @doc false
  def start_link(%Config{} = config) do
    GenServer.start_link(__MODULE__, config, name: __MODULE__)
  end

  @doc """
  Opens a telemetry stream to the worker `worker_id` serving at `endpoint`.

  `endpoint` is `"host:port"`, `"http://host:port"` or `"unix:/path"`, or `:none` for a
  worker with no gRPC stream whose events arrive only as `TELEMETRY:` lines on its output
  (see `Snakepit.Telemetry.Worker`); its status is `:not_streaming`. `opts` are metadata
  added to every event of this worker: `:pool_name`, `:python_pid` or any other metadata key
  of the catalog, each an atom, integer, float or string. Registering an id again replaces
  its stream and keeps its settings and counters; if the old stream had been lost and not
  reopened, the new stream's first open is reported as `[:snakepit, :grpc, :connection,
  :reconnected]` (this is how a restarted `Snakepit.Telemetry.Worker` comes back).

  `token: token` (a string of visible ASCII, at most 4096 bytes) is sent as
  `authorization: Bearer <token>` on every call to a worker started with
  `SNAKEPIT_WORKER_TOKEN` (see `Snakepit.Telemetry.Worker`, which does this for you); a
  worker that refuses it shows `{:connect_failed, "Unauthenticated: ..."}` as `:last_error`
  in `list_streams/0` and is retried like any failed attempt. The token is never shown in
  `list_streams/0`, errors or logs.

  Returns `:ok` at once: connecting happens on the NIF's runtime. The result of connecting
  shows in `list_streams/0`. Registration never fails because of other calls made at the
  same time: calls queue in this process, which hands each to the NIF in microseconds.

      iex> Snakepit.Telemetry.GrpcStream.register_worker("", "127.0.0.1:1")
      {:error, {:invalid_worker_id, ""}}
      iex> Snakepit.Telemetry.GrpcStream.register_worker("w", "127.0.0.1:1", colour: :red)
      {:error, {:invalid_option, :colour}}
      iex> Snakepit.Telemetry.GrpcStream.register_worker("w", "127.0.0.1:1", token: "with space")
      {:error, {:invalid_option, :token}}
  """
  @spec register_worker(worker_id(), String.t() | :none, keyword()) :: :ok | {:error, term()}
  def register_worker(worker_id, endpoint, opts \\ []) do
    with :ok <- check_worker_id(worker_id),
         :ok <- check_endpoint(endpoint),
         {:ok, token, opts} <- take_token(opts),
         {:ok, metadata} <- registration_metadata(opts) do
      endpoint = if endpoint == :none, do: @no_endpoint, else: endpoint
      GenServer.call(__MODULE__, {:register, worker_id, endpoint, metadata, token})
    end
  end

  @doc """
  Stops the worker's stream and forgets the worker and its settings.

  Events the NIF has already checked and buffered for the worker (for example those waiting
  for `:min_batch_interval_us`) are still handed to its Dispatcher, as far as
  `:max_in_flight_batches` allows, and reach the handlers after this returns; the rest are
  counted as `:undeliverable`.

      iex> Snakepit.Telemetry.GrpcStream.unregister_worker("never-registered")
      {:error, :unknown_worker}
  """
  @spec unregister_worker(worker_id()) :: :ok | {:error, term()}
  def unregister_worker(worker_id) do
    with :ok <- check_worker_id(worker_id) do
      GenServer.call(__MODULE__, {:unregister, worker_id})
    end
  end

  @doc """
  Sets the sampling rate (`0.0..1.0`) of one worker or of `:all`: the fraction of events
  kept. Without patterns the rate applies to every event and replaces earlier pattern-scoped
  rates; with patterns it applies to matching events only, and other events keep theirs
  (the latest matching pattern set wins).

      iex> Snakepit.Telemetry.GrpcStream.update_sampling(:all, 1.5)
      {:error, {:invalid_rate, 1.5}}
      iex> Snakepit.Telemetry.GrpcStream.update_sampling("nobody", 0.5, ["python.call.*"])
      {:error, :unknown_worker}
  """
  @spec update_sampling(target(), number(), [Control.pattern()]) :: :ok | {:error, term()}
  def update_sampling(target, rate, patterns \\ []) do
    with {:ok, change} <- Control.sampling(rate, patterns), do: change_settings(target, change)
  end

  @doc """
  Turns telemetry on or off for one worker or `:all`.

  Turning off: from `:ok` on, the NIF drops what it holds or receives from the worker as
  `:disabled` (counted, see `list_streams/0`), and the worker stops at the source once the
  control message reaches it. Batches already handed to a `Snakepit.Telemetry.Dispatcher`
  (at most `:max_in_flight_batches` per worker) are still delivered, so a handler may see
  events from that worker for a moment after `:ok` (`bench/toggle_latency.exs`, a worker
  sending 20,000 events/s: in 0 to 3 of 300 trials, at most 0.4 ms after; once 3 of 100,
  at most 1.4 ms after).

      iex> Snakepit.Telemetry.GrpcStream.toggle(:all, :maybe)
      {:error, {:invalid_option, :maybe}}
  """
  @spec toggle(target(), boolean()) :: :ok | {:error, term()}
  def toggle(target, enabled) do
    with {:ok, change} <- Control.toggle(enabled), do: change_settings(target, change)
  end

  @doc """
  Sets the allow and deny lists of one worker or `:all` (both replaced; each defaults to
  `[]`). Deny wins over allow; an empty allow list allows everything. The config's
  `excluded_events` stay denied whatever the filter.

      iex> Snakepit.Telemetry.GrpcStream.update_filter(:all, allow: ["python call"])
      {:error, {:invalid_pattern, "python call"}}
      iex> Snakepit.Telemetry.GrpcStream.update_filter(:all, block: ["tool.*"])
      {:error, {:invalid_option, :block}}
  """
  @spec update_filter(target(), keyword()) :: :ok | {:error, term()}
  def update_filter(target, opts) do
    with {:ok, change} <- Control.filter(opts), do: change_settings(target, change)
  end

  # `:all` is validated for every worker first and applied to all of them or to none.
  defp change_settings(:all, change), do: GenServer.call(__MODULE__, {:change, :all, change})

  defp change_settings(worker_id, change) do
    with :ok <- check_worker_id(worker_id) do
      GenServer.call(__MODULE__, {:change, worker_id, change})
    end
  end

  @doc """
  One map per registered worker: its id, endpoint, status, when it connected, its
  reconnection state, its registration metadata, its settings (`:enabled`, `:sampling_rate`, `:sampling_rules`,
  `:allow`, `:deny`; see `Snakepit.Telemetry.Settings`) and its counters (`:received`
  messages, `:emitted` events, and `:dropped` events by reason), and `:source_dropped`:
  what the worker reported it dropped itself before sending, by reason (string keys, as
  the worker sends them: `"overflow"`, `"sampled_out"`, ...), from its
  `[:snakepit, :python, :telemetry, :dropped]` events (which also reach handlers, and
  which no setting or bound removes).

  `:protocol` is `:batched` when the worker streams many events per message
  (`StreamTelemetryBatched`, this project's workers), `:single` for one per message
  (`StreamTelemetry`, Snakepit's protocol, used when the worker does not serve the batched
  one), `nil` before any stream opened. `:status` is `:connecting` until the first stream opens, `:connected` while one is open,
  `:reconnecting` after it was lost (never a stream silently dead while registered), or
  `:not_streaming` (config `grpc_stream: false`). While not connected, `:attempt` counts
  the failed attempts since the last stream opened and `:last_error` says why the last
  attempt failed or the stream ended (both `0` and `nil` while connected).

  Snakepit's keys are there too: `:pool_name` (the registration's, `nil` when none was
  given) and `:task_alive` (true while the NIF keeps a stream open or is opening one:
  `:connecting`, `:connected` or `:reconnecting`).

  It reads the NIF directly, so it answers even while handlers are busy or this process
  is restarting.

      iex> is_list(Snakepit.Telemetry.GrpcStream.list_streams())
      true
  """
  @spec list_streams() :: [stream_info()]
  def list_streams do
    runtime =
      runtime() ||
        raise ArgumentError,
              "#{inspect(__MODULE__)} is not running: start the :snakepit_telemetry application"

    for info <- Native.stream_info(runtime) do
      settings = info.settings |> Settings.from_native() |> Settings.to_map()

      info
      |> Map.take([
        :worker_id,
        :endpoint,
        :status,
        :protocol,
        :attempt,
        :last_error,
        :received,
        :emitted
      ])
      |> Map.merge(Map.take(info, [:dropped, :metadata]))
      |> Map.put(:source_dropped, Map.new(info.source_dropped))
      |> Map.put(:connected_since, connected_since(info.connected_since))
      |> Map.put(:pool_name, Map.get(info.metadata, :pool_name))
      |> Map.put(:task_alive, info.status in [:connecting, :connected, :reconnecting])
      |> Map.update!(:endpoint, &if(&1 == @no_endpoint, do: :none, else: &1))
      |> Map.merge(settings)
    end
  end

  @doc false
  # The NIF runtime, kept for the application's lifetime (nil before it starts).
  @spec runtime() :: reference() | nil
  def runtime do
    case :persistent_term.get(@runtime_key, nil) do
      {runtime, _options} -> runtime
      nil -> nil
    end
  end

  @doc false
  # Called when the application stops: ends every stream and forgets the runtime.
  @spec stop_runtime() :: :ok
  def stop_runtime do
    case :persistent_term.get(@runtime_key, nil) do
      {runtime, _options} ->
        Native.stop(runtime)
        :persistent_term.erase(@runtime_key)
        :ok

      nil ->
        :ok
    end
  end

  ## Validation (in the caller, so bad input never reaches the server)

  defp check_worker_id(id) when is_binary(id) and byte_size(id) in 1..256 do
    if String.valid?(id), do: :ok, else: {:error, {:invalid_worker_id, id}}
  end

  defp check_worker_id(id), do: {:error, {:invalid_worker_id, id}}

  defp check_endpoint(:none), do: :ok

  defp check_endpoint("none"), do: {:error, {:invalid_endpoint, "none"}}

  defp check_endpoint(endpoint) when is_binary(endpoint) and byte_size(endpoint) in 1..1024 do
    if String.valid?(endpoint), do: :ok, else: {:error, {:invalid_endpoint, endpoint}}
  end

  defp check_endpoint(endpoint), do: {:error, {:invalid_endpoint, endpoint}}

  defp registration_metadata(opts) when is_list(opts) do
    Enum.reduce_while(opts, {:ok, %{}}, fn
      {key, value}, {:ok, acc} when is_atom(key) ->
        cond do
          key in @reserved_metadata or not MapSet.member?(@allowed_metadata, key) ->
            {:halt, {:error, {:invalid_option, key}}}

          is_atom(value) or is_integer(value) or is_float(value) or
              (is_binary(value) and byte_size(value) <= @max_metadata_string_bytes and
                 String.valid?(value)) ->
            {:cont, {:ok, Map.put(acc, key, value)}}

          true ->
            {:halt, {:error, {:invalid_metadata, key}}}
        end

      other, _ ->
        {:halt, {:error, {:invalid_option, other}}}
    end)
  end

  defp registration_metadata(opts), do: {:error, {:invalid_option, opts}}

  # The worker's bearer token; what a header value can carry. Never echoed in errors.
  defp take_token(opts) when is_list(opts) do
    {tokens, opts} = Enum.split_with(opts, &match?({:token, _}, &1))

    case {Enum.map(tokens, &elem(&1, 1)), opts} do
      {[], opts} ->
        {:ok, nil, opts}

      {[token], opts} when is_binary(token) and byte_size(token) in 1..4096 ->
        if token =~ ~r/^[\x21-\x7e]+$/,
          do: {:ok, token, opts},
          else: {:error, {:invalid_option, :token}}

      {_, _} ->
        {:error, {:invalid_option, :token}}
    end
  end

  defp take_token(opts), do: {:error, {:invalid_option, opts}}

  ## Server

  @impl GenServer
  def init(%Config{} = config) do
    dispatchers = Dispatcher.pids()

    with nil <- Native.load_error(),
         true <- Enum.all?(dispatchers, &is_pid/1) || nil,
         {:ok, runtime} <- ensure_runtime(config, dispatchers) do
      dispatchers
      |> Enum.with_index()
      |> Enum.each(fn {pid, partition} -> Native.set_receiver(runtime, partition, pid) end)

      Native.set_node(runtime, node())
      {:ok, %{runtime: runtime, config: config}}
    else
      {reason, text} when is_binary(text) -> {:stop, {:nif_not_loaded, reason, text}}
      nil -> {:stop, {:not_running, Dispatcher}}
      {:error, reason} -> {:stop, reason}
    end
  end

  # The runtime of an earlier incarnation of this process is adopted as it is (its streams
  # never stopped), unless the config changed meanwhile.
  defp ensure_runtime(config, dispatchers) do
    options = runtime_options(config)

    case :persistent_term.get(@runtime_key, nil) do
      {runtime, ^options} ->
        {:ok, runtime}

      _ ->
        stop_runtime()

        with {:ok, runtime} <- Native.start(dispatchers, Map.put(options, :node, node())) do
          :persistent_term.put(@runtime_key, {runtime, options})
          {:ok, runtime}
        end
    end
  end

  # The options of `Native.start/2` for `config` (public for the tests that start a runtime
  # of their own).
  @doc false
  def runtime_options(%Config{} = config) do
    %{
      catalog: Catalog.native_spec(config.events),
      partitions: Dispatcher.partition_count(),
      native_time_per_second: System.convert_time_unit(1, :second, :native),
      max_buffer_size: config.max_buffer_size,
      max_buffer_bytes: config.max_buffer_bytes,
      max_batch_size: config.max_batch_size,
      max_batch_bytes: config.max_batch_bytes,
      max_event_bytes: config.max_event_bytes,
      max_metadata_keys: config.max_metadata_keys,
      max_in_flight_batches: config.max_in_flight_batches,
      min_batch_interval_us: config.min_batch_interval_us,
      runtime_threads: config.runtime_threads,
      connect_timeout_ms: config.connect_timeout,
      reconnect_initial_ms: config.reconnect[:initial_ms],
      reconnect_max_ms: config.reconnect[:max_ms],
      grpc_stream: config.grpc_stream,
      excluded_events: config.excluded_events
    }
  end

  # A worker token in the message being handled never reaches a crash report or
  # :sys.get_status/1 (OTP 25's format_status/1).
  @doc false
  def format_status(status) do
    Map.update(status, :message, nil, fn
      {:"$gen_call", from, {:register, id, endpoint, metadata, token}} when token != nil ->
        {:"$gen_call", from, {:register, id, endpoint, metadata, :redacted}}

      other ->
        other
    end)
  end

  @impl GenServer
  def handle_call({:register, worker_id, endpoint, metadata, token}, _from, state) do
    settings =
      case Native.worker_settings(state.runtime, worker_id) do
        {:ok, native} -> native
        {:error, :unknown_worker} -> Settings.to_native(Settings.new(state.config))
      end

    reply =
      case Native.register_worker(
             state.runtime,
             worker_id,
             endpoint,
             Map.to_list(metadata),
             settings,
             token,
             Dispatcher.partition(worker_id)
           ) do
        {:ok, _generation} -> :ok
        {:error, _} = error -> error
      end

    {:reply, reply, state}
  end

  def handle_call({:unregister, worker_id}, _from, state) do
    reply =
      case Native.unregister_worker(state.runtime, worker_id) do
        {:ok, _generation} -> :ok
        {:error, _} = error -> error
      end

    {:reply, reply, state}
  end

  def handle_call({:change, target, change}, _from, state) do
    {:reply, change_workers(state, target, change), state}
  end

  defp change_workers(state, target, change) do
    with {:ok, current} <- current_settings(state.runtime, target),
         {:ok, changed} <- change_each(current, change, state.config.max_patterns) do
      case update_settings(state.runtime, changed) do
        {:ok, _count} -> :ok
        {:error, _} = error -> error
      end
    end
  end

  # Up to @max_inline_changes changes are applied on this process's own scheduler, in
  # chunks (about 25 µs each), each call charged to the process's time slice; more in one
  # call on a dirty scheduler (milliseconds at thousands of workers). A dirty scheduler is
  # not woken for a few: on a loaded machine, that wake-up took 20-90 ms, ten times the rest
  # of a toggle (`bench/RESULTS.md`). The chunks are all or none together, as one call is:
  # every change was validated by `change_each/3`, and the workers cannot change meanwhile,
  # since only this process registers and unregisters them. Only a kill of this process
  # between two chunks leaves the earlier ones applied; its caller then gets an exit, not
  # `:ok` (10 such kills during `toggle(:all, _)` at 200 workers: every registration kept,
  # and the next toggle applied to all).
  @max_inline_changes 256
  @settings_chunk 32

  defp update_settings(runtime, changed) when length(changed) > @max_inline_changes,
    do: Native.update_settings_dirty(runtime, changed)

  defp update_settings(runtime, changed) do
    changed
    |> Enum.chunk_every(@settings_chunk)
    |> Enum.reduce_while({:ok, 0}, fn chunk, {:ok, count} ->
      case Native.update_settings(runtime, chunk) do
        {:ok, applied} -> {:cont, {:ok, count + applied}}
        {:error, _} = error -> {:halt, error}
      end
    end)
  end

  defp current_settings(runtime, :all) do
    {:ok, for(info <- Native.stream_info(runtime), do: {info.worker_id, info.settings})}
  end

  defp current_settings(runtime, worker_id) do
    with {:ok, native} <- Native.worker_settings(runtime, worker_id) do
      {:ok, [{worker_id, native}]}
    end
  end

  defp change_each(current, change, max_patterns) do
    Enum.reduce_while(current, {:ok, []}, fn {worker_id, native}, {:ok, acc} ->
      case Settings.change(Settings.from_native(native), change, max_patterns) do
        {:ok, settings} -> {:cont, {:ok, [{worker_id, Settings.to_native(settings)} | acc]}}
        {:error, _} = error -> {:halt, error}
      end
    end)
  end

  @impl GenServer
  def handle_info(_unexpected, state), do: {:noreply, state}

  defp connected_since(nil), do: nil
  defp connected_since(ms), do: DateTime.from_unix!(ms, :millisecond)
end
