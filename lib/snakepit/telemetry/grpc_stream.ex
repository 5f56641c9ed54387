defmodule Snakepit.Telemetry.GrpcStream do
  @moduledoc """
  Receives telemetry from Python workers and emits it through `:telemetry`; steers what
  each worker sends.

  Started by the `:snakepit_telemetry` application. It owns the NIF runtime: a tokio runtime
  on its own threads that holds one gRPC stream (`snakepit.bridge.BridgeService/StreamTelemetry`)
  per registered worker, checks every event against the catalog and the worker's settings,
  and sends the events in batches to `Snakepit.Telemetry.Dispatcher`, which runs the
  handlers. Nothing here waits on the network: every call returns once the NIF has the
  request.

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

  ## Telemetry events

  Every worker event of the catalog (see the README's catalog table), for example:

    * `[:snakepit, :python, :tool, :execution, :stop]`
      * Measurements: `:duration` (`:native` time units, measured on the worker's monotonic
        clock), `:count` when sent.
      * Metadata: what the worker sent (catalog keys as atoms, other keys as binaries), then
        `:worker_id`, `:node`, `:timestamp_ns` (the worker's wall clock), `:correlation_id`
        (when set) and the registration metadata (`:pool_name`, `:python_pid`, ...), which
        win over keys of the same name sent by the worker.

  And, for each stream:

    * `[:snakepit, :grpc, :stream, :opened]` when a worker's stream opens.
      * Measurements: `:system_time`.
      * Metadata: `:node`, `:worker_id`, `:stream_id` (the stream's generation),
        `:rpc_method` (`"StreamTelemetry"`).
    * `[:snakepit, :grpc, :stream, :closed]` when it ends, for whatever reason.
      * Measurements: `:message_count` (events delivered on this stream).
      * Metadata: `:node`, `:worker_id`, `:stream_id`, `:reason` (`:unregistered`,
        `:replaced`, `:worker_closed`, `{:stream_error, text}`, `{:connect_failed, text}`,
        `:receiver_gone`, `:panicked` or `:shutdown`).
  """

  use GenServer

  alias Snakepit.Telemetry.{Catalog, Config, Control, Dispatcher, Native}

  @type worker_id :: String.t()
  @type target :: worker_id() | :all
  @type settings :: %{
          enabled: boolean(),
          sampling_rate: float(),
          sampling_patterns: [%{patterns: [Control.pattern()], rate: float()}],
          allow: [Control.pattern()],
          deny: [Control.pattern()]
        }
  @type stream_info :: %{
          worker_id: worker_id(),
          endpoint: String.t(),
          status: :connecting | :connected | {:closed, term()} | :not_streaming,
          connected_since: DateTime.t() | nil,
          received: non_neg_integer(),
          emitted: non_neg_integer(),
          dropped: %{atom() => non_neg_integer()},
          metadata: map(),
          enabled: boolean(),
          sampling_rate: float(),
          sampling_patterns: [%{patterns: [Control.pattern()], rate: float()}],
          allow: [Control.pattern()],
          deny: [Control.pattern()]
        }

  @allowed_metadata MapSet.new(Catalog.metadata_keys())
  # Set by the NIF on every event: not accepted as registration metadata.
  @reserved_metadata [:worker_id, :node, :timestamp_ns, :correlation_id]
  @drop_reasons [
    :unknown_event,
    :invalid_measurement,
    :decode_error,
    :overflow,
    :undeliverable,
    :disabled,
    :filtered_out,
    :sampled_out
  ]

  ## API

  @doc false
  def start_link(%Config{} = config) do
    GenServer.start_link(__MODULE__, config, name: __MODULE__)
  end

  @doc """
  Opens a telemetry stream to the worker `worker_id` serving at `endpoint`.

  `endpoint` is `"host:port"`, `"http://host:port"` or `"unix:/path"`. `opts` are metadata
  added to every event of this worker: `:pool_name`, `:python_pid` or any other metadata key
  of the catalog, each an atom, integer, float or string. Registering an id again replaces
  its stream (and keeps its settings).

  Returns `:ok` at once: connecting happens on the NIF's runtime. The result of connecting
  shows in `list_streams/0`.

      iex> Snakepit.Telemetry.GrpcStream.register_worker("", "127.0.0.1:1")
      {:error, {:invalid_worker_id, ""}}
      iex> Snakepit.Telemetry.GrpcStream.register_worker("w", "127.0.0.1:1", colour: :red)
      {:error, {:invalid_option, :colour}}
  """
  @spec register_worker(worker_id(), String.t(), keyword()) :: :ok | {:error, term()}
  def register_worker(worker_id, endpoint, opts \\ []) do
    with :ok <- check_worker_id(worker_id),
         :ok <- check_endpoint(endpoint),
         {:ok, metadata} <- registration_metadata(opts) do
      GenServer.call(__MODULE__, {:register, worker_id, endpoint, metadata})
    end
  end

  @doc """
  Stops the worker's stream and forgets the worker and its settings.

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

  defp change_settings(:all, change), do: GenServer.call(__MODULE__, {:change, :all, change})

  defp change_settings(worker_id, change) do
    with :ok <- check_worker_id(worker_id) do
      GenServer.call(__MODULE__, {:change, worker_id, change})
    end
  end

  @doc """
  One map per registered worker: its id, endpoint, status, when it connected, its
  registration metadata, its settings (`:enabled`, `:sampling_rate`, `:sampling_patterns`,
  `:allow`, `:deny`) and its counters (`:received` messages, `:emitted` events, and
  `:dropped` events by reason).

  It reads the NIF's counters directly, so it answers even while handlers are busy.

      iex> is_list(Snakepit.Telemetry.GrpcStream.list_streams())
      true
  """
  @spec list_streams() :: [stream_info()]
  def list_streams do
    runtime =
      case :ets.whereis(__MODULE__) do
        :undefined ->
          raise ArgumentError,
                "#{inspect(__MODULE__)} is not running: start the :snakepit_telemetry application"

        table ->
          :ets.lookup_element(table, :runtime, 2)
      end

    counters = Map.new(Native.stream_info(runtime), &{&1.worker_id, &1})

    for {{:worker, id}, worker} <- :ets.tab2list(__MODULE__) do
      info = Map.get(counters, id, %{})

      %{
        worker_id: id,
        endpoint: worker.endpoint,
        status: Map.get(info, :status, :not_streaming),
        connected_since: connected_since(info[:connected_since]),
        received: Map.get(info, :received, 0),
        emitted: Map.get(info, :emitted, 0),
        dropped: Map.get(info, :dropped, Map.new(@drop_reasons, &{&1, 0})),
        metadata: worker.metadata
      }
      |> Map.merge(public_settings(worker.settings))
    end
    |> Enum.sort_by(& &1.worker_id)
  end

  ## Validation (in the caller, so bad input never reaches the server)

  defp check_worker_id(id) when is_binary(id) and byte_size(id) in 1..256 do
    if String.valid?(id), do: :ok, else: {:error, {:invalid_worker_id, id}}
  end

  defp check_worker_id(id), do: {:error, {:invalid_worker_id, id}}

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
              (is_binary(value) and byte_size(value) <= 4096 and String.valid?(value)) ->
            {:cont, {:ok, Map.put(acc, key, value)}}

          true ->
            {:halt, {:error, {:invalid_metadata, key}}}
        end

      other, _ ->
        {:halt, {:error, {:invalid_option, other}}}
    end)
  end

  defp registration_metadata(opts), do: {:error, {:invalid_option, opts}}

  ## Settings

  defp default_settings(%Config{} = config) do
    %{
      enabled: config.enabled,
      sampling_rate: config.sampling_rate,
      rules: [],
      allow: [],
      deny: []
    }
  end

  defp apply_change(settings, {:toggle, enabled}), do: %{settings | enabled: enabled}

  defp apply_change(settings, {:sampling, rate, []}),
    do: %{settings | sampling_rate: rate, rules: []}

  defp apply_change(settings, {:sampling, rate, patterns}) do
    key = patterns |> Enum.uniq() |> Enum.sort()
    rules = Enum.reject(settings.rules, fn {p, _} -> p == key end) ++ [{key, rate}]
    %{settings | rules: rules}
  end

  defp apply_change(settings, {:filter, allow, deny}), do: %{settings | allow: allow, deny: deny}

  # What the NIF gets: the config's excluded events are denied on top of the worker's list.
  defp nif_settings(settings, %Config{} = config) do
    %{settings | deny: Enum.uniq(config.excluded_events ++ settings.deny)}
  end

  defp public_settings(settings) do
    %{
      enabled: settings.enabled,
      sampling_rate: settings.sampling_rate,
      sampling_patterns:
        for({patterns, rate} <- settings.rules, do: %{patterns: patterns, rate: rate}),
      allow: settings.allow,
      deny: settings.deny
    }
  end

  ## Server

  @impl GenServer
  def init(%Config{} = config) do
    case Native.load_error() do
      nil -> start_runtime(config)
      {reason, text} -> {:stop, {:nif_not_loaded, reason, text}}
    end
  end

  defp start_runtime(config) do
    options = %{
      app_events: Enum.map(config.events, &{&1.name, &1.event, &1.measurements}),
      native_time_per_second: System.convert_time_unit(1, :second, :native),
      max_buffer_size: config.max_buffer_size,
      max_batch_size: config.max_batch_size,
      max_in_flight_batches: config.max_in_flight_batches,
      node: node()
    }

    with {:ok, dispatcher} <- Dispatcher.start_link(name: Dispatcher),
         {:ok, runtime} <- Native.start(self(), options) do
      table = :ets.new(__MODULE__, [:named_table, :protected, read_concurrency: true])
      :ets.insert(table, {:runtime, runtime})
      {:ok, %{runtime: runtime, config: config, dispatcher: dispatcher, workers: %{}}}
    else
      {:error, reason} -> {:stop, reason}
    end
  end

  @impl GenServer
  def handle_call({:register, worker_id, endpoint, metadata}, _from, state) do
    settings =
      case state.workers do
        %{^worker_id => previous} -> previous.settings
        _ -> default_settings(state.config)
      end

    case open_stream(state, worker_id, endpoint, metadata, settings) do
      :ok ->
        worker = %{endpoint: endpoint, metadata: metadata, settings: settings}
        {:reply, :ok, put_worker(state, worker_id, worker)}

      {:error, _} = error ->
        {:reply, error, state}
    end
  end

  def handle_call({:unregister, worker_id}, _from, state) do
    with true <- Map.has_key?(state.workers, worker_id),
         :ok <- close_stream(state, worker_id) do
      :ets.delete(__MODULE__, {:worker, worker_id})
      {:reply, :ok, %{state | workers: Map.delete(state.workers, worker_id)}}
    else
      false -> {:reply, {:error, :unknown_worker}, state}
      {:error, _} = error -> {:reply, error, state}
    end
  end

  def handle_call({:change, :all, change}, _from, state) do
    Enum.reduce_while(state.workers, {:reply, :ok, state}, fn {id, _}, {:reply, :ok, acc} ->
      case change_worker(acc, id, change) do
        {:ok, acc} -> {:cont, {:reply, :ok, acc}}
        {:error, _} = error -> {:halt, {:reply, error, acc}}
      end
    end)
  end

  def handle_call({:change, worker_id, change}, _from, state) do
    case change_worker(state, worker_id, change) do
      {:ok, state} -> {:reply, :ok, state}
      {:error, _} = error -> {:reply, error, state}
    end
  end

  defp change_worker(state, worker_id, change) do
    case state.workers do
      %{^worker_id => worker} ->
        settings = apply_change(worker.settings, change)

        with :ok <- push_settings(state, worker_id, settings) do
          {:ok, put_worker(state, worker_id, %{worker | settings: settings})}
        end

      _ ->
        {:error, :unknown_worker}
    end
  end

  defp put_worker(state, worker_id, worker) do
    :ets.insert(__MODULE__, {{:worker, worker_id}, worker})
    put_in(state.workers[worker_id], worker)
  end

  defp open_stream(%{config: %Config{grpc_stream: false}}, _id, _endpoint, _metadata, _settings),
    do: :ok

  defp open_stream(state, worker_id, endpoint, metadata, settings) do
    nif_settings = nif_settings(settings, state.config)
    metadata = Map.to_list(metadata)

    case Native.register_worker(
           state.runtime,
           worker_id,
           endpoint,
           metadata,
           nif_settings,
           state.dispatcher
         ) do
      {:ok, _generation} -> :ok
      {:error, _} = error -> error
    end
  end

  defp close_stream(%{config: %Config{grpc_stream: false}}, _worker_id), do: :ok

  defp close_stream(state, worker_id) do
    case Native.unregister_worker(state.runtime, worker_id) do
      {:ok, _generation} -> :ok
      {:error, :unknown_worker} -> :ok
      {:error, _} = error -> error
    end
  end

  defp push_settings(%{config: %Config{grpc_stream: false}}, _worker_id, _settings), do: :ok

  defp push_settings(state, worker_id, settings) do
    case Native.update_settings(state.runtime, worker_id, nif_settings(settings, state.config)) do
      {:ok, _generation} -> :ok
      {:error, _} = error -> error
    end
  end

  @impl GenServer
  def handle_info({:snakepit_telemetry_stream, worker_id, generation, status, emitted}, state) do
    emit_stream_event(worker_id, generation, status, emitted)
    {:noreply, state}
  end

  def handle_info(_unexpected, state), do: {:noreply, state}

  defp emit_stream_event(worker_id, generation, :connected, _emitted) do
    :telemetry.execute(
      [:snakepit, :grpc, :stream, :opened],
      %{system_time: System.system_time()},
      %{node: node(), worker_id: worker_id, stream_id: generation, rpc_method: "StreamTelemetry"}
    )
  end

  defp emit_stream_event(worker_id, generation, {:closed, reason}, emitted) do
    :telemetry.execute(
      [:snakepit, :grpc, :stream, :closed],
      %{message_count: emitted},
      %{node: node(), worker_id: worker_id, stream_id: generation, reason: reason}
    )
  end

  defp connected_since(nil), do: nil
  defp connected_since(ms), do: DateTime.from_unix!(ms, :millisecond)
end
