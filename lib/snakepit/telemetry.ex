defmodule Snakepit.Telemetry do
  @moduledoc """
  Snakepit v0.13's list of telemetry event names, for code written against
  Snakepit's `Snakepit.Telemetry`: `events/0` and the per-family lists it joins,
  with the same names and order, and the `attach_*` logging handlers.

  The list is Snakepit's, not this library's: it names events that Snakepit itself
  emits (session store, heartbeat, zero-copy, script shutdown...) and that nothing
  here emits. The events this library emits or delivers are the catalog's
  (`Snakepit.Telemetry.Catalog.events/0`); every one of them is in `events/0` except
  `[:snakepit, :python, :telemetry, :dropped]`, which Snakepit does not have.

  Unlike Snakepit's, this module is not deprecated: it emits no
  `[:snakepit, :deprecated, :module_used]` event when used.

      iex> [:snakepit, :pool, :worker_ready] in Snakepit.Telemetry.events()
      true
  """

  require Logger

  @type event_name :: [atom(), ...]

  @session_events [
    [:snakepit, :session_store, :session, :created],
    [:snakepit, :session_store, :session, :accessed],
    [:snakepit, :session_store, :session, :deleted],
    [:snakepit, :session_store, :session, :expired]
  ]

  @program_events [
    [:snakepit, :session_store, :program, :stored],
    [:snakepit, :session_store, :program, :retrieved],
    [:snakepit, :session_store, :program, :deleted]
  ]

  @heartbeat_events [
    [:snakepit, :heartbeat, :monitor_started],
    [:snakepit, :heartbeat, :monitor_stopped],
    [:snakepit, :heartbeat, :monitor_failure],
    [:snakepit, :heartbeat, :ping_sent],
    [:snakepit, :heartbeat, :pong_received],
    [:snakepit, :heartbeat, :heartbeat_timeout]
  ]

  @pool_events [
    [:snakepit, :pool, :initialized],
    [:snakepit, :pool, :init_started],
    [:snakepit, :pool, :init_complete],
    [:snakepit, :pool, :status],
    [:snakepit, :pool, :queue, :enqueued],
    [:snakepit, :pool, :queue, :dequeued],
    [:snakepit, :pool, :queue, :timeout],
    [:snakepit, :pool, :worker, :spawn_started],
    [:snakepit, :pool, :worker, :spawned],
    [:snakepit, :pool, :worker_ready],
    [:snakepit, :pool, :worker, :spawn_failed],
    [:snakepit, :pool, :worker, :terminated],
    [:snakepit, :pool, :worker, :restarted],
    [:snakepit, :worker, :recycled],
    [:snakepit, :session, :created],
    [:snakepit, :session, :destroyed],
    [:snakepit, :session, :affinity, :assigned],
    [:snakepit, :session, :affinity, :broken]
  ]

  @python_events [
    [:snakepit, :python, :call, :start],
    [:snakepit, :python, :call, :stop],
    [:snakepit, :python, :call, :exception],
    [:snakepit, :python, :memory, :sampled],
    [:snakepit, :python, :cpu, :sampled],
    [:snakepit, :python, :gc, :completed],
    [:snakepit, :python, :error, :occurred],
    [:snakepit, :python, :tool, :execution, :start],
    [:snakepit, :python, :tool, :execution, :stop],
    [:snakepit, :python, :tool, :execution, :exception],
    [:snakepit, :python, :tool, :result_size]
  ]

  @grpc_events [
    [:snakepit, :grpc, :call, :start],
    [:snakepit, :grpc, :call, :stop],
    [:snakepit, :grpc, :call, :exception],
    [:snakepit, :grpc, :stream, :opened],
    [:snakepit, :grpc, :stream, :message],
    [:snakepit, :grpc, :stream, :closed],
    [:snakepit, :grpc, :connection, :established],
    [:snakepit, :grpc, :connection, :lost],
    [:snakepit, :grpc, :connection, :reconnected]
  ]

  @script_events [
    [:snakepit, :script, :shutdown, :start],
    [:snakepit, :script, :shutdown, :stop],
    [:snakepit, :script, :shutdown, :cleanup],
    [:snakepit, :script, :shutdown, :exit]
  ]

  @runtime_events [
    [:snakepit, :zero_copy, :export],
    [:snakepit, :zero_copy, :import],
    [:snakepit, :zero_copy, :fallback],
    [:snakepit, :worker, :crash],
    [:snakepit, :worker, :tainted],
    [:snakepit, :worker, :restarted],
    [:snakepit, :python, :exception, :mapped],
    [:snakepit, :python, :exception, :unmapped]
  ]

  @deprecation_events [[:snakepit, :deprecated, :module_used]]

  @events @session_events ++
            @program_events ++
            @heartbeat_events ++
            @pool_events ++
            @python_events ++
            @grpc_events ++
            @script_events ++
            @runtime_events ++
            @deprecation_events

  @doc """
  Every event name Snakepit v0.13 lists, in its order: `session_events/0`,
  `program_events/0`, `heartbeat_events/0`, `pool_events/0`, `python_events/0`,
  `grpc_events/0`, `script_events/0`, `runtime_events/0`, then
  `deprecation_events/0`.

      iex> events = Snakepit.Telemetry.events()
      iex> {length(events), hd(events), List.last(events)}
      {#{length(@events)}, [:snakepit, :session_store, :session, :created], [:snakepit, :deprecated, :module_used]}
  """
  @spec events() :: [event_name()]
  def events, do: @events

  @doc """
  Snakepit's session store events.

      iex> hd(Snakepit.Telemetry.session_events())
      [:snakepit, :session_store, :session, :created]
  """
  @spec session_events() :: [event_name()]
  def session_events, do: @session_events

  @doc """
  Snakepit's session store program events.

      iex> Snakepit.Telemetry.program_events() |> Enum.map(&List.last/1)
      [:stored, :retrieved, :deleted]
  """
  @spec program_events() :: [event_name()]
  def program_events, do: @program_events

  @doc """
  Snakepit's heartbeat monitor events.

      iex> [:snakepit, :heartbeat, :ping_sent] in Snakepit.Telemetry.heartbeat_events()
      true
  """
  @spec heartbeat_events() :: [event_name()]
  def heartbeat_events, do: @heartbeat_events

  @doc """
  Pool, worker and session lifecycle events (those of `Snakepit.Telemetry.Naming`'s
  `pool_event/1` and `session_event/1`, and `[:snakepit, :worker, :recycled]`).

      iex> Snakepit.Telemetry.Naming.pool_event(:worker_ready) in Snakepit.Telemetry.pool_events()
      true
  """
  @spec pool_events() :: [event_name()]
  def pool_events, do: @pool_events

  @doc """
  Events of Python workers, folded into `:telemetry`.

      iex> List.last(Snakepit.Telemetry.python_events())
      [:snakepit, :python, :tool, :result_size]
  """
  @spec python_events() :: [event_name()]
  def python_events, do: @python_events

  @doc """
  gRPC call, stream and connection events.

      iex> hd(Snakepit.Telemetry.grpc_events())
      [:snakepit, :grpc, :call, :start]
  """
  @spec grpc_events() :: [event_name()]
  def grpc_events, do: @grpc_events

  @doc """
  Snakepit's script shutdown events.

      iex> Snakepit.Telemetry.script_events() |> Enum.map(&List.last/1)
      [:start, :stop, :cleanup, :exit]
  """
  @spec script_events() :: [event_name()]
  def script_events, do: @script_events

  @doc """
  Snakepit's zero-copy, crash barrier and exception translation events.

      iex> [:snakepit, :worker, :tainted] in Snakepit.Telemetry.runtime_events()
      true
  """
  @spec runtime_events() :: [event_name()]
  def runtime_events, do: @runtime_events

  @doc """
  Snakepit's deprecation event.

      iex> Snakepit.Telemetry.deprecation_events()
      [[:snakepit, :deprecated, :module_used]]
  """
  @spec deprecation_events() :: [event_name()]
  def deprecation_events, do: @deprecation_events

  @doc """
  Attaches the logging handlers of `attach_session_handlers/0`,
  `attach_program_handlers/0` and `attach_heartbeat_handlers/0`.

  Returns `:ok` when all three are attached, else `{:error, :already_exists}`
  (Snakepit returns only the result of the last one).
  """
  @spec attach_handlers() :: :ok | {:error, :already_exists}
  def attach_handlers do
    results = [attach_session_handlers(), attach_program_handlers(), attach_heartbeat_handlers()]
    Enum.find(results, :ok, &(&1 != :ok))
  end

  @doc """
  Attaches the handler `"snakepit-session-logger"`, which logs `session_events/0` with
  `Logger`, as Snakepit does. Returns what `:telemetry.attach_many/4` returns.
  """
  @spec attach_session_handlers() :: :ok | {:error, :already_exists}
  def attach_session_handlers, do: attach("snakepit-session-logger", @session_events)

  @doc """
  Attaches the handler `"snakepit-program-logger"`, which logs `program_events/0` with
  `Logger`, as Snakepit does. Returns what `:telemetry.attach_many/4` returns.
  """
  @spec attach_program_handlers() :: :ok | {:error, :already_exists}
  def attach_program_handlers, do: attach("snakepit-program-logger", @program_events)

  @doc """
  Attaches the handler `"snakepit-heartbeat-logger"`, which logs `heartbeat_events/0`
  with `Logger`, as Snakepit does. Returns what `:telemetry.attach_many/4` returns.
  """
  @spec attach_heartbeat_handlers() :: :ok | {:error, :already_exists}
  def attach_heartbeat_handlers, do: attach("snakepit-heartbeat-logger", @heartbeat_events)

  defp attach(id, events), do: :telemetry.attach_many(id, events, &__MODULE__.log_event/4, nil)

  @doc false
  # The handler of the attach_* functions. It reads metadata and measurements with
  # Access: where Snakepit's raises on a missing key (and :telemetry detaches it),
  # this one logs `nil`.
  def log_event(event, measurements, metadata, _config) do
    {level, message} = log_line(event, measurements, metadata)
    Logger.log(level, message)
  end

  defp log_line([:snakepit, :session_store, :session, :created], _measurements, metadata),
    do: {:info, "Session created: #{metadata[:session_id]}"}

  defp log_line([:snakepit, :session_store, :session, :accessed], _measurements, metadata),
    do: {:debug, "Session accessed: #{metadata[:session_id]}"}

  defp log_line([:snakepit, :session_store, :session, :deleted], _measurements, metadata),
    do: {:info, "Session deleted: #{metadata[:session_id]}"}

  defp log_line([:snakepit, :session_store, :session, :expired], measurements, _metadata),
    do: {:info, "Sessions expired: count=#{measurements[:count]}"}

  defp log_line([:snakepit, :session_store, :program, action], _measurements, metadata)
       when action in [:stored, :retrieved, :deleted] do
    where = if action == :stored, do: "in", else: "from"

    {:debug,
     "Program #{action}: #{metadata[:program_id]} #{where} session #{metadata[:session_id]}"}
  end

  defp log_line([:snakepit, :heartbeat, :monitor_started], _measurements, metadata),
    do: {:debug, "Heartbeat monitor started for #{metadata[:worker_id]}"}

  defp log_line([:snakepit, :heartbeat, :monitor_stopped], _measurements, metadata) do
    {:debug,
     "Heartbeat monitor stopped for #{metadata[:worker_id]} reason=#{inspect(metadata[:reason])}"}
  end

  defp log_line([:snakepit, :heartbeat, :monitor_failure], _measurements, metadata) do
    {:warning,
     "Heartbeat monitor triggered failure for #{metadata[:worker_id]}: " <>
       inspect(metadata[:failure_reason])}
  end

  defp log_line([:snakepit, :heartbeat, :ping_sent], measurements, metadata),
    do:
      {:debug, "Heartbeat ping sent for #{metadata[:worker_id]} (count=#{measurements[:count]})"}

  defp log_line([:snakepit, :heartbeat, :pong_received], measurements, metadata) do
    {:debug,
     "Heartbeat pong received for #{metadata[:worker_id]} latency=#{measurements[:latency_ms]}ms"}
  end

  defp log_line([:snakepit, :heartbeat, :heartbeat_timeout], measurements, metadata),
    do: {:warning, "Heartbeat timeout for #{metadata[:worker_id]} missed=#{measurements[:count]}"}

  defp log_line(event, measurements, metadata) do
    {:debug,
     "Telemetry event: #{inspect(event)} measurements=#{inspect(measurements)} " <>
       "metadata=#{inspect(metadata)}"}
  end
end
