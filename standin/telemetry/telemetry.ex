defmodule :telemetry do
  @moduledoc """
  Offline stand-in for the [`telemetry`](https://hex.pm/packages/telemetry)
  package, compiled into `:snakepit_telemetry` only when the real package cannot
  be had (no Hex and no `telemetry` on the code path); see `mix.exs`. It is not
  part of the Hex package: users always get the real `{:telemetry, "~> 1.0"}`.

  It follows the documented API of telemetry 1.x, written from that
  documentation:

    * `attach/4`, `attach_many/4`, `detach/1`, `list_handlers/1`;
    * `execute/3`: the handlers attached to the event run in the caller's
      process, as `handler.(event, measurements, metadata, config)`. A handler
      that raises, throws or exits is detached, an error is logged and the event
      `[:telemetry, :handler, :failure]` is emitted with measurements
      `%{monotonic_time: _, system_time: _}` and metadata
      `%{event_name: _, handler_id: _, handler_config: _, kind: _, reason: _, stacktrace: _}`;
      `execute/3` itself never raises because of a handler;
    * `span/3`: `prefix ++ [:start]`, `prefix ++ [:stop]` and
      `prefix ++ [:exception]`, with times in `:native` units and a
      `:telemetry_span_context`; the exception is re-raised.

  It needs no supervision tree and no application start: handlers live in
  `:persistent_term` (fast to read from `execute/3`), and `attach*/4` and
  `detach/1` are serialized through a small process started on first use
  (registered as `:telemetry_standin_lock`), so concurrent attaches are safe.
  `Application.ensure_all_started(:telemetry)` is not needed (and there is no
  `:telemetry` application to start).

  `Snakepit.Telemetry.Backend.telemetry_impl/0` tells whether this stand-in or
  the real package is in use.
  """

  # Tells Snakepit.Telemetry.Backend (and mix.exs) that this module is the stand-in.
  # scripts/check_real_telemetry deletes the lines naming this attribute to build a
  # separate :telemetry application that passes for the real package (and checks
  # that the result has no marker left).
  Module.register_attribute(__MODULE__, :snakepit_telemetry_standin, persist: true)
  @snakepit_telemetry_standin true

  @store {__MODULE__, :handlers}
  @lock {__MODULE__, :lock}

  @typedoc "Any term identifying a handler."
  @type handler_id :: term()
  @typedoc "A non-empty list of atoms."
  @type event_name :: [atom(), ...]
  @typedoc "A list of atoms; `[]` is the prefix of every event."
  @type event_prefix :: [atom()]
  @type event_measurements :: map()
  @type event_metadata :: map()
  @type handler_config :: term()
  @type handler_function ::
          (event_name(), event_measurements(), event_metadata(), handler_config() -> any())
  @type handler :: %{
          id: handler_id(),
          event_name: event_name(),
          function: handler_function(),
          config: handler_config()
        }
  @type span_result :: term()
  @type span_function ::
          (() -> {span_result(), event_metadata()}
                 | {span_result(), event_measurements(), event_metadata()})

  # Stored: {handlers in attach order, %{event_name => handlers in attach order}}.

  @doc """
  Attaches `function` to `event_name` under the unique `handler_id`.

  Returns `{:error, :already_exists}` when a handler with that id is attached.

      iex> :telemetry.attach("doc-attach", [:doc, :attach], fn _, _, _, _ -> :ok end, nil)
      :ok
      iex> :telemetry.attach("doc-attach", [:doc, :other], fn _, _, _, _ -> :ok end, nil)
      {:error, :already_exists}
      iex> :telemetry.detach("doc-attach")
      :ok
  """
  @spec attach(handler_id(), event_name(), handler_function(), handler_config()) ::
          :ok | {:error, :already_exists}
  def attach(handler_id, event_name, function, config) do
    attach_many(handler_id, [event_name], function, config)
  end

  @doc """
  Attaches `function` to every event in `event_names` under one `handler_id`.

  A failure of the handler on any of the events detaches it from all of them,
  as `detach/1` does. Returns `{:error, :already_exists}` when a handler with
  that id is attached.

      iex> handler = fn event, _measurements, _metadata, pid -> send(pid, event) end
      iex> :telemetry.attach_many("doc-many", [[:doc, :a], [:doc, :b]], handler, self())
      :ok
      iex> :telemetry.execute([:doc, :b], %{}, %{})
      iex> receive do: (event -> event)
      [:doc, :b]
      iex> :telemetry.detach("doc-many")
      :ok
  """
  @spec attach_many(handler_id(), [event_name()], handler_function(), handler_config()) ::
          :ok | {:error, :already_exists}
  def attach_many(handler_id, event_names, function, config) do
    unless is_function(function, 4) do
      raise ArgumentError,
            "expected the handler function to be a function of arity 4, got: #{inspect(function)}"
    end

    unless is_list(event_names) and event_names != [] do
      raise ArgumentError,
            "expected a non-empty list of event names, got: #{inspect(event_names)}"
    end

    Enum.each(event_names, &check_event_name!/1)

    new =
      for event_name <- Enum.uniq(event_names) do
        %{id: handler_id, event_name: event_name, function: function, config: config}
      end

    locked(fn ->
      {handlers, _index} = read()

      if Enum.any?(handlers, &(&1.id == handler_id)) do
        {:error, :already_exists}
      else
        write(handlers ++ new)
      end
    end)
  end

  @doc """
  Detaches the handler `handler_id` from all its events.

  Returns `{:error, :not_found}` when no such handler is attached.

      iex> :telemetry.detach("doc-nobody")
      {:error, :not_found}
  """
  @spec detach(handler_id()) :: :ok | {:error, :not_found}
  def detach(handler_id) do
    locked(fn ->
      {handlers, _index} = read()

      case Enum.reject(handlers, &(&1.id == handler_id)) do
        ^handlers -> {:error, :not_found}
        rest -> write(rest)
      end
    end)
  end

  @doc """
  Returns the handlers attached to events that start with `event_prefix`, in
  attach order; `[]` returns all of them. A handler attached with
  `attach_many/4` appears once per event.

      iex> :telemetry.attach("doc-list", [:doc, :list, :done], fn _, _, _, _ -> :ok end, :cfg)
      :ok
      iex> [handler] = :telemetry.list_handlers([:doc, :list])
      iex> {handler.id, handler.event_name, handler.config}
      {"doc-list", [:doc, :list, :done], :cfg}
      iex> :telemetry.list_handlers([:doc, :list, :done, :more])
      []
      iex> :telemetry.detach("doc-list")
      :ok
  """
  @spec list_handlers(event_prefix()) :: [handler()]
  def list_handlers(event_prefix) when is_list(event_prefix) do
    {handlers, _index} = read()
    Enum.filter(handlers, &prefix?(event_prefix, &1.event_name))
  end

  @doc """
  Emits `event_name`, calling every handler attached to it, in the caller's
  process, with `(event_name, measurements, metadata, handler_config)`.

  A handler that raises, throws or exits is detached, the failure is logged
  and `[:telemetry, :handler, :failure]` is emitted (see the module doc). The
  order in which handlers run is not part of the contract.

      iex> :telemetry.execute([:doc, :nobody, :listens], %{count: 1}, %{})
      :ok
  """
  @spec execute(event_name(), event_measurements(), event_metadata()) :: :ok
  def execute(event_name, measurements, metadata)
      when is_list(event_name) and is_map(measurements) and is_map(metadata) do
    {_handlers, index} = read()

    case index do
      %{^event_name => handlers} ->
        Enum.each(handlers, &invoke(&1, event_name, measurements, metadata))

      _ ->
        :ok
    end

    :ok
  end

  @doc """
  Runs `span_function`, emitting `event_prefix ++ [:start]` before it and
  `event_prefix ++ [:stop]` after it, or `event_prefix ++ [:exception]` if it
  raises, throws or exits (the exception is then re-raised).

  `span_function` returns `{result, stop_metadata}` or
  `{result, extra_measurements, stop_metadata}`; `span/3` returns `result`.

    * start: measurements `%{monotonic_time: _, system_time: _}`, metadata
      `start_metadata` plus `:telemetry_span_context`;
    * stop: measurements `%{duration: _, monotonic_time: _}` (plus the extra
      measurements), metadata `stop_metadata` plus `:telemetry_span_context`;
    * exception: measurements `%{duration: _, monotonic_time: _}`, metadata
      `start_metadata` plus `:kind`, `:reason`, `:stacktrace` and
      `:telemetry_span_context`.

  Times are in `:native` units. The span context is a fresh reference unless
  `start_metadata` already has a `:telemetry_span_context`.

      iex> :telemetry.span([:doc, :span], %{}, fn -> {21 * 2, %{}} end)
      42
  """
  @spec span(event_prefix(), event_metadata(), span_function()) :: span_result()
  def span(event_prefix, start_metadata, span_function)
      when is_list(event_prefix) and is_map(start_metadata) and is_function(span_function, 0) do
    start_time = System.monotonic_time()
    start_metadata = Map.put_new(start_metadata, :telemetry_span_context, make_ref())
    context = start_metadata.telemetry_span_context

    execute(
      event_prefix ++ [:start],
      %{monotonic_time: start_time, system_time: System.system_time()},
      start_metadata
    )

    try do
      case span_function.() do
        {result, stop_metadata} when is_map(stop_metadata) ->
          {result, %{}, stop_metadata}

        {result, extra_measurements, stop_metadata}
        when is_map(extra_measurements) and is_map(stop_metadata) ->
          {result, extra_measurements, stop_metadata}

        other ->
          raise ArgumentError,
                "expected the span function to return {result, stop_metadata} or " <>
                  "{result, extra_measurements, stop_metadata}, got: #{inspect(other)}"
      end
    catch
      kind, reason ->
        stacktrace = __STACKTRACE__
        stop_time = System.monotonic_time()

        execute(
          event_prefix ++ [:exception],
          %{duration: stop_time - start_time, monotonic_time: stop_time},
          Map.merge(start_metadata, %{kind: kind, reason: reason, stacktrace: stacktrace})
        )

        :erlang.raise(kind, reason, stacktrace)
    else
      {result, extra_measurements, stop_metadata} ->
        stop_time = System.monotonic_time()

        execute(
          event_prefix ++ [:stop],
          Map.merge(extra_measurements, %{
            duration: stop_time - start_time,
            monotonic_time: stop_time
          }),
          Map.put_new(stop_metadata, :telemetry_span_context, context)
        )

        result
    end
  end

  ## Internals

  defp invoke(%{function: function, config: config} = handler, event_name, measurements, metadata) do
    function.(event_name, measurements, metadata, config)
  catch
    kind, reason ->
      stacktrace = __STACKTRACE__
      handle_failure(handler, event_name, kind, reason, stacktrace)
  end

  defp handle_failure(handler, event_name, kind, reason, stacktrace) do
    detach_failed(handler)

    :logger.error(
      "Handler ~p has failed and has been detached. Class=~p~nReason=~p~nStacktrace=~p~n",
      [handler.id, kind, reason, stacktrace]
    )

    execute(
      [:telemetry, :handler, :failure],
      %{monotonic_time: System.monotonic_time(), system_time: System.system_time()},
      %{
        event_name: event_name,
        handler_id: handler.id,
        handler_config: handler.config,
        kind: kind,
        reason: reason,
        stacktrace: stacktrace
      }
    )
  catch
    # Logging or the failure event itself must never make execute/3 raise.
    _kind, _reason -> :ok
  end

  # Detaches the failed handler, unless it was detached and another one attached
  # under the same id meanwhile.
  defp detach_failed(%{id: id, function: function}) do
    locked(fn ->
      {handlers, _index} = read()

      if Enum.any?(handlers, &(&1.id == id and &1.function == function)) do
        write(Enum.reject(handlers, &(&1.id == id)))
      else
        :ok
      end
    end)
  end

  defp prefix?([], _event_name), do: true
  defp prefix?([part | prefix], [part | event_name]), do: prefix?(prefix, event_name)
  defp prefix?(_prefix, _event_name), do: false

  defp check_event_name!(event_name) do
    unless is_list(event_name) and event_name != [] and Enum.all?(event_name, &is_atom/1) do
      raise ArgumentError,
            "expected an event name (a non-empty list of atoms), got: #{inspect(event_name)}"
    end
  end

  defp read, do: :persistent_term.get(@store, {[], %{}})

  defp write(handlers) do
    index = Enum.group_by(handlers, & &1.event_name)
    :persistent_term.put(@store, {handlers, index})
  end

  # attach/detach run one at a time in a small registered process, started on
  # first use and restarted on demand; the handlers themselves live in
  # :persistent_term, so losing that process loses nothing.
  defp locked(fun) do
    server = lock_server()
    ref = Process.monitor(server)
    send(server, {@lock, self(), ref, fun})

    receive do
      {^ref, {:ok, result}} ->
        Process.demonitor(ref, [:flush])
        result

      {^ref, {:error, kind, reason, stacktrace}} ->
        Process.demonitor(ref, [:flush])
        :erlang.raise(kind, reason, stacktrace)

      {:DOWN, ^ref, :process, _pid, _reason} ->
        locked(fun)
    end
  end

  defp lock_server do
    with nil <- Process.whereis(:telemetry_standin_lock) do
      pid = spawn(fn -> serve() end)

      try do
        Process.register(pid, :telemetry_standin_lock)
        pid
      rescue
        # Another process registered one first: use that one.
        ArgumentError ->
          Process.exit(pid, :kill)
          lock_server()
      end
    end
  end

  defp serve do
    receive do
      {@lock, from, ref, fun} ->
        result =
          try do
            {:ok, fun.()}
          catch
            kind, reason -> {:error, kind, reason, __STACKTRACE__}
          end

        send(from, {ref, result})
        serve()
    end
  end
end
