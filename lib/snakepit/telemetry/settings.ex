defmodule Snakepit.Telemetry.Settings do
  @moduledoc """
  A worker's telemetry settings: the value `Snakepit.Telemetry.GrpcStream` keeps per
  worker (inside the NIF, so it survives any process crash) and changes with the control
  calls. It mirrors `settings.rs` (Rust) and `policy.py` (Python) field for field:

    * `:enabled` - `false` removes every event;
    * `:sampling_rate` - the fraction of events kept that no sampling rule matches;
    * `:sampling_rules` - pattern-scoped rates, `%{patterns: [pattern], rate: float}`,
      oldest first; the latest rule matching an event wins;
    * `:allow`, `:deny` - patterns; deny wins, an empty allow list allows all.

  The config's `excluded_events` are not part of the value: the NIF denies them on top of
  every worker's `:deny`. Patterns are as in `Snakepit.Telemetry.Control`.

      iex> alias Snakepit.Telemetry.{Config, Settings}
      iex> settings = Settings.new(Config.load!([]))
      iex> {:ok, settings} = Settings.change(settings, {:sampling, 0.1, ["python.*"]}, 64)
      iex> settings.sampling_rules
      [%{patterns: ["python.*"], rate: 0.1}]
  """

  alias Snakepit.Telemetry.{Config, Control}

  @enforce_keys [:enabled, :sampling_rate]
  defstruct enabled: true, sampling_rate: 1.0, sampling_rules: [], allow: [], deny: []

  @type rule :: %{patterns: [Control.pattern()], rate: float()}
  @type t :: %__MODULE__{
          enabled: boolean(),
          sampling_rate: float(),
          sampling_rules: [rule()],
          allow: [Control.pattern()],
          deny: [Control.pattern()]
        }

  @doc """
  The settings a newly registered worker starts with: the config's `enabled` and
  `sampling_rate`, no rules, no filter.
  """
  @spec new(Config.t()) :: t()
  def new(%Config{} = config) do
    %__MODULE__{enabled: config.enabled, sampling_rate: config.sampling_rate}
  end

  @doc """
  Applies a control message (from `Snakepit.Telemetry.Control`). Fails, changing nothing,
  when the result would hold more than `max_patterns` patterns.

  A pattern-less sampling rate replaces every rule; a rate with patterns replaces the rule
  with the same pattern set, or is added as the newest.

      iex> alias Snakepit.Telemetry.Settings
      iex> settings = %Settings{enabled: true, sampling_rate: 1.0}
      iex> Settings.change(settings, {:filter, ["a.*", "b.*"], ["c"]}, 2)
      {:error, {:too_many_patterns, 2}}
      iex> {:ok, settings} = Settings.change(settings, {:toggle, false}, 2)
      iex> settings.enabled
      false
  """
  @spec change(t(), Control.message(), pos_integer()) :: {:ok, t()} | {:error, term()}
  def change(%__MODULE__{} = settings, message, max_patterns) do
    changed = apply_message(settings, message)

    if pattern_count(changed) > max_patterns,
      do: {:error, {:too_many_patterns, max_patterns}},
      else: {:ok, changed}
  end

  defp apply_message(settings, {:toggle, enabled}), do: %{settings | enabled: enabled}

  defp apply_message(settings, {:sampling, rate, []}),
    do: %{settings | sampling_rate: rate, sampling_rules: []}

  defp apply_message(settings, {:sampling, rate, patterns}) do
    patterns = patterns |> Enum.uniq() |> Enum.sort()
    kept = Enum.reject(settings.sampling_rules, &(&1.patterns == patterns))
    %{settings | sampling_rules: kept ++ [%{patterns: patterns, rate: rate}]}
  end

  defp apply_message(settings, {:filter, allow, deny}),
    do: %{settings | allow: Enum.uniq(allow), deny: Enum.uniq(deny)}

  @doc """
  How many patterns the settings hold: allow, deny and every rule's.

      iex> Snakepit.Telemetry.Settings.pattern_count(%Snakepit.Telemetry.Settings{
      ...>   enabled: true, sampling_rate: 1.0, allow: ["a"], deny: ["b"],
      ...>   sampling_rules: [%{patterns: ["c", "d"], rate: 0.5}]})
      4
  """
  @spec pattern_count(t()) :: non_neg_integer()
  def pattern_count(%__MODULE__{} = settings) do
    length(settings.allow) + length(settings.deny) +
      Enum.reduce(settings.sampling_rules, 0, &(length(&1.patterns) + &2))
  end

  @doc false
  # The term the NIF reads (`decode::settings`).
  @spec to_native(t()) :: map()
  def to_native(%__MODULE__{} = settings) do
    %{
      enabled: settings.enabled,
      sampling_rate: settings.sampling_rate,
      sampling_rules: Enum.map(settings.sampling_rules, &{&1.patterns, &1.rate}),
      allow: settings.allow,
      deny: settings.deny
    }
  end

  @doc false
  # The term the NIF reports (`terms::settings_term`), back to the struct.
  @spec from_native(map()) :: t()
  def from_native(%{sampling_rules: rules} = native) do
    %__MODULE__{
      enabled: native.enabled,
      sampling_rate: native.sampling_rate,
      sampling_rules:
        Enum.map(rules, fn {patterns, rate} -> %{patterns: patterns, rate: rate} end),
      allow: native.allow,
      deny: native.deny
    }
  end

  @doc """
  The settings as `Snakepit.Telemetry.GrpcStream.list_streams/0` shows them: a map with
  the fields above.
  """
  @spec to_map(t()) :: map()
  def to_map(%__MODULE__{} = settings), do: Map.from_struct(settings)
end
