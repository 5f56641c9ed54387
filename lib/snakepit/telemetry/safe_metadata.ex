defmodule Snakepit.Telemetry.SafeMetadata do
  @moduledoc """
  Makes metadata and measurements from outside the VM (Python workers) safe to
  hand to `:telemetry` handlers, without ever creating atoms.

    * `sanitize/1`: metadata keys on the catalog's allowlist become (or stay)
      atoms; every other key is a binary. Values are kept as they are.
    * `enrich/2`: adds `:node` and the registration context of the worker.
    * `measurements/1`: checks measurement keys against the catalog allowlist
      and values are numbers.

  The allowlists are `Snakepit.Telemetry.Catalog.metadata_keys/0` and
  `Snakepit.Telemetry.Catalog.measurement_keys/0`, whose atoms exist since
  compile time.

      iex> Snakepit.Telemetry.SafeMetadata.sanitize(%{"worker_id" => "w1", "custom" => 1})
      %{:worker_id => "w1", "custom" => 1}
  """

  alias Snakepit.Telemetry.Catalog

  @metadata_keys Map.new(Catalog.metadata_keys(), &{Atom.to_string(&1), &1})
  @metadata_atoms Map.new(Catalog.metadata_keys(), &{&1, true})
  @measurement_keys Map.new(Catalog.measurement_keys(), &{Atom.to_string(&1), &1})
  @measurement_atoms Map.new(Catalog.measurement_keys(), &{&1, true})

  @doc """
  Returns `metadata` with safe keys; values are unchanged.

    * an allowlisted atom key stays;
    * an allowlisted binary key becomes its (existing) atom;
    * any other atom becomes its name as a binary, any other binary stays, and
      any other term becomes its `inspect/1` text.

  Never creates atoms. When two keys end up the same (`:worker_id` and
  `"worker_id"`), the value of the key that already was an atom wins.

      iex> alias Snakepit.Telemetry.SafeMetadata
      iex> SafeMetadata.sanitize(%{"session_id" => "s", :pool_name => :default})
      %{session_id: "s", pool_name: :default}
      iex> SafeMetadata.sanitize(%{:not_allowlisted => 1, "zzz_unknown_key" => 2, 3 => 4})
      %{"not_allowlisted" => 1, "zzz_unknown_key" => 2, "3" => 4}
      iex> SafeMetadata.sanitize(%{"worker_id" => "from string", :worker_id => "from atom"})
      %{worker_id: "from atom"}
  """
  @spec sanitize(map()) :: %{optional(atom() | String.t()) => term()}
  def sanitize(metadata) when is_map(metadata) do
    # Non-atom keys first, so that atom keys (already safe) win a collision.
    {atoms, others} = metadata |> Map.to_list() |> Enum.split_with(fn {k, _} -> is_atom(k) end)
    Map.new(others ++ atoms, fn {key, value} -> {safe_key(key), value} end)
  end

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
  Adds `node: node()` and the `context` (a map or keyword list, e.g. the
  worker's `worker_id`, `pool_name` and `python_pid`) to `metadata`.

  Precedence: **the context wins** over `metadata`, and an explicit `:node` in
  the context wins over `node()`. The context is what Elixir knows about the
  worker from its registration, so a worker cannot report under another
  worker's identity. `metadata` is expected to be sanitized already; the
  context's keys are used as given.

      iex> alias Snakepit.Telemetry.SafeMetadata
      iex> meta = SafeMetadata.enrich(%{worker_id: "spoofed", command: "predict"}, worker_id: "w1", pool_name: :default)
      iex> {meta.worker_id, meta.pool_name, meta.command, meta.node == node()}
      {"w1", :default, "predict", true}
  """
  @spec enrich(map(), map() | keyword()) :: map()
  def enrich(metadata, context \\ %{})

  def enrich(metadata, context) when is_map(metadata) and is_map(context) do
    metadata
    |> Map.put(:node, node())
    |> Map.merge(context)
  end

  def enrich(metadata, context) when is_map(metadata) and is_list(context) do
    enrich(metadata, Map.new(context))
  end

  @doc """
  Checks a measurements map: every key must be an allowlisted measurement key
  (atom or binary) and every value a number. Returns the map with atom keys.

      iex> alias Snakepit.Telemetry.SafeMetadata
      iex> SafeMetadata.measurements(%{"duration" => 1200, :count => 1})
      {:ok, %{duration: 1200, count: 1}}
      iex> SafeMetadata.measurements(%{"weird_key" => 1})
      {:error, {:invalid_measurement, "weird_key"}}
      iex> SafeMetadata.measurements(%{duration: "slow"})
      {:error, {:invalid_measurement, :duration}}
  """
  @spec measurements(map()) ::
          {:ok, %{optional(atom()) => number()}} | {:error, {:invalid_measurement, term()}}
  def measurements(measurements) when is_map(measurements) do
    Enum.reduce_while(measurements, {:ok, %{}}, fn {key, value}, {:ok, acc} ->
      case measurement_key(key) do
        {:ok, atom} when is_number(value) -> {:cont, {:ok, Map.put(acc, atom, value)}}
        _ -> {:halt, {:error, {:invalid_measurement, key}}}
      end
    end)
  end

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
end
