defmodule Snakepit.Telemetry.SafeMetadataTest do
  # async: false: the atom-count checks must not see atoms from other tests.
  use ExUnit.Case, async: false

  alias Snakepit.Telemetry.{Catalog, SafeMetadata}

  doctest SafeMetadata

  describe "sanitize/1" do
    test "allowlisted keys become atoms, others binaries, values untouched" do
      pid = self()

      assert SafeMetadata.sanitize(%{
               "worker_id" => "w1",
               :pool_name => :default,
               "python_pid" => 123,
               "my_custom" => %{nested: true},
               :some_atom_key => pid,
               {:tuple, :key} => 1
             }) == %{
               :worker_id => "w1",
               :pool_name => :default,
               :python_pid => 123,
               "my_custom" => %{nested: true},
               "some_atom_key" => pid,
               "{:tuple, :key}" => 1
             }
    end

    test "every allowlisted metadata key is recognised as a binary" do
      map = Map.new(Catalog.metadata_keys(), &{Atom.to_string(&1), &1})
      assert SafeMetadata.sanitize(map) == Map.new(Catalog.metadata_keys(), &{&1, &1})
    end

    test "atom keys win a collision" do
      assert SafeMetadata.sanitize(%{"node" => "str", :node => :atom}) == %{node: :atom}
      assert SafeMetadata.sanitize(%{"custom" => 1, :custom => 2}) == %{"custom" => 2}
    end

    test "1000 random keys create no atom" do
      keys =
        for _ <- 1..1000 do
          bytes = :crypto.strong_rand_bytes(:rand.uniform(24))
          Enum.random([Base.encode32(bytes, case: :lower, padding: false), bytes])
        end

      map = Map.new(keys, &{&1, 1})
      before = :erlang.system_info(:atom_count)
      sanitized = SafeMetadata.sanitize(map)
      assert :erlang.system_info(:atom_count) == before
      assert Enum.all?(Map.keys(sanitized), &(is_binary(&1) or &1 in Catalog.metadata_keys()))
      assert map_size(sanitized) == map_size(map)
    end
  end

  describe "enrich/2" do
    test "adds node and the context; the context wins" do
      meta =
        SafeMetadata.enrich(%{worker_id: "fake", node: :elsewhere, command: "x"},
          worker_id: "w1",
          pool_name: :default,
          python_pid: 42
        )

      assert meta == %{
               worker_id: "w1",
               pool_name: :default,
               python_pid: 42,
               command: "x",
               node: node()
             }
    end

    test "an explicit node in the context wins over node()" do
      assert SafeMetadata.enrich(%{}, %{node: :other@host}) == %{node: :other@host}
      assert SafeMetadata.enrich(%{}) == %{node: node()}
    end
  end

  describe "measurements/1" do
    test "accepts allowlisted keys with numbers, atom or binary keys" do
      assert SafeMetadata.measurements(%{}) == {:ok, %{}}

      assert SafeMetadata.measurements(%{
               "duration" => 10,
               :queue_depth => 0,
               "cpu_percent" => 1.5
             }) ==
               {:ok, %{duration: 10, queue_depth: 0, cpu_percent: 1.5}}

      all = Map.new(Catalog.measurement_keys(), &{Atom.to_string(&1), 1})
      assert {:ok, ok} = SafeMetadata.measurements(all)
      assert Map.keys(ok) |> Enum.sort() == Enum.sort(Catalog.measurement_keys())
    end

    test "rejects unknown keys and non-numbers, naming the key" do
      assert SafeMetadata.measurements(%{"node" => 1}) == {:error, {:invalid_measurement, "node"}}
      assert SafeMetadata.measurements(%{count: nil}) == {:error, {:invalid_measurement, :count}}

      assert SafeMetadata.measurements(%{"count" => "1"}) ==
               {:error, {:invalid_measurement, "count"}}

      assert SafeMetadata.measurements(%{1 => 1}) == {:error, {:invalid_measurement, 1}}
    end

    test "creates no atom" do
      map = Map.new(1..200, &{"unknown_measurement_#{&1}_#{System.unique_integer()}", 1})
      before = :erlang.system_info(:atom_count)
      assert {:error, {:invalid_measurement, _}} = SafeMetadata.measurements(map)
      assert :erlang.system_info(:atom_count) == before
    end
  end
end
