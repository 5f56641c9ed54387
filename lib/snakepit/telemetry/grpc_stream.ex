defmodule Snakepit.Telemetry.GrpcStream do
  @moduledoc """
  Receives telemetry from Python workers and emits it through `:telemetry`.

  Started by the `:snakepit_telemetry` application. It owns the NIF runtime: a tokio runtime
  on its own threads that holds one gRPC stream (`snakepit.bridge.BridgeService/StreamTelemetry`)
  per registered worker, checks every event against the catalog, and sends the events here
  in batches. This process calls `:telemetry.execute/3` for each event, then acknowledges
  the batch; at most a few batches per worker are unacknowledged, so its mailbox stays
  bounded however slow the handlers are (the NIF drops and counts what does not fit).

      :ok = Snakepit.Telemetry.GrpcStream.register_worker("worker_1", "127.0.0.1:50051",
              pool_name: :default, python_pid: 4242)

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

  alias Snakepit.Telemetry.{Catalog, Config, Native}

  @type worker_id :: String.t()
  @type stream_info :: %{
          worker_id: worker_id(),
          endpoint: String.t(),
          status: :connecting | :connected | {:closed, term()},
          connected_since: DateTime.t() | nil,
          received: non_neg_integer(),
          emitted: non_neg_integer(),
          dropped: %{atom() => non_neg_integer()},
          metadata: map()
        }

  @allowed_metadata MapSet.new(Catalog.metadata_keys())
  # Set by the NIF on every event: not accepted as registration metadata.
  @reserved_metadata [:worker_id, :node, :timestamp_ns, :correlation_id]

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
  its stream.

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
  Stops the worker's stream and forgets the worker.

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
  One map per registered worker: its id, endpoint, status, when it connected, its
  registration metadata and its counters (`:received` messages, `:emitted` events and
  `:dropped` events by reason).

      iex> is_list(Snakepit.Telemetry.GrpcStream.list_streams())
      true
  """
  @spec list_streams() :: [stream_info()]
  def list_streams do
    # Read from the NIF and the table, not through this process: it may be busy running
    # slow handlers, and counters are most wanted exactly then.
    runtime =
      case :ets.whereis(__MODULE__) do
        :undefined ->
          raise ArgumentError,
                "#{inspect(__MODULE__)} is not running: start the :snakepit_telemetry application"

        table ->
          :ets.lookup_element(table, :runtime, 2)
      end

    for info <- Native.stream_info(runtime) do
      metadata =
        case :ets.lookup(__MODULE__, {:worker, info.worker_id}) do
          [{_, worker}] -> worker.metadata
          [] -> %{}
        end

      info
      |> Map.take([:worker_id, :endpoint, :status, :received, :emitted, :dropped])
      |> Map.put(:connected_since, connected_since(info.connected_since))
      |> Map.put(:metadata, metadata)
    end
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

    case Native.start(self(), options) do
      {:ok, runtime} ->
        table = :ets.new(__MODULE__, [:named_table, :protected, read_concurrency: true])
        :ets.insert(table, {:runtime, runtime})
        {:ok, %{runtime: runtime, config: config, workers: %{}}}

      {:error, reason} ->
        {:stop, reason}
    end
  end

  @impl GenServer
  def handle_call({:register, worker_id, endpoint, metadata}, _from, state) do
    metadata_list = Map.to_list(metadata)

    case Native.register_worker(state.runtime, worker_id, endpoint, metadata_list, self()) do
      {:ok, generation} ->
        worker = %{endpoint: endpoint, metadata: metadata, generation: generation}
        :ets.insert(__MODULE__, {{:worker, worker_id}, worker})
        {:reply, :ok, put_in(state.workers[worker_id], worker)}

      {:error, _} = error ->
        {:reply, error, state}
    end
  end

  def handle_call({:unregister, worker_id}, _from, state) do
    with true <- Map.has_key?(state.workers, worker_id),
         {:ok, _generation} <- Native.unregister_worker(state.runtime, worker_id) do
      :ets.delete(__MODULE__, {:worker, worker_id})
      {:reply, :ok, %{state | workers: Map.delete(state.workers, worker_id)}}
    else
      false -> {:reply, {:error, :unknown_worker}, state}
      {:error, _} = error -> {:reply, error, state}
    end
  end

  @impl GenServer
  def handle_info({:snakepit_telemetry_batch, credit, _worker_id, _generation, events}, state) do
    try do
      Enum.each(events, fn {event, measurements, metadata} ->
        :telemetry.execute(event, measurements, metadata)
      end)
    after
      Native.ack(credit)
    end

    {:noreply, state}
  end

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
