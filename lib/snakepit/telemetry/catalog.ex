defmodule Snakepit.Telemetry.Catalog do
  @moduledoc """
  The event catalog, read at compile time from `priv/catalog.txt`. This module
  is its one reader: the NIF gets the catalog from `native_spec/1` when it
  starts (with the atoms made here, so the NIF never makes an atom from a
  string). Editing the file recompiles this module.

  The file has three sections (its header documents the format):

    * `[measurement_keys]`: the measurement keys, each optionally followed by
      its unit (`native`: sent by workers in nanoseconds, delivered in
      `:native` time units);
    * `[metadata_keys]`: the metadata keys that become atoms;
    * `[events]`: `event | from worker | measurements | metadata`.

  All atoms in this module are created at compile time from that file; nothing
  here creates atoms at run time. A malformed line fails compilation with a
  `CompileError` naming the file and the line.

      iex> event = hd(Snakepit.Telemetry.Catalog.worker_events())
      iex> {event.event, event.worker_name}
      {[:snakepit, :python, :call, :start], "python.call.start"}
  """

  @path Path.expand("../../../priv/catalog.txt", __DIR__)
  @external_resource @path

  @typedoc "One catalog event."
  @type event :: %{
          event: [atom(), ...],
          worker_name: String.t() | nil,
          measurements: [atom()],
          metadata: [atom()]
        }

  defmodule Parser do
    @moduledoc false
    # Compile-time parser of catalog.txt. Raises CompileError naming the line.

    @key ~r/^[a-z][a-z0-9_]*$/
    @dotted ~r/^[a-z0-9_]+(\.[a-z0-9_]+)+$/
    @sections %{
      "measurement_keys" => :measurement_keys,
      "metadata_keys" => :metadata_keys,
      "events" => :events
    }

    def parse!(path, text) do
      initial = %{section: nil, measurement_keys: [], native: [], metadata_keys: [], events: []}

      state =
        text
        |> String.split("\n")
        |> Enum.with_index(1)
        |> Enum.reduce(initial, fn {raw, line}, state ->
          case raw |> strip_comment() |> String.trim() do
            "" -> state
            content -> parse_line(content, state, path, line)
          end
        end)

      result = %{
        measurement_keys: Enum.reverse(state.measurement_keys),
        native_time_keys: Enum.reverse(state.native),
        metadata_keys: Enum.reverse(state.metadata_keys),
        events: Enum.reverse(state.events)
      }

      for section <- [:measurement_keys, :metadata_keys, :events], result[section] == [] do
        fail!(path, 1, "section [#{section}] is missing or empty")
      end

      result
    end

    defp strip_comment(raw) do
      case String.split(raw, "#", parts: 2) do
        [content, _comment] -> content
        [content] -> content
      end
    end

    defp parse_line("[" <> _ = header, state, path, line) do
      name = header |> String.trim_leading("[") |> String.trim_trailing("]")

      case {String.ends_with?(header, "]"), @sections[name]} do
        {true, section} when section != nil ->
          %{state | section: section}

        _ ->
          fail!(path, line, "unknown section #{header}; expected one of " <> section_list())
      end
    end

    defp parse_line(content, %{section: nil}, path, line) do
      fail!(path, line, "#{inspect(content)} is outside any section; expected " <> section_list())
    end

    defp parse_line(content, %{section: :measurement_keys} = state, path, line) do
      {key, native?} =
        case String.split(content) do
          [key] -> {key, false}
          [key, "native"] -> {key, true}
          _ -> fail!(path, line, "expected `key` or `key native`, got #{inspect(content)}")
        end

      key = check_key!(key, state.measurement_keys, "measurement key", path, line)
      native = if native?, do: [key | state.native], else: state.native
      %{state | measurement_keys: [key | state.measurement_keys], native: native}
    end

    defp parse_line(content, %{section: :metadata_keys} = state, path, line) do
      case String.split(content) do
        [key] ->
          key = check_key!(key, state.metadata_keys, "metadata key", path, line)
          %{state | metadata_keys: [key | state.metadata_keys]}

        _ ->
          fail!(path, line, "expected one metadata key, got #{inspect(content)}")
      end
    end

    defp parse_line(content, %{section: :events} = state, path, line) do
      fields = content |> String.split("|") |> Enum.map(&String.trim/1)

      case fields do
        [event, worker, measurements, metadata] ->
          event = parse_event!(event, state, path, line)
          worker_name = parse_worker!(worker, state, path, line)

          measurements =
            parse_list!(measurements, state.measurement_keys, "measurement", path, line)

          metadata = parse_list!(metadata, state.metadata_keys, "metadata", path, line)

          entry = %{
            event: event,
            worker_name: worker_name,
            measurements: measurements,
            metadata: metadata
          }

          %{state | events: [entry | state.events]}

        _ ->
          fail!(
            path,
            line,
            "expected `event | from worker | measurements | metadata` (4 fields), " <>
              "got #{length(fields)} in #{inspect(content)}"
          )
      end
    end

    defp check_key!(key, seen, what, path, line) do
      unless Regex.match?(@key, key) do
        fail!(path, line, "invalid #{what} #{inspect(key)}; expected [a-z][a-z0-9_]*")
      end

      # Compile time only: these atoms come from the catalog file.
      atom = String.to_atom(key)

      if atom in seen do
        fail!(path, line, "duplicate #{what} #{inspect(key)}")
      end

      atom
    end

    defp parse_event!(event, state, path, line) do
      unless Regex.match?(@dotted, event) do
        fail!(path, line, "invalid event name #{inspect(event)}; expected dotted [a-z0-9_] parts")
      end

      parts = event |> String.split(".") |> Enum.map(&String.to_atom/1)

      if Enum.any?(state.events, &(&1.event == parts)) do
        fail!(path, line, "duplicate event #{inspect(event)}")
      end

      parts
    end

    defp parse_worker!("-", _state, _path, _line), do: nil

    defp parse_worker!(worker, state, path, line) do
      unless Regex.match?(@dotted, worker) do
        fail!(
          path,
          line,
          "invalid worker event name #{inspect(worker)}; expected dotted [a-z0-9_] parts or -"
        )
      end

      if Enum.any?(state.events, &(&1.worker_name == worker)) do
        fail!(path, line, "duplicate worker event name #{inspect(worker)}")
      end

      worker
    end

    defp parse_list!("-", _known, _what, _path, _line), do: []

    defp parse_list!(list, known, what, path, line) do
      keys = list |> String.split(",") |> Enum.map(&String.trim/1)

      Enum.map(keys, fn key ->
        atom = if Regex.match?(@key, key), do: String.to_atom(key)

        unless atom in known do
          fail!(
            path,
            line,
            "#{what} key #{inspect(key)} is not declared in [#{what}_keys]"
          )
        end

        if Enum.count(keys, &(&1 == key)) > 1 do
          fail!(path, line, "#{what} key #{inspect(key)} is listed twice")
        end

        atom
      end)
    end

    defp section_list, do: "[measurement_keys], [metadata_keys], [events]"

    defp fail!(path, line, message) do
      raise CompileError,
        file: path,
        line: line,
        description: "malformed telemetry catalog, line #{line}: #{message}"
    end
  end

  @catalog Parser.parse!(@path, File.read!(@path))

  @doc """
  Every catalog event, in file order.

      iex> length(Snakepit.Telemetry.Catalog.events()) > 0
      true
      iex> hd(Snakepit.Telemetry.Catalog.events())
      %{
        event: [:snakepit, :pool, :initialized],
        worker_name: nil,
        measurements: [:duration, :worker_count],
        metadata: [:node, :pool_name]
      }
  """
  @spec events() :: [event()]
  def events, do: @catalog.events

  @worker_events Enum.filter(@catalog.events, & &1.worker_name)

  @doc """
  The events a Python worker may send (those with a worker name), in file order.

      iex> Enum.all?(Snakepit.Telemetry.Catalog.worker_events(), &is_binary(&1.worker_name))
      true
  """
  @spec worker_events() :: [event()]
  def worker_events, do: @worker_events

  @doc """
  The allowlisted measurement keys, in file order.

      iex> :duration in Snakepit.Telemetry.Catalog.measurement_keys()
      true
  """
  @spec measurement_keys() :: [atom()]
  def measurement_keys, do: @catalog.measurement_keys

  @doc """
  The measurement keys whose unit is `native`: workers send nanoseconds, which
  are delivered in `:native` time units.

      iex> Snakepit.Telemetry.Catalog.native_time_keys()
      [:duration, :system_time]
  """
  @spec native_time_keys() :: [atom()]
  def native_time_keys, do: @catalog.native_time_keys

  @doc """
  The allowlisted metadata keys (those that become atoms), in file order.

      iex> :worker_id in Snakepit.Telemetry.Catalog.metadata_keys()
      true
  """
  @spec metadata_keys() :: [atom()]
  def metadata_keys, do: @catalog.metadata_keys

  @doc """
  The path of the catalog file this module was compiled from.
  """
  @spec path() :: Path.t()
  def path, do: @path

  @doc """
  The catalog as the NIF takes it at start: the allowlists and every event a
  worker may send, the catalog's followed by `app_events` (the config's
  `events`, already validated by `Snakepit.Telemetry.Config`).

      iex> spec = Snakepit.Telemetry.Catalog.native_spec([])
      iex> {"python.cpu.sampled", [:snakepit, :python, :cpu, :sampled], [:cpu_percent]} in spec.events
      true
      iex> {:duration, true} in spec.measurement_keys
      true
  """
  @spec native_spec([%{name: String.t(), event: [atom()], measurements: [atom()]}]) :: %{
          measurement_keys: [{atom(), boolean()}],
          metadata_keys: [atom()],
          events: [{String.t(), [atom()], [atom()]}]
        }
  def native_spec(app_events) do
    %{
      measurement_keys: Enum.map(measurement_keys(), &{&1, &1 in native_time_keys()}),
      metadata_keys: metadata_keys(),
      events:
        Enum.map(worker_events(), &{&1.worker_name, &1.event, &1.measurements}) ++
          Enum.map(app_events, &{&1.name, &1.event, &1.measurements})
    }
  end

  @doc """
  The catalog as the Markdown table of the README: one row per event with its worker
  name, measurements and metadata. A test keeps the README equal to it.

      iex> table = Snakepit.Telemetry.Catalog.markdown_table()
      iex> String.starts_with?(table, "| Event | Sent by a worker as | Measurements | Metadata |")
      true
  """
  @spec markdown_table() :: String.t()
  def markdown_table do
    header = [
      "| Event | Sent by a worker as | Measurements | Metadata |",
      "|---|---|---|---|"
    ]

    rows =
      for e <- events() do
        worker = if e.worker_name, do: "`#{e.worker_name}`", else: "-"
        name = "`" <> inspect(e.event) <> "`"
        "| #{name} | #{worker} | #{keys(e.measurements)} | #{keys(e.metadata)} |"
      end

    Enum.join(header ++ rows, "\n") <> "\n"
  end

  defp keys([]), do: "-"
  defp keys(keys), do: Enum.map_join(keys, ", ", &inspect/1)
end
