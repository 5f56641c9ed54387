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
             }) ==
               {:ok,
                %{
                  :worker_id => "w1",
                  :pool_name => :default,
                  :python_pid => 123,
                  "my_custom" => %{nested: true},
                  "some_atom_key" => pid,
                  "{:tuple, :key}" => 1
                }}
    end

    test "every allowlisted metadata key is recognised as a binary" do
      map = Map.new(Catalog.metadata_keys(), &{Atom.to_string(&1), &1})
      assert SafeMetadata.sanitize(map) == {:ok, Map.new(Catalog.metadata_keys(), &{&1, &1})}
    end

    test "atom keys win a collision" do
      assert SafeMetadata.sanitize(%{"node" => "str", :node => :atom}) == {:ok, %{node: :atom}}
      assert SafeMetadata.sanitize(%{"custom" => 1, :custom => 2}) == {:ok, %{"custom" => 2}}
    end

    test "Snakepit's documented example" do
      assert SafeMetadata.sanitize(%{"node" => "test@host", "unknown" => "value"}) ==
               {:ok, %{:node => "test@host", "unknown" => "value"}}
    end

    test "numbers as keys give the text Snakepit's to_string/1 gives" do
      assert SafeMetadata.sanitize(%{1 => :a, 2.5 => :b}) == {:ok, %{"1" => :a, "2.5" => :b}}
    end

    test "anything but a map is an error, where Snakepit raises" do
      for bad <- [nil, [worker_id: "w1"], "metadata", {:worker_id, "w1"}] do
        assert SafeMetadata.sanitize(bad) == {:error, {:invalid_metadata, bad}}
      end
    end

    test "1000 random keys create no atom" do
      keys =
        for _ <- 1..1000 do
          bytes = :crypto.strong_rand_bytes(:rand.uniform(24))
          Enum.random([Base.encode32(bytes, case: :lower, padding: false), bytes])
        end

      map = Map.new(keys, &{&1, 1})
      before = :erlang.system_info(:atom_count)
      {:ok, sanitized} = SafeMetadata.sanitize(map)
      assert :erlang.system_info(:atom_count) == before
      assert Enum.all?(Map.keys(sanitized), &(is_binary(&1) or &1 in Catalog.metadata_keys()))
      assert map_size(sanitized) == map_size(map)
    end
  end

  describe "enrich/2" do
    test "Snakepit's documented example" do
      assert SafeMetadata.enrich(%{"tool" => "predict"},
               node: :nonode@nohost,
               worker_id: "worker_1"
             ) == {:ok, %{tool: "predict", node: :nonode@nohost, worker_id: "worker_1"}}
    end

    test "sanitizes both; the context wins; nothing else is added" do
      assert SafeMetadata.enrich(%{"worker_id" => "fake", :node => :elsewhere, "command" => "x"},
               worker_id: "w1",
               pool_name: :default,
               python_pid: 42,
               not_allowlisted: 1
             ) ==
               {:ok,
                %{
                  "not_allowlisted" => 1,
                  worker_id: "w1",
                  pool_name: :default,
                  python_pid: 42,
                  command: "x",
                  node: :elsewhere
                }}

      assert SafeMetadata.enrich(%{}, []) == {:ok, %{}}
    end

    test "also takes the context as a map" do
      assert SafeMetadata.enrich(%{"a_custom" => 1}, %{node: :other@host}) ==
               {:ok, %{"a_custom" => 1, node: :other@host}}
    end

    test "bad arguments are errors, where Snakepit raises" do
      assert SafeMetadata.enrich(nil, worker_id: "w") == {:error, {:invalid_metadata, nil}}
      assert SafeMetadata.enrich([a: 1], []) == {:error, {:invalid_metadata, [a: 1]}}
      assert SafeMetadata.enrich(%{}, "ctx") == {:error, {:invalid_context, "ctx"}}
      assert SafeMetadata.enrich(%{}, [1, 2]) == {:error, {:invalid_context, [1, 2]}}

      assert SafeMetadata.enrich(%{}, [{:a, 1}, :b]) ==
               {:error, {:invalid_context, [{:a, 1}, :b]}}
    end
  end

  describe "merge/2" do
    test "sanitizes both maps; the second wins" do
      assert SafeMetadata.merge(%{"worker_id" => "a", "custom" => 1}, %{
               :worker_id => "b",
               "pool_name" => :p,
               :other => 2
             }) == {:ok, %{"custom" => 1, "other" => 2, worker_id: "b", pool_name: :p}}

      assert SafeMetadata.merge(%{}, %{}) == {:ok, %{}}
    end

    test "Snakepit's documented example, as its code computes it" do
      # Snakepit's doc shows "tool" staying a binary, but :tool is on its allowlist and its
      # code returns the atom; so does this one.
      assert SafeMetadata.merge(%{"tool" => "predict"}, %{node: :nonode@nohost}) ==
               {:ok, %{tool: "predict", node: :nonode@nohost}}
    end

    test "anything but two maps is an error naming the first bad one" do
      assert SafeMetadata.merge(nil, %{}) == {:error, {:invalid_metadata, nil}}
      assert SafeMetadata.merge(%{}, a: 1) == {:error, {:invalid_metadata, [a: 1]}}
      assert SafeMetadata.merge(:x, :y) == {:error, {:invalid_metadata, :x}}
    end

    test "creates no atom" do
      map = Map.new(1..200, &{"unknown_key_#{&1}_#{System.unique_integer()}", &1})
      before = :erlang.system_info(:atom_count)
      assert {:ok, merged} = SafeMetadata.merge(map, %{"worker_id" => "w"})
      assert :erlang.system_info(:atom_count) == before
      assert map_size(merged) == 201
    end
  end

  describe "allowed_atom_keys/0" do
    # Snakepit v0.13's list, from lib/snakepit/telemetry/safe_metadata.ex of nshkrdotcom/snakepit.
    @snakepit_allowed_atom_keys [
      :node,
      :pool_name,
      :worker_id,
      :session_id,
      :command,
      :correlation_id,
      :worker_pid,
      :python_port,
      :python_pid,
      :mode,
      :reason,
      :planned,
      :previous_pid,
      :new_pid,
      :retry_count,
      :timeout_ms,
      :result,
      :error_type,
      :error_category,
      :error_message,
      :traceback,
      :rpc_method,
      :grpc_status,
      :stream_id,
      :direction,
      :is_final,
      :tool,
      :library,
      :function,
      :python_type,
      :model,
      :operation,
      :timestamp_ns,
      :worker_module,
      :adapter_module,
      :size,
      :failure_reason,
      :kind,
      :device,
      :dtype,
      :shape,
      :exit_code,
      :payload_version,
      :call_type,
      :idempotent,
      :retry
    ]

    test "is Snakepit's list, and the catalog's" do
      assert SafeMetadata.allowed_atom_keys() == @snakepit_allowed_atom_keys
      assert SafeMetadata.allowed_atom_keys() == Catalog.metadata_keys()
    end

    test "is exactly what sanitize/1 turns into atoms" do
      for key <- SafeMetadata.allowed_atom_keys() do
        assert SafeMetadata.sanitize(%{Atom.to_string(key) => 1}) == {:ok, %{key => 1}}
      end

      assert SafeMetadata.sanitize(%{"duration" => 1}) == {:ok, %{"duration" => 1}}
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

    test "Snakepit's documented example" do
      assert SafeMetadata.measurements(%{"duration" => 1000}) == {:ok, %{duration: 1000}}
    end

    test "rejects unknown keys in Snakepit's shape, and non-numbers" do
      assert SafeMetadata.measurements(%{"node" => 1}) ==
               {:error, {:invalid_measurement_key, "node", :unknown_measurement_key}}

      assert SafeMetadata.measurements(%{1 => 1}) ==
               {:error, {:invalid_measurement_key, 1, :unknown_measurement_key}}

      assert SafeMetadata.measurements(%{count: nil}) ==
               {:error, {:invalid_measurement_value, :count, nil}}

      assert SafeMetadata.measurements(%{"count" => "1"}) ==
               {:error, {:invalid_measurement_value, "count", "1"}}
    end

    test "anything but a map is an error, where Snakepit raises" do
      assert SafeMetadata.measurements(duration: 1) ==
               {:error, {:invalid_measurements, [duration: 1]}}

      assert SafeMetadata.measurements(nil) == {:error, {:invalid_measurements, nil}}
    end

    test "creates no atom" do
      map = Map.new(1..200, &{"unknown_measurement_#{&1}_#{System.unique_integer()}", 1})
      before = :erlang.system_info(:atom_count)

      assert {:error, {:invalid_measurement_key, _, :unknown_measurement_key}} =
               SafeMetadata.measurements(map)

      assert :erlang.system_info(:atom_count) == before
    end
  end
end
