defmodule Snakepit.Telemetry.Control do
  @moduledoc """
  Builds the control messages sent to Python workers over the telemetry
  stream. These are the Elixir forms that the NIF turns into the protobuf
  `TelemetryControl` message:

    * `{:toggle, enabled}` → `TelemetryToggle`
    * `{:sampling, rate, patterns}` → `TelemetrySamplingUpdate`
    * `{:filter, allow, deny}` → `TelemetryEventFilter`

  It has the functions and arities of Snakepit v0.13's `Snakepit.Telemetry.Control`
  (`toggle/1`, `sampling/1,2`, `filter/0,1`). Snakepit returns the generated protobuf
  struct `%Snakepit.Bridge.TelemetryControl{}` and raises `FunctionClauseError` on a
  bad argument; here there is no generated Elixir protobuf code (the NIF encodes the
  message), and a bad argument is an error value, so each returns `{:ok, message}` or
  `{:error, reason}`. `Snakepit.Telemetry.GrpcStream`'s `toggle`, `update_sampling`
  and `update_filter` build and send them for you.

  ## Event patterns

  Patterns select worker events by their dotted worker name (such as
  `"python.call.start"`):

    * a valid pattern is a non-empty binary of at most 256 bytes made only of
      `A-Z a-z 0-9 _ . * ? -`;
    * `*` matches any run of characters, dots included (`"python.*"` matches
      `"python.call.start"`), possibly empty;
    * `?` matches exactly one character;
    * every other character matches itself; the whole name must match.

  The NIF and the Python worker enforce them (each on its side of the stream);
  both are tested against one shared table, `test/fixtures/pattern_cases.txt`,
  whose validity column this module's tests check too.

      iex> Snakepit.Telemetry.Control.sampling(0.25, ["python.call.*"])
      {:ok, {:sampling, 0.25, ["python.call.*"]}}
  """

  @max_pattern_bytes 256

  @typedoc "A glob over dotted worker event names; see the module doc."
  @type pattern :: String.t()
  @typedoc "A control message, as handed to the NIF."
  @type message ::
          {:toggle, boolean()}
          | {:sampling, float(), [pattern()]}
          | {:filter, [pattern()], [pattern()]}
  @type error ::
          {:invalid_rate, term()} | {:invalid_pattern, term()} | {:invalid_option, term()}

  @doc """
  Turns telemetry on or off in the worker.

  Returns `{:error, {:invalid_option, value}}` unless `enabled` is a boolean.

      iex> Snakepit.Telemetry.Control.toggle(false)
      {:ok, {:toggle, false}}
      iex> Snakepit.Telemetry.Control.toggle("yes")
      {:error, {:invalid_option, "yes"}}
  """
  @spec toggle(boolean()) :: {:ok, message()} | {:error, error()}
  def toggle(enabled) when is_boolean(enabled), do: {:ok, {:toggle, enabled}}
  def toggle(other), do: {:error, {:invalid_option, other}}

  @doc """
  Sets the worker's sampling rate (a number from 0.0 to 1.0, returned as a
  float) for the events matching `patterns`; no patterns means every event.

      iex> Snakepit.Telemetry.Control.sampling(1)
      {:ok, {:sampling, 1.0, []}}
      iex> Snakepit.Telemetry.Control.sampling(1.5)
      {:error, {:invalid_rate, 1.5}}
      iex> Snakepit.Telemetry.Control.sampling(0.5, ["python.*", "bad pattern"])
      {:error, {:invalid_pattern, "bad pattern"}}
  """
  @spec sampling(number(), [pattern()]) :: {:ok, message()} | {:error, error()}
  def sampling(rate, patterns \\ []) do
    with {:ok, rate} <- check_rate(rate),
         {:ok, patterns} <- check_patterns(patterns) do
      {:ok, {:sampling, rate, patterns}}
    end
  end

  @doc """
  Sets the worker's event filter. `opts` (a keyword list, default `[]` as in
  Snakepit's `filter/0`) takes `:allow` and `:deny`, each a list of patterns
  (default `[]`). An event is sent when it matches an allow pattern (or `allow` is
  empty) and no deny pattern; `filter()` lets every event through.

  An unknown option is `{:error, {:invalid_option, key}}` (Snakepit ignores it, so
  a misspelt `:denny` silently filters nothing).

      iex> Snakepit.Telemetry.Control.filter()
      {:ok, {:filter, [], []}}
      iex> Snakepit.Telemetry.Control.filter(allow: ["python.*"], deny: ["python.gc.*"])
      {:ok, {:filter, ["python.*"], ["python.gc.*"]}}
      iex> Snakepit.Telemetry.Control.filter(deny: ["tool.result_size"])
      {:ok, {:filter, [], ["tool.result_size"]}}
      iex> Snakepit.Telemetry.Control.filter(allow: ["*"], block: ["x"])
      {:error, {:invalid_option, :block}}
  """
  @spec filter(keyword()) :: {:ok, message()} | {:error, error()}
  def filter(opts \\ [])

  def filter(opts) when is_list(opts) do
    with :ok <- check_options(opts),
         {:ok, allow} <- check_patterns(Keyword.get(opts, :allow, [])),
         {:ok, deny} <- check_patterns(Keyword.get(opts, :deny, [])) do
      {:ok, {:filter, allow, deny}}
    end
  end

  def filter(other), do: {:error, {:invalid_option, other}}

  @doc """
  Tells whether `pattern` is a valid event pattern (see the module doc).

      iex> Snakepit.Telemetry.Control.valid_pattern?("python.call.*")
      true
      iex> Snakepit.Telemetry.Control.valid_pattern?("")
      false
      iex> Snakepit.Telemetry.Control.valid_pattern?("python call")
      false
      iex> Snakepit.Telemetry.Control.valid_pattern?(:python)
      false
  """
  @spec valid_pattern?(term()) :: boolean()
  def valid_pattern?(pattern)
      when is_binary(pattern) and byte_size(pattern) in 1..@max_pattern_bytes do
    valid_chars?(pattern)
  end

  def valid_pattern?(_pattern), do: false

  defp valid_chars?(<<c, rest::binary>>)
       when c in ?a..?z or c in ?A..?Z or c in ?0..?9 or c in [?_, ?., ?*, ??, ?-],
       do: valid_chars?(rest)

  defp valid_chars?(<<>>), do: true
  defp valid_chars?(_), do: false

  defp check_rate(rate) when is_number(rate) and rate >= 0 and rate <= 1, do: {:ok, rate / 1}
  defp check_rate(rate), do: {:error, {:invalid_rate, rate}}

  defp check_patterns(patterns) when is_list(patterns) do
    case Enum.find(patterns, &(not valid_pattern?(&1))) do
      nil -> {:ok, patterns}
      bad -> {:error, {:invalid_pattern, bad}}
    end
  end

  defp check_patterns(other), do: {:error, {:invalid_pattern, other}}

  defp check_options(opts) do
    case Enum.find(opts, &(not match?({key, _} when key in [:allow, :deny], &1))) do
      nil -> :ok
      {key, _value} -> {:error, {:invalid_option, key}}
      other -> {:error, {:invalid_option, other}}
    end
  end
end
