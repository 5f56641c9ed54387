defmodule Snakepit.Telemetry.SafeMetadata do
  @moduledoc """
  Makes metadata and measurements from outside the VM (Python workers) safe to
  hand to `:telemetry` handlers, without ever creating atoms. It offers the
  functions of Snakepit v0.13's `Snakepit.Telemetry.SafeMetadata`, with the same
  arities and return shapes:

    * `sanitize/1`: metadata keys on the allowlist become (or stay) atoms;
      every other key is a binary. Values are kept as they are.
    * `merge/2`: sanitizes two maps and merges them, the second winning.
    * `enrich/2`: sanitizes worker metadata and merges the Elixir context over it.
    * `measurements/1`: checks measurement keys against the allowlist and values
      are numbers.
    * `allowed_atom_keys/0`: the metadata allowlist.

  Where Snakepit raises on bad input (a `FunctionClauseError` for a non-map, a
  `Protocol.UndefinedError` for a tuple key), these return `{:error, reason}` or a
  safe key instead; each function's doc says how.

  The allowlists are `Snakepit.Telemetry.Catalog.metadata_keys/0` and
  `Snakepit.Telemetry.Catalog.measurement_keys/0`, whose atoms exist since
  compile time.

      iex> Snakepit.Telemetry.SafeMetadata.sanitize(%{"worker_id" => "w1", "custom" => 1})
      {:ok, %{:worker_id => "w1", "custom" => 1}}
  """

  alias Snakepit.Telemetry.Catalog

  @metadata_keys Map.new(Catalog.metadata_keys(), &{Atom.to_string(&1), &1})
  @metadata_atoms Map.new(Catalog.metadata_keys(), &{&1, true})
  @measurement_keys Map.new(Catalog.measurement_keys(), &{Atom.to_string(&1), &1})
  @measurement_atoms Map.new(Catalog.measurement_keys(), &{&1, true})

  @typedoc "Sanitized metadata: allowlisted keys are atoms, all others binaries."
  @type metadata :: %{optional(atom() | String.t()) => term()}

  @doc """
  Returns `{:ok, metadata}` with safe keys; values are unchanged.

    * an allowlisted atom key stays;
    * an allowlisted binary key becomes its (existing) atom;
    * any other atom becomes its name as a binary, any other binary stays, and
      any other term becomes its `inspect/1` text (Snakepit calls `to_string/1`,
      which gives the same text for numbers and raises for tuples, maps or pids).

  Never creates atoms. When two keys end up the same (`:worker_id` and
  `"worker_id"`), the value of the key that already was an atom wins (in Snakepit,
  whichever the map enumerates last).

  Anything but a map is `{:error, {:invalid_metadata, term}}` (Snakepit raises
  `FunctionClauseError`).

      iex> alias Snakepit.Telemetry.SafeMetadata
      iex> SafeMetadata.sanitize(%{"node" => "test@host", "unknown" => "value"})
      {:ok, %{:node => "test@host", "unknown" => "value"}}
      iex> SafeMetadata.sanitize(%{:not_allowlisted => 1, "zzz_unknown_key" => 2, 3 => 4})
      {:ok, %{"not_allowlisted" => 1, "zzz_unknown_key" => 2, "3" => 4}}
      iex> SafeMetadata.sanitize(%{"worker_id" => "from string", :worker_id => "from atom"})
      {:ok, %{worker_id: "from atom"}}
      iex> SafeMetadata.sanitize([worker_id: "w1"])
      {:error, {:invalid_metadata, [worker_id: "w1"]}}
  """
  @spec sanitize(map()) :: {:ok, metadata()} | {:error, {:invalid_metadata, term()}}
  def sanitize(metadata) when is_map(metadata) do
    # Non-atom keys first, so that atom keys (already safe) win a collision.
    {atoms, others} = metadata |> Map.to_list() |> Enum.split_with(fn {k, _} -> is_atom(k) end)
    {:ok, Map.new(others ++ atoms, fn {key, value} -> {safe_key(key), value} end)}
  end

  def sanitize(other), do: {:error, {:invalid_metadata, other}}

  defp safe_key(key) when is_atom(key) do
    case @metadata_atoms do
      %{^key => true} -> key
      _ -> Atom.to_string(key)
    end
  end

  defp safe_key(key) when is_binary(key) do
    case @metadata_keys do
      %{^key => atom} -> atom
      _ -> key
    end
  end

  defp safe_key(key), do: inspect(key)

  @doc """
  Sanitizes both maps (see `sanitize/1`) and merges them; on a key in both, the
  value of `metadata2` wins. Returns `{:ok, merged}`.

  Anything but two maps is `{:error, {:invalid_metadata, term}}`, naming the first
  argument that is not a map (Snakepit raises `FunctionClauseError`).

      iex> alias Snakepit.Telemetry.SafeMetadata
      iex> SafeMetadata.merge(%{"tool" => "predict"}, %{node: :nonode@nohost})
      {:ok, %{:tool => "predict", :node => :nonode@nohost}}
      iex> SafeMetadata.merge(%{"custom" => 1, "worker_id" => "a"}, %{worker_id: "b"})
      {:ok, %{"custom" => 1, :worker_id => "b"}}
      iex> SafeMetadata.merge(%{}, nil)
      {:error, {:invalid_metadata, nil}}
  """
  @spec merge(map(), map()) :: {:ok, metadata()} | {:error, {:invalid_metadata, term()}}
  def merge(metadata1, metadata2) do
    with {:ok, safe1} <- sanitize(metadata1),
         {:ok, safe2} <- sanitize(metadata2) do
      {:ok, Map.merge(safe1, safe2)}
    end
  end

  @doc """
  Enriches worker metadata with the Elixir context (a keyword list, as in Snakepit,
  or a map), e.g. the worker's `node`, `worker_id`, `pool_name` and `python_pid`.
  Both are sanitized (see `sanitize/1`); **the context wins** on a key in both, so a
  worker cannot report under another worker's identity. Nothing is added that the
  context does not hold (pass `node: node()` for the node). Returns `{:ok, metadata}`.

  A `metadata` that is not a map is `{:error, {:invalid_metadata, term}}`; a context
  that is neither a map nor a list of `{key, value}` pairs is
  `{:error, {:invalid_context, term}}` (Snakepit raises `FunctionClauseError` or
  `ArgumentError`).

      iex> alias Snakepit.Telemetry.SafeMetadata
      iex> SafeMetadata.enrich(%{"tool" => "predict"}, node: :nonode@nohost, worker_id: "worker_1")
      {:ok, %{tool: "predict", node: :nonode@nohost, worker_id: "worker_1"}}
      iex> SafeMetadata.enrich(%{"worker_id" => "spoofed", "command" => "x"}, worker_id: "w1")
      {:ok, %{worker_id: "w1", command: "x"}}
      iex> SafeMetadata.enrich(%{}, [:not_a_pair])
      {:error, {:invalid_context, [:not_a_pair]}}
  """
  @spec enrich(map(), keyword() | map()) ::
          {:ok, metadata()}
          | {:error, {:invalid_metadata, term()} | {:invalid_context, term()}}
  def enrich(metadata, context) when is_map(metadata) and is_map(context) do
    merge(metadata, context)
  end

  def enrich(metadata, context) when is_map(metadata) and is_list(context) do
    if Enum.all?(context, &match?({_, _}, &1)),
      do: merge(metadata, Map.new(context)),
      else: {:error, {:invalid_context, context}}
  end

  def enrich(metadata, context) when is_map(metadata), do: {:error, {:invalid_context, context}}
  def enrich(metadata, _context), do: {:error, {:invalid_metadata, metadata}}

  @doc """
  Checks a measurements map: every key must be an allowlisted measurement key
  (atom or binary) and every value a number. Returns `{:ok, measurements}` with
  atom keys.

  Errors, for the first bad entry found:

    * a key not on the allowlist (or neither a binary nor an atom):
      `{:error, {:invalid_measurement_key, key, :unknown_measurement_key}}`, Snakepit's
      shape (Snakepit gives `:invalid_atom` as the reason for a binary that is not an
      existing atom, and raises `FunctionClauseError` for other terms);
    * a value that is not a number: `{:error, {:invalid_measurement_value, key, value}}`
      (Snakepit passes it on, and the handlers' arithmetic fails);
    * anything but a map: `{:error, {:invalid_measurements, term}}` (Snakepit raises
      `FunctionClauseError`).

      iex> alias Snakepit.Telemetry.SafeMetadata
      iex> SafeMetadata.measurements(%{"duration" => 1000})
      {:ok, %{duration: 1000}}
      iex> SafeMetadata.measurements(%{"weird_key" => 1})
      {:error, {:invalid_measurement_key, "weird_key", :unknown_measurement_key}}
      iex> SafeMetadata.measurements(%{duration: "slow"})
      {:error, {:invalid_measurement_value, :duration, "slow"}}
  """
  @spec measurements(map()) ::
          {:ok, %{optional(atom()) => number()}}
          | {:error,
             {:invalid_measurement_key, term(), :unknown_measurement_key}
             | {:invalid_measurement_value, atom() | String.t(), term()}
             | {:invalid_measurements, term()}}
  def measurements(measurements) when is_map(measurements) do
    Enum.reduce_while(measurements, {:ok, %{}}, fn {key, value}, {:ok, acc} ->
      case measurement_key(key) do
        {:ok, atom} when is_number(value) ->
          {:cont, {:ok, Map.put(acc, atom, value)}}

        {:ok, _atom} ->
          {:halt, {:error, {:invalid_measurement_value, key, value}}}

        :error ->
          {:halt, {:error, {:invalid_measurement_key, key, :unknown_measurement_key}}}
      end
    end)
  end

  def measurements(other), do: {:error, {:invalid_measurements, other}}

  defp measurement_key(key) when is_binary(key) do
    case @measurement_keys do
      %{^key => atom} -> {:ok, atom}
      _ -> :error
    end
  end

  defp measurement_key(key) when is_atom(key) do
    case @measurement_atoms do
      %{^key => true} -> {:ok, key}
      _ -> :error
    end
  end

  defp measurement_key(_key), do: :error

  @doc """
  The metadata keys that `sanitize/1` turns into atoms, in catalog order: the same
  list as Snakepit v0.13's `allowed_atom_keys/0`
  (`Snakepit.Telemetry.Catalog.metadata_keys/0`).

      iex> keys = Snakepit.Telemetry.SafeMetadata.allowed_atom_keys()
      iex> {hd(keys), :correlation_id in keys, :retry in keys}
      {:node, true, true}
  """
  @spec allowed_atom_keys() :: [atom()]
  def allowed_atom_keys, do: Catalog.metadata_keys()
end
