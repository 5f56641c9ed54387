defmodule Snakepit.Telemetry.Config do
  @moduledoc """
  The validated configuration of `:snakepit_telemetry`.

  Set it in your `config/*.exs`:

      config :snakepit_telemetry,
        sampling_rate: 0.5,
        excluded_events: ["python.gc.*"],
        events: [
          [name: "myapp.model.loaded", event: [:myapp, :model, :loaded], measurements: [:duration]]
        ]

  `load!/0` reads it when the application starts; an invalid value makes the
  start fail with an `ArgumentError` that names the key, the value given and
  what is expected. Unknown keys are errors too.

  ## Keys

    * `:enabled` (boolean, default `true`) - whether a newly registered worker
      sends telemetry (change it live with `Snakepit.Telemetry.GrpcStream.toggle/2`).
    * `:sampling_rate` (number from `0.0` to `1.0`, default `1.0`) - fraction of
      a newly registered worker's events kept (change it live with
      `Snakepit.Telemetry.GrpcStream.update_sampling/2`); integers `0` and `1` are
      accepted and stored as floats.
    * `:max_buffer_size` (positive integer, default `1024`) - most events the
      NIF buffers per worker stream while `Snakepit.Telemetry.GrpcStream` is
      behind; beyond it new events are dropped and counted.
    * `:excluded_events` (list of event patterns, default `[]`) - worker events
      denied for every worker, whatever its filter: dotted worker names or glob
      patterns as in `Snakepit.Telemetry.Control`, e.g. `"python.gc.*"`.
    * `:grpc_stream` (boolean, default `true`) - whether registering a worker
      opens its telemetry stream. With `false`, `Snakepit.Telemetry.GrpcStream`
      still records workers and their settings (`list_streams/0` shows them with
      status `:not_streaming`) but receives nothing from them.
    * `:events` (list, default `[]`) - app-defined worker events, beyond the
      catalog's. Each is a keyword list or map with:
        * `:name` - the dotted name a worker sends, lowercase segments of
          `[a-z0-9_]`, e.g. `"myapp.model.loaded"` (at most 256 bytes); it may
          neither be a catalog worker name nor repeat;
        * `:event` - the `:telemetry` event name, a non-empty list of atoms,
          not a catalog event;
        * `:measurements` - the measurement keys it carries, a list of atoms
          (default `[]`).

      The atoms come from your own configuration, so accepting these events
      creates no atoms at run time. They are normalized to
      `%{name: binary, event: [atom], measurements: [atom]}`.
    * `:max_buffer_bytes` (positive integer, default `4_194_304`, 4 MiB) - most
      bytes (as the events were on the wire) the NIF buffers per worker stream;
      beyond it new events are dropped and counted as `:overflow`. At least
      `:max_event_bytes`.
    * `:max_event_bytes` (positive integer, default `262_144`, 256 KiB) - the
      largest event a worker may send. A larger one is skipped as it arrives,
      never buffered, and counted as `:oversize`; the stream goes on. (The
      gRPC default limit of 4 MiB per message does not apply: this one does.)
    * `:max_metadata_keys` (positive integer, default `128`) - most metadata
      keys one worker event may carry; an event with more is dropped and
      counted as `:too_many_keys`.
    * `:max_batch_size` (positive integer, default `1024`) - most events per
      batch sent from the NIF to `Snakepit.Telemetry.Dispatcher`. A batch never waits
      to fill (only, to an idle Dispatcher, for `:min_batch_interval_us`); under load,
      larger batches mean fewer
      messages, acknowledgements and scheduler wake-ups per event (1024 against 256:
      about a third more events/s on one stream, `bench/RESULTS.md`).
    * `:max_batch_bytes` (positive integer, default `1_048_576`, 1 MiB) - most
      bytes per batch (a single larger event travels alone). It also bounds a batched
      message from a worker: the NIF reads messages up to
      `max(max_batch_bytes, max_event_bytes + 16)` and tells the worker so
      (`x-snakepit-max-message-bytes`), and this project's workers size their batches to it.
    * `:max_in_flight_batches` (positive integer, default `4`) - most batches
      per stream sent to `Snakepit.Telemetry.Dispatcher` and not yet
      acknowledged; while that many are pending, the stream's buffer fills.
    * `:min_batch_interval_us` (integer from `0` to `10_000_000`, microseconds, default
      `5000`) - while the Dispatcher holds none of a stream's batches (it is idle, maybe
      asleep), a batch that is not full (with the buffer less than half full) and comes
      within half this interval of the stream's previous batch waits until the interval
      has passed. Events that come one per gRPC message (Snakepit's `StreamTelemetry`)
      faster than that then share a scheduler's wake-ups instead of one each: at 5,000
      events/s on one stream, 8.6–10.2 µs of scheduler time per event with 5 ms, against
      14.7–16.2 with 1 ms and 19 with `0`; a Python worker whose tool emits as fast as the
      wire takes it sends 10–25 % more with 5 ms than with 1 ms (`bench/RESULTS.md`). The
      first event after a quiet spell leaves at once, a busy Dispatcher gets batches as
      soon as it can take them, and settings that remove events (`toggle/2`, filters,
      sampling) apply to waiting ones too, and when a worker is unregistered its waiting
      events are sent at once; the cost is up to this much latency for an event. `0` sends
      every batch at once.
    * `:max_patterns` (positive integer, default `64`) - most patterns one
      worker's settings may hold, counting allow, deny and every pattern-scoped
      sampling rule; a control call beyond it returns
      `{:error, {:too_many_patterns, limit}}` and changes nothing.
    * `:dispatchers` (integer from 1 to 1024, default `System.schedulers_online()`) - how
      many `Snakepit.Telemetry.Dispatcher` processes run handlers; each worker's events go
      to one of them (by its id), so handlers of different workers run in parallel. Each
      keeps a heap of at least about 1 MiB (see `Snakepit.Telemetry.Dispatcher`).
    * `:connect_timeout` (positive integer, milliseconds, default `5_000`) - the
      most one attempt to open a worker's stream may take, from connecting to
      the worker's response headers; a worker that accepts and never answers
      is a failed attempt, retried like any other.
    * `:reconnect` (keyword list, default `[initial_ms: 100, max_ms: 5_000]`) -
      the backoff between attempts when a stream fails to open or is lost:
      attempt `n` waits a random time between half and all of
      `min(max_ms, initial_ms * 2^(n - 1))`. Both positive integers,
      `max_ms >= initial_ms`. A stream that stayed open 5 s resets it.
    * `:runtime_threads` (positive integer, default half of
      `System.schedulers_online()`, at least 1) - threads of the NIF's tokio
      runtime, which reads every stream. Chosen by measurement on 2 cores
      (`bench/nif_path.exs --streams 4`, see `bench/RESULTS.md`): a second thread
      gave about 10 % more events/s but let the NIF's threads take both cores, and
      BEAM processes went unscheduled for over 1 ms 7 to 20 times per run instead
      of 0 or 1. The BEAM needs its schedulers too.

  ## Memory bound

  What one worker's stream can hold in the NIF and in flight to the
  Dispatcher, whatever the worker sends, is at most about

      max_buffer_bytes + max_in_flight_batches * max(max_batch_bytes, max_event_bytes)
        + max_event_bytes

  (the buffer, the batches awaiting the handlers, one message being read; on the
  batched wire add one message, `max(max_batch_bytes, max_event_bytes)`, which may be
  read into a buffer that is not yet full),
  plus the HTTP/2 receive window (at most 2 MiB per worker connection).
  With the defaults that is 4 MiB + 4 MiB + 256 KiB, about 8.3 MiB per worker
  (10.3 MiB with the window) when the handlers fall behind; an idle or
  keeping-up stream holds almost nothing. The process's RSS follows it: 300
  events of 3 MB behind a stuck handler, with a bound of 38 MiB, grew a fresh
  BEAM's RSS by 23-31 MiB (`test/snakepit/telemetry/hardening_test.exs`, which allows
  the bound plus 16 MiB of allocator slack).
  """

  alias Snakepit.Telemetry.{Catalog, Control}

  @typedoc "An app-defined worker event, normalized."
  @type app_event :: %{name: String.t(), event: [atom(), ...], measurements: [atom()]}

  @type t :: %__MODULE__{
          enabled: boolean(),
          sampling_rate: float(),
          max_buffer_size: pos_integer(),
          max_buffer_bytes: pos_integer(),
          max_event_bytes: pos_integer(),
          max_metadata_keys: pos_integer(),
          max_batch_bytes: pos_integer(),
          max_patterns: pos_integer(),
          runtime_threads: pos_integer() | nil,
          excluded_events: [Control.pattern()],
          grpc_stream: boolean(),
          events: [app_event()],
          max_batch_size: pos_integer(),
          max_in_flight_batches: pos_integer(),
          min_batch_interval_us: non_neg_integer(),
          dispatchers: pos_integer() | nil,
          connect_timeout: pos_integer(),
          reconnect: [initial_ms: pos_integer(), max_ms: pos_integer()]
        }

  defstruct enabled: true,
            sampling_rate: 1.0,
            max_buffer_size: 1024,
            excluded_events: [],
            grpc_stream: true,
            events: [],
            max_batch_size: 1024,
            max_in_flight_batches: 4,
            min_batch_interval_us: 5000,
            max_buffer_bytes: 4_194_304,
            max_event_bytes: 262_144,
            max_metadata_keys: 128,
            max_batch_bytes: 1_048_576,
            max_patterns: 64,
            runtime_threads: nil,
            dispatchers: nil,
            connect_timeout: 5_000,
            reconnect: [initial_ms: 100, max_ms: 5_000]

  @keys [
    :enabled,
    :sampling_rate,
    :max_buffer_size,
    :excluded_events,
    :grpc_stream,
    :events,
    :max_batch_size,
    :max_in_flight_batches,
    :min_batch_interval_us,
    :max_buffer_bytes,
    :max_event_bytes,
    :max_metadata_keys,
    :max_batch_bytes,
    :max_patterns,
    :runtime_threads,
    :connect_timeout,
    :reconnect,
    :dispatchers
  ]
  # Every key but these is a positive integer.
  @positive_integers @keys --
                       [
                         :enabled,
                         :sampling_rate,
                         :excluded_events,
                         :grpc_stream,
                         :events,
                         :reconnect,
                         :dispatchers,
                         :runtime_threads,
                         :min_batch_interval_us
                       ]
  @worker_names MapSet.new(Catalog.worker_events(), & &1.worker_name)
  @catalog_events MapSet.new(Catalog.events(), & &1.event)
  @event_name ~r/^[a-z0-9_]+(\.[a-z0-9_]+)*$/
  @event_keys [:name, :event, :measurements]

  @doc """
  Loads and validates the application environment of `:snakepit_telemetry`.

  Raises `ArgumentError` on an invalid configuration.
  """
  @spec load!() :: t()
  def load! do
    load!(Application.get_all_env(:snakepit_telemetry))
  end

  @doc """
  Validates `opts` (a keyword list) over the defaults and returns the config.

  Raises `ArgumentError` naming the key, the value given and what is
  expected.

      iex> config = Snakepit.Telemetry.Config.load!(sampling_rate: 1)
      iex> {config.sampling_rate, config.max_batch_size}
      {1.0, 1024}
      iex> Snakepit.Telemetry.Config.load!(sampling_rate: 2)
      ** (ArgumentError) invalid :sampling_rate in the :snakepit_telemetry config: expected a number from 0.0 to 1.0, got: 2
  """
  @spec load!(keyword()) :: t()
  def load!(opts) when is_list(opts) do
    unless Keyword.keyword?(opts) do
      raise ArgumentError,
            "expected the :snakepit_telemetry config to be a keyword list, got: #{inspect(opts)}"
    end

    check_unknown_keys!(opts)

    fields =
      Enum.map(@keys, fn key ->
        default = Map.fetch!(%__MODULE__{}, key)
        {key, validate!(key, Keyword.get(opts, key, default))}
      end)

    config = struct!(__MODULE__, fields)

    if config.max_event_bytes > config.max_buffer_bytes do
      invalid!(
        :max_event_bytes,
        config.max_event_bytes,
        "at most :max_buffer_bytes (#{config.max_buffer_bytes}), or no event of that size could be buffered"
      )
    end

    config
  end

  def load!(other) do
    raise ArgumentError,
          "expected the :snakepit_telemetry config to be a keyword list, got: #{inspect(other)}"
  end

  @doc """
  The configuration keys, with their defaults.

      iex> Snakepit.Telemetry.Config.defaults()[:max_in_flight_batches]
      4
  """
  @spec defaults() :: keyword()
  def defaults, do: Enum.map(@keys, &{&1, Map.fetch!(%__MODULE__{}, &1)})

  defp check_unknown_keys!(opts) do
    case opts |> Keyword.keys() |> Enum.uniq() |> Enum.reject(&(&1 in @keys)) do
      [] ->
        :ok

      unknown ->
        hints =
          for key <- unknown,
              suggestion = suggest(key),
              do: "#{inspect(key)} (did you mean #{inspect(suggestion)}?)"

        raise ArgumentError,
              "unknown key(s) in the :snakepit_telemetry config: #{inspect(unknown)}" <>
                if(hints == [], do: "", else: "; " <> Enum.join(hints, ", ")) <>
                ". Valid keys: " <> Enum.map_join(@keys, ", ", &inspect/1)
    end
  end

  defp suggest(key) do
    given = if is_atom(key), do: Atom.to_string(key), else: inspect(key)

    {score, best} =
      @keys
      |> Enum.map(&{String.jaro_distance(Atom.to_string(&1), given), &1})
      |> Enum.max()

    if score >= 0.8, do: best
  end

  defp validate!(key, value) when key in [:enabled, :grpc_stream] do
    if is_boolean(value), do: value, else: invalid!(key, value, "a boolean")
  end

  defp validate!(:sampling_rate, value) do
    if is_number(value) and value >= 0 and value <= 1,
      do: value / 1,
      else: invalid!(:sampling_rate, value, "a number from 0.0 to 1.0")
  end

  defp validate!(key, value) when key in @positive_integers do
    if is_integer(value) and value > 0,
      do: value,
      else: invalid!(key, value, "a positive integer")
  end

  defp validate!(:min_batch_interval_us, value) do
    if is_integer(value) and value in 0..10_000_000,
      do: value,
      else:
        invalid!(
          :min_batch_interval_us,
          value,
          "an integer from 0 to 10_000_000 (microseconds, at most 10 s)"
        )
  end

  defp validate!(:dispatchers, nil), do: System.schedulers_online()
  defp validate!(:runtime_threads, nil), do: max(1, div(System.schedulers_online(), 2))

  defp validate!(:runtime_threads, value) do
    if is_integer(value) and value > 0,
      do: value,
      else: invalid!(:runtime_threads, value, "a positive integer")
  end

  defp validate!(:dispatchers, value) do
    if is_integer(value) and value in 1..1024,
      do: value,
      else: invalid!(:dispatchers, value, "an integer from 1 to 1024")
  end

  defp validate!(:reconnect, value) do
    expected =
      "a keyword list [initial_ms: pos_integer, max_ms: pos_integer] with max_ms >= initial_ms"

    with true <- Keyword.keyword?(value) and Keyword.keys(value) -- [:initial_ms, :max_ms] == [],
         initial = Keyword.get(value, :initial_ms, 100),
         max = Keyword.get(value, :max_ms, 5_000),
         true <- is_integer(initial) and initial > 0 and is_integer(max) and max >= initial do
      [initial_ms: initial, max_ms: max]
    else
      _ -> invalid!(:reconnect, value, expected)
    end
  end

  defp validate!(:excluded_events, value) do
    expected =
      "a list of event patterns (non-empty strings of at most 256 bytes of " <>
        "A-Z a-z 0-9 _ . * ? -, e.g. \"python.gc.*\")"

    cond do
      not is_list(value) ->
        invalid!(:excluded_events, value, expected)

      bad = Enum.find(value, &(not Control.valid_pattern?(&1))) ->
        invalid!(:excluded_events, value, expected <> "; invalid pattern: #{inspect(bad)}")

      true ->
        value
    end
  end

  defp validate!(:events, value) do
    unless is_list(value) do
      invalid!(:events, value, "a list of event definitions (keyword lists or maps)")
    end

    value
    |> Enum.map(&validate_event!/1)
    |> Enum.reduce([], fn event, seen ->
      if Enum.any?(seen, &(&1.name == event.name)) do
        invalid!(
          :events,
          value,
          "unique :name values, but #{inspect(event.name)} appears more than once"
        )
      end

      [event | seen]
    end)
    |> Enum.reverse()
  end

  defp validate_event!(entry) do
    fields =
      cond do
        is_map(entry) and not is_struct(entry) ->
          Map.to_list(entry)

        is_list(entry) and entry != [] and Keyword.keyword?(entry) ->
          entry

        true ->
          event_invalid!(entry, "a keyword list or map with :name, :event and :measurements")
      end

    case Enum.reject(Keyword.keys(fields), &(&1 in @event_keys)) do
      [] ->
        :ok

      unknown ->
        event_invalid!(
          entry,
          "only the keys :name, :event and :measurements, got unknown #{inspect(unknown)}"
        )
    end

    name = Keyword.get(fields, :name)
    event = Keyword.get(fields, :event)
    measurements = Keyword.get(fields, :measurements, [])

    cond do
      not (is_binary(name) and byte_size(name) <= 256 and Regex.match?(@event_name, name)) ->
        event_invalid!(
          entry,
          ":name to be a dotted name of lowercase [a-z0-9_] segments such as \"myapp.model.loaded\" (at most 256 bytes), got: #{inspect(name)}"
        )

      name in @worker_names ->
        event_invalid!(
          entry,
          ":name not to be a catalog worker event, but #{inspect(name)} is one"
        )

      not (is_list(event) and event != [] and Enum.all?(event, &is_atom/1)) ->
        event_invalid!(
          entry,
          ":event to be a non-empty list of atoms such as [:myapp, :model, :loaded], got: #{inspect(event)}"
        )

      event in @catalog_events ->
        event_invalid!(entry, ":event not to be a catalog event, but #{inspect(event)} is one")

      not (is_list(measurements) and Enum.all?(measurements, &is_atom/1)) ->
        event_invalid!(
          entry,
          ":measurements to be a list of atoms, got: #{inspect(measurements)}"
        )

      true ->
        %{name: name, event: event, measurements: measurements}
    end
  end

  defp event_invalid!(entry, expected) do
    raise ArgumentError,
          "invalid entry in :events of the :snakepit_telemetry config: expected #{expected}; entry: #{inspect(entry)}"
  end

  defp invalid!(key, value, expected) do
    raise ArgumentError,
          "invalid #{inspect(key)} in the :snakepit_telemetry config: expected #{expected}, got: #{inspect(value)}"
  end
end
