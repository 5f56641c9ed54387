defmodule Snakepit.Telemetry.Naming do
  @moduledoc """
  Event names and keys, all generated at compile time from
  `Snakepit.Telemetry.Catalog`. It offers the functions of Snakepit v0.13's
  `Snakepit.Telemetry.Naming`, with the same arities and return shapes.

    * `from_parts/1` resolves the dotted parts a worker sends to the
      `:telemetry` event name. It never creates atoms: an unknown name is
      `{:error, :unknown_event}`.
    * `measurement_key/1` resolves a measurement key the same way.
    * `pool_event/1`, `session_event/1`, `python_event/1` and `grpc_event/2`
      name the catalog events, for code that emits or attaches to them. Given an
      unknown name they raise `ArgumentError` listing the valid names.
    * `pool_events/0`, `session_events/0`, `python_events/0` and `grpc_events/0`
      are Snakepit's lists of builder names; `event/3` builds a four-part name.

  Builder names are the event's parts after the family, joined with `_`
  (`snakepit.pool.queue.enqueued` is `pool_event(:queue_enqueued)`).

      iex> Snakepit.Telemetry.Naming.from_parts(["python", "call", "start"])
      {:ok, [:snakepit, :python, :call, :start]}
      iex> Snakepit.Telemetry.Naming.pool_event(:worker_ready)
      [:snakepit, :pool, :worker_ready]
  """

  alias Snakepit.Telemetry.Catalog

  @type event_name :: [atom(), ...]

  @worker_events Catalog.worker_events()
  @by_parts Map.new(@worker_events, &{String.split(&1.worker_name, "."), &1.event})
  @measurement_keys Map.new(Catalog.measurement_keys(), &{Atom.to_string(&1), &1})

  # Builder name of an event within its family: the remaining parts joined with "_".
  # Compile time only: the parts are catalog atoms.
  builder_name = fn parts ->
    parts |> Enum.map_join("_", &Atom.to_string/1) |> String.to_atom()
  end

  family = fn family ->
    entries =
      for %{event: [:snakepit, ^family | rest] = event} <- Catalog.events() do
        {builder_name.(rest), event}
      end

    names = Enum.map(entries, &elem(&1, 0))

    if length(Enum.uniq(names)) != length(names) do
      raise CompileError,
        description:
          "two #{family} events of the catalog get the same builder name: #{inspect(names)}"
    end

    entries
  end

  @pool_events family.(:pool)
  @session_events family.(:session)
  @python_events family.(:python)
  @grpc_events (for %{event: [:snakepit, :grpc, kind, name] = event} <- Catalog.events() do
                  {{kind, name}, event}
                end)

  # Snakepit v0.13's lists (lib/snakepit/telemetry/naming.ex of nshkrdotcom/snakepit), in
  # its order. The gRPC names join kind and name ("call_start" for [:snakepit, :grpc, :call,
  # :start]); each entry must name a catalog event, checked below.
  @snakepit_pool_events [
    :initialized,
    :init_started,
    :init_complete,
    :status,
    :queue_enqueued,
    :queue_dequeued,
    :queue_timeout,
    :worker_spawn_started,
    :worker_spawned,
    :worker_ready,
    :worker_spawn_failed,
    :worker_terminated,
    :worker_restarted
  ]
  @snakepit_session_events [:created, :destroyed, :affinity_assigned, :affinity_broken]
  @snakepit_python_events [
    :call_start,
    :call_stop,
    :call_exception,
    :memory_sampled,
    :cpu_sampled,
    :gc_completed,
    :error_occurred
  ]
  @snakepit_grpc_events [
    :call_start,
    :call_stop,
    :call_exception,
    :stream_opened,
    :stream_message,
    :stream_closed,
    :connection_established,
    :connection_lost,
    :connection_reconnected
  ]

  # The joined form Snakepit's grpc_event/2 takes as its action: {kind, joined name, event}.
  @grpc_joined (for {{kind, name}, event} <- @grpc_events do
                  {kind, :"#{kind}_#{name}", event}
                end)

  for {list, known, family} <- [
        {@snakepit_pool_events, Keyword.keys(@pool_events), :pool},
        {@snakepit_session_events, Keyword.keys(@session_events), :session},
        {@snakepit_python_events, Keyword.keys(@python_events), :python},
        {@snakepit_grpc_events, Enum.map(@grpc_joined, &elem(&1, 1)), :grpc}
      ],
      name <- list,
      name not in known do
    raise CompileError,
      description: "Snakepit's #{family} event #{inspect(name)} is not in the catalog"
  end

  @doc """
  Resolves the dotted parts of a worker event name to its `:telemetry` event.

  Only catalog events that a worker may send (those with a worker name) are
  known. Never creates atoms.

      iex> Snakepit.Telemetry.Naming.from_parts(["tool", "execution", "stop"])
      {:ok, [:snakepit, :python, :tool, :execution, :stop]}
      iex> Snakepit.Telemetry.Naming.from_parts(["pool", "initialized"])
      {:error, :unknown_event}
      iex> Snakepit.Telemetry.Naming.from_parts("python.call.start")
      {:error, :unknown_event}
  """
  @spec from_parts(term()) :: {:ok, event_name()} | {:error, :unknown_event}
  def from_parts(parts) do
    case @by_parts do
      %{^parts => event} -> {:ok, event}
      _ -> {:error, :unknown_event}
    end
  end

  @doc """
  Like `from_parts/1`, also resolving the app-defined worker events of
  `Snakepit.Telemetry.Config` (its normalized `:events`, a list of
  `%{name: dotted_name, event: [atom], ...}`). Catalog events come first.

      iex> events = [%{name: "myapp.model.loaded", event: [:myapp, :model, :loaded], measurements: []}]
      iex> Snakepit.Telemetry.Naming.from_parts(["myapp", "model", "loaded"], events)
      {:ok, [:myapp, :model, :loaded]}
      iex> Snakepit.Telemetry.Naming.from_parts(["myapp", "model"], events)
      {:error, :unknown_event}
  """
  @spec from_parts(term(), [%{name: String.t(), event: event_name()}]) ::
          {:ok, event_name()} | {:error, :unknown_event}
  def from_parts(parts, app_events) when is_list(app_events) do
    with {:error, :unknown_event} <- from_parts(parts),
         true <- is_list(parts) and Enum.all?(parts, &is_binary/1),
         name = Enum.join(parts, "."),
         %{event: event} <- Enum.find(app_events, &(&1.name == name)) do
      {:ok, event}
    else
      {:ok, event} -> {:ok, event}
      _ -> {:error, :unknown_event}
    end
  end

  @doc """
  Resolves a measurement key (binary or atom) from the catalog allowlist.
  Never creates atoms.

  Any other key is `{:error, :unknown_measurement_key}`. Snakepit answers
  `{:error, :invalid_atom}` instead for a binary that is not an existing atom (which
  depends on what else the VM has loaded) and raises `FunctionClauseError` for a key
  that is neither a binary nor an atom.

      iex> Snakepit.Telemetry.Naming.measurement_key("duration")
      {:ok, :duration}
      iex> Snakepit.Telemetry.Naming.measurement_key(:rss_bytes)
      {:ok, :rss_bytes}
      iex> Snakepit.Telemetry.Naming.measurement_key("not_a_key")
      {:error, :unknown_measurement_key}
  """
  @spec measurement_key(String.t() | atom()) :: {:ok, atom()} | {:error, :unknown_measurement_key}
  def measurement_key(key) when is_binary(key) do
    case @measurement_keys do
      %{^key => atom} -> {:ok, atom}
      _ -> {:error, :unknown_measurement_key}
    end
  end

  def measurement_key(key) when is_atom(key) and key not in [nil, true, false] do
    measurement_key(Atom.to_string(key))
  end

  def measurement_key(_key), do: {:error, :unknown_measurement_key}

  @doc """
  The events a Python worker may send, with the name it sends them under.

      iex> Snakepit.Telemetry.Naming.python_event_catalog() |> Enum.find(&(&1.name == "python.cpu.sampled"))
      %{name: "python.cpu.sampled", event: [:snakepit, :python, :cpu, :sampled], measurements: [:cpu_percent]}
  """
  @spec python_event_catalog() :: [
          %{name: String.t(), event: event_name(), measurements: [atom()]}
        ]
  def python_event_catalog do
    unquote(
      Macro.escape(
        Enum.map(
          @worker_events,
          &%{name: &1.worker_name, event: &1.event, measurements: &1.measurements}
        )
      )
    )
  end

  # Measurement keys this project adds to Snakepit's (`telemetry.dropped`'s running
  # `:total`): in the catalog, not in Snakepit's list.
  @own_measurement_keys [:total]
  @snakepit_measurement_keys Catalog.measurement_keys() -- @own_measurement_keys

  @doc """
  Snakepit's measurement keys, in its order: the catalog's
  (`Snakepit.Telemetry.Catalog.measurement_keys/0`) without the ones this project adds
  (`:total`, the running total of a `[:snakepit, :python, :telemetry, :dropped]` report).

      iex> :queue_depth in Snakepit.Telemetry.Naming.measurement_keys()
      true
      iex> :total in Snakepit.Telemetry.Naming.measurement_keys()
      false
  """
  @spec measurement_keys() :: [atom()]
  def measurement_keys, do: @snakepit_measurement_keys

  @doc """
  The catalog's metadata keys (see `Snakepit.Telemetry.Catalog.metadata_keys/0`).

      iex> :session_id in Snakepit.Telemetry.Naming.metadata_keys()
      true
  """
  @spec metadata_keys() :: [atom()]
  defdelegate metadata_keys, to: Catalog

  @doc """
  Builds the event name `[:snakepit, component, resource, action]`, as Snakepit's
  `event/3` does. It does not check the name against the catalog, so it can name events
  of your own under `:snakepit`.

  Snakepit returns a list with whatever it is given, which `:telemetry` then rejects
  (event names are lists of atoms); here anything but three atoms raises `ArgumentError`.

      iex> Snakepit.Telemetry.Naming.event(:pool, :worker, :spawned)
      [:snakepit, :pool, :worker, :spawned]
      iex> Snakepit.Telemetry.Naming.event(:grpc, :call, :start)
      [:snakepit, :grpc, :call, :start]
  """
  @spec event(atom(), atom(), atom()) :: event_name()
  def event(component, resource, action)
      when is_atom(component) and is_atom(resource) and is_atom(action) do
    [:snakepit, component, resource, action]
  end

  def event(component, resource, action) do
    raise ArgumentError,
          "event/3 takes three atoms (component, resource, action), got: " <>
            Enum.map_join([component, resource, action], ", ", &inspect/1)
  end

  @doc """
  Snakepit's list of pool builder names, each a valid `pool_event/1` argument.

      iex> Snakepit.Telemetry.Naming.pool_events()
      #{inspect(@snakepit_pool_events, limit: :infinity)}
  """
  @spec pool_events() :: [atom()]
  def pool_events, do: @snakepit_pool_events

  @doc """
  Snakepit's list of session builder names, each a valid `session_event/1` argument.

      iex> Snakepit.Telemetry.Naming.session_events()
      #{inspect(@snakepit_session_events, limit: :infinity)}
  """
  @spec session_events() :: [atom()]
  def session_events, do: @snakepit_session_events

  @doc """
  Snakepit's list of Python builder names, each a valid `python_event/1` argument.
  As in Snakepit, the tool events are not listed; `python_event/1` also takes
  them (and every other catalog `[:snakepit, :python, ...]` event).

      iex> Snakepit.Telemetry.Naming.python_events()
      #{inspect(@snakepit_python_events, limit: :infinity)}
  """
  @spec python_events() :: [atom()]
  def python_events, do: @snakepit_python_events

  @doc """
  Snakepit's list of gRPC event names, kind and name joined (`:call_start` is
  `[:snakepit, :grpc, :call, :start]`). Each is a valid second argument of
  `grpc_event/2`, with its kind as the first (`grpc_event(:call, :call_start)`).

      iex> Snakepit.Telemetry.Naming.grpc_events()
      #{inspect(@snakepit_grpc_events, limit: :infinity)}
  """
  @spec grpc_events() :: [atom()]
  def grpc_events, do: @snakepit_grpc_events

  @doc """
  A pool event: one of #{Enum.map_join(@pool_events, ", ", &"`#{inspect(elem(&1, 0))}`")}.

      iex> Snakepit.Telemetry.Naming.pool_event(:queue_enqueued)
      [:snakepit, :pool, :queue, :enqueued]
      iex> Snakepit.Telemetry.Naming.pool_event(:worker_spawned)
      [:snakepit, :pool, :worker, :spawned]
  """
  @spec pool_event(atom()) :: event_name()
  def pool_event(name)

  for {name, event} <- @pool_events do
    def pool_event(unquote(name)), do: unquote(event)
  end

  def pool_event(name), do: unknown!("pool event", name, Keyword.keys(@pool_events))

  @doc """
  A session event: one of #{Enum.map_join(@session_events, ", ", &"`#{inspect(elem(&1, 0))}`")}.

      iex> Snakepit.Telemetry.Naming.session_event(:affinity_broken)
      [:snakepit, :session, :affinity, :broken]
  """
  @spec session_event(atom()) :: event_name()
  def session_event(name)

  for {name, event} <- @session_events do
    def session_event(unquote(name)), do: unquote(event)
  end

  def session_event(name), do: unknown!("session event", name, Keyword.keys(@session_events))

  @doc """
  A Python worker event: one of #{Enum.map_join(@python_events, ", ", &"`#{inspect(elem(&1, 0))}`")}.

      iex> Snakepit.Telemetry.Naming.python_event(:call_start)
      [:snakepit, :python, :call, :start]
      iex> Snakepit.Telemetry.Naming.python_event(:tool_execution_stop)
      [:snakepit, :python, :tool, :execution, :stop]
  """
  @spec python_event(atom()) :: event_name()
  def python_event(name)

  for {name, event} <- @python_events do
    def python_event(unquote(name)), do: unquote(event)
  end

  def python_event(name), do: unknown!("python event", name, Keyword.keys(@python_events))

  @doc """
  A gRPC event, by kind and name: #{Enum.map_join(@grpc_events, ", ", fn {{k, n}, _} -> "`(#{inspect(k)}, #{inspect(n)})`" end)}.

  The name may also be given joined with its kind, as listed by `grpc_events/0`
  (`grpc_event(:call, :call_start)`): Snakepit v0.13's `grpc_event/2` only accepts
  that form, and returns `[:snakepit, :grpc, :call, :call_start]`, an event nothing
  emits, while `grpc_event(:call, :start)` raises `FunctionClauseError` there. Both
  forms give the event's real name here.

      iex> Snakepit.Telemetry.Naming.grpc_event(:call, :start)
      [:snakepit, :grpc, :call, :start]
      iex> Snakepit.Telemetry.Naming.grpc_event(:call, :call_start)
      [:snakepit, :grpc, :call, :start]
      iex> Snakepit.Telemetry.Naming.grpc_event(:connection, :lost)
      [:snakepit, :grpc, :connection, :lost]
  """
  @spec grpc_event(atom(), atom()) :: event_name()
  def grpc_event(kind, name)

  for {{kind, name}, event} <- @grpc_events do
    def grpc_event(unquote(kind), unquote(name)), do: unquote(event)
  end

  for {kind, joined, event} <- @grpc_joined do
    def grpc_event(unquote(kind), unquote(joined)), do: unquote(event)
  end

  def grpc_event(kind, name) do
    unknown!("gRPC event", {kind, name}, Enum.map(@grpc_events, &elem(&1, 0)))
  end

  defp unknown!(what, name, valid) do
    raise ArgumentError,
          "unknown #{what} #{inspect(name)}; valid: " <> Enum.map_join(valid, ", ", &inspect/1)
  end
end
