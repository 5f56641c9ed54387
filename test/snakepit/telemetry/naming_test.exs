defmodule Snakepit.Telemetry.NamingTest do
  # async: false: the atom-count checks must not see atoms from other tests.
  use ExUnit.Case, async: false

  alias Snakepit.Telemetry.{Catalog, Naming}

  doctest Naming

  test "from_parts/1 resolves every worker event of the catalog" do
    for event <- Catalog.worker_events() do
      assert Naming.from_parts(String.split(event.worker_name, ".")) == {:ok, event.event}
    end
  end

  test "from_parts/1 rejects anything else without creating atoms" do
    before = :erlang.system_info(:atom_count)

    for parts <- [
          [],
          ["python"],
          ["python", "call"],
          ["python", "call", "start", "extra"],
          ["pool", "initialized"],
          ["snakepit", "python", "call", "start"],
          ["never_seen_#{System.unique_integer([:positive])}", "x"],
          [:python, :call, :start],
          "python.call.start",
          nil
        ] do
      assert Naming.from_parts(parts) == {:error, :unknown_event}
    end

    assert :erlang.system_info(:atom_count) == before
  end

  test "from_parts/2 also knows app-defined events, catalog first" do
    app = [
      %{name: "myapp.model.loaded", event: [:myapp, :model, :loaded], measurements: [:duration]}
    ]

    assert Naming.from_parts(["myapp", "model", "loaded"], app) ==
             {:ok, [:myapp, :model, :loaded]}

    assert Naming.from_parts(["python", "call", "stop"], app) ==
             {:ok, [:snakepit, :python, :call, :stop]}

    assert Naming.from_parts(["myapp", "other"], app) == {:error, :unknown_event}
    assert Naming.from_parts([1, 2], app) == {:error, :unknown_event}
  end

  test "measurement_key/1" do
    for key <- Catalog.measurement_keys() do
      assert Naming.measurement_key(key) == {:ok, key}
      assert Naming.measurement_key(Atom.to_string(key)) == {:ok, key}
    end

    before = :erlang.system_info(:atom_count)

    assert Naming.measurement_key("no_such_key_#{System.unique_integer()}") ==
             {:error, :unknown_measurement_key}

    assert Naming.measurement_key(:node) == {:error, :unknown_measurement_key}
    assert Naming.measurement_key(nil) == {:error, :unknown_measurement_key}
    assert Naming.measurement_key(42) == {:error, :unknown_measurement_key}
    assert :erlang.system_info(:atom_count) == before
  end

  test "python_event_catalog/0 lists the worker events" do
    catalog = Naming.python_event_catalog()
    assert length(catalog) == length(Catalog.worker_events())

    for {entry, event} <- Enum.zip(catalog, Catalog.worker_events()) do
      assert entry == %{
               name: event.worker_name,
               event: event.event,
               measurements: event.measurements
             }
    end
  end

  test "pool_event/1 names every pool event" do
    expected = %{
      initialized: [:snakepit, :pool, :initialized],
      init_started: [:snakepit, :pool, :init_started],
      init_complete: [:snakepit, :pool, :init_complete],
      status: [:snakepit, :pool, :status],
      queue_enqueued: [:snakepit, :pool, :queue, :enqueued],
      queue_dequeued: [:snakepit, :pool, :queue, :dequeued],
      queue_timeout: [:snakepit, :pool, :queue, :timeout],
      worker_spawn_started: [:snakepit, :pool, :worker, :spawn_started],
      worker_spawned: [:snakepit, :pool, :worker, :spawned],
      worker_ready: [:snakepit, :pool, :worker_ready],
      worker_spawn_failed: [:snakepit, :pool, :worker, :spawn_failed],
      worker_terminated: [:snakepit, :pool, :worker, :terminated],
      worker_restarted: [:snakepit, :pool, :worker, :restarted]
    }

    for {name, event} <- expected, do: assert(Naming.pool_event(name) == event)

    pool_events = for %{event: [:snakepit, :pool | _] = e} <- Catalog.events(), do: e
    assert Enum.sort(Map.values(expected)) == Enum.sort(pool_events)
  end

  test "session_event/1" do
    assert Naming.session_event(:created) == [:snakepit, :session, :created]
    assert Naming.session_event(:destroyed) == [:snakepit, :session, :destroyed]
    assert Naming.session_event(:affinity_assigned) == [:snakepit, :session, :affinity, :assigned]
    assert Naming.session_event(:affinity_broken) == [:snakepit, :session, :affinity, :broken]
  end

  test "python_event/1 names every python event" do
    for %{event: [:snakepit, :python | rest] = event} <- Catalog.events() do
      assert Naming.python_event(rest |> Enum.join("_") |> String.to_existing_atom()) == event
    end

    assert Naming.python_event(:tool_result_size) == [:snakepit, :python, :tool, :result_size]
    assert Naming.python_event(:gc_completed) == [:snakepit, :python, :gc, :completed]
  end

  test "grpc_event/2 names every gRPC event" do
    for %{event: [:snakepit, :grpc, kind, name] = event} <- Catalog.events() do
      assert Naming.grpc_event(kind, name) == event
    end

    assert Naming.grpc_event(:stream, :opened) == [:snakepit, :grpc, :stream, :opened]
  end

  test "builders raise ArgumentError listing the valid names" do
    error = assert_raise ArgumentError, fn -> Naming.pool_event(:worker_worker_ready) end
    assert error.message =~ ":worker_ready"
    assert error.message =~ ":queue_timeout"

    error = assert_raise ArgumentError, fn -> Naming.session_event("created") end
    assert error.message =~ ":affinity_broken"

    error = assert_raise ArgumentError, fn -> Naming.python_event(:call_begin) end
    assert error.message =~ ":call_start"

    error = assert_raise ArgumentError, fn -> Naming.grpc_event(:call, :lost) end
    assert error.message =~ "{:connection, :lost}"
  end

  describe "Snakepit v0.13 compatibility" do
    # Snakepit's lists, from lib/snakepit/telemetry/naming.ex of nshkrdotcom/snakepit v0.13.
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

    test "pool_events/0, session_events/0, python_events/0, grpc_events/0 are Snakepit's lists" do
      assert Naming.pool_events() == @snakepit_pool_events
      assert Naming.session_events() == @snakepit_session_events
      assert Naming.python_events() == @snakepit_python_events
      assert Naming.grpc_events() == @snakepit_grpc_events
    end

    test "pool_event/1 gives Snakepit's names, including worker_ready" do
      assert Naming.pool_event(:worker_ready) == [:snakepit, :pool, :worker_ready]
      assert Naming.pool_event(:init_started) == [:snakepit, :pool, :init_started]
      assert Naming.pool_event(:init_complete) == [:snakepit, :pool, :init_complete]
      assert Naming.pool_event(:worker_spawned) == [:snakepit, :pool, :worker, :spawned]
      assert Naming.pool_event(:queue_timeout) == [:snakepit, :pool, :queue, :timeout]
    end

    test "every listed name is accepted by its builder and names a catalog event" do
      catalog = MapSet.new(Catalog.events(), & &1.event)

      for name <- Naming.pool_events(), do: assert(Naming.pool_event(name) in catalog)
      for name <- Naming.session_events(), do: assert(Naming.session_event(name) in catalog)
      for name <- Naming.python_events(), do: assert(Naming.python_event(name) in catalog)

      for name <- Naming.grpc_events() do
        [kind, _] = name |> Atom.to_string() |> String.split("_", parts: 2)
        assert Naming.grpc_event(String.to_existing_atom(kind), name) in catalog
      end
    end

    test "every catalog pool event is in pool_events/0" do
      from_catalog = for %{event: [:snakepit, :pool | _] = event} <- Catalog.events(), do: event

      assert Enum.sort(Enum.map(Naming.pool_events(), &Naming.pool_event/1)) ==
               Enum.sort(from_catalog)
    end

    test "grpc_event/2 takes Snakepit's joined form and gives the real event" do
      assert Naming.grpc_event(:call, :call_start) == [:snakepit, :grpc, :call, :start]
      assert Naming.grpc_event(:call, :call_exception) == [:snakepit, :grpc, :call, :exception]
      assert Naming.grpc_event(:stream, :stream_message) == [:snakepit, :grpc, :stream, :message]

      assert Naming.grpc_event(:connection, :connection_reconnected) ==
               [:snakepit, :grpc, :connection, :reconnected]

      # The joined name of another kind is not accepted.
      assert_raise ArgumentError, fn -> Naming.grpc_event(:stream, :call_start) end
    end

    test "measurement_keys/0 is Snakepit's list, in its order" do
      assert Naming.measurement_keys() == [
               :duration,
               :duration_ms,
               :bytes,
               :system_time,
               :queue_depth,
               :queue_time,
               :available_workers,
               :busy_workers,
               :total_workers,
               :worker_count,
               :lifetime,
               :total_commands,
               :command_count,
               :downtime,
               :restart_count,
               :retry_count,
               :request_size,
               :response_size,
               :message_size,
               :sequence_number,
               :message_count,
               :network_time,
               :uptime,
               :call_count,
               :affinity_duration,
               :commands_with_affinity,
               :rss_bytes,
               :vms_bytes,
               :cpu_percent,
               :collected,
               :generation,
               :latency_ms,
               :count,
               :python_pid
             ]
    end

    test "Snakepit's documented examples" do
      assert Naming.from_parts(["python", "call", "start"]) ==
               {:ok, [:snakepit, :python, :call, :start]}

      assert Naming.from_parts(["unknown", "event"]) == {:error, :unknown_event}
      assert Naming.measurement_key("duration") == {:ok, :duration}
      assert Naming.measurement_key("unknown_key") == {:error, :unknown_measurement_key}
      assert Naming.event(:pool, :worker, :spawned) == [:snakepit, :pool, :worker, :spawned]
    end

    test "event/3 builds [:snakepit | parts] from three atoms" do
      assert Naming.event(:pool, :worker, :spawned) == [:snakepit, :pool, :worker, :spawned]
      assert Naming.event(:grpc, :call, :stop) == Naming.grpc_event(:call, :stop)
      assert Naming.event(:myapp, :model, :loaded) == [:snakepit, :myapp, :model, :loaded]
    end

    test "event/3 raises ArgumentError for anything but atoms, creating no atom" do
      for args <- [["pool", :worker, :spawned], [:pool, 1, :spawned]] do
        error = assert_raise ArgumentError, fn -> apply(Naming, :event, args) end
        assert error.message =~ "three atoms"
      end

      name = "never_an_atom_#{System.unique_integer([:positive])}"
      before = :erlang.system_info(:atom_count)

      raised =
        try do
          Naming.event(:pool, :worker, name)
        rescue
          e in ArgumentError -> e
        end

      assert :erlang.system_info(:atom_count) == before
      assert %ArgumentError{} = raised
      assert raised.message =~ inspect(name)
    end
  end

  test "key lists come from the catalog (less this project's own measurement key)" do
    assert Naming.measurement_keys() == Catalog.measurement_keys() -- [:total]
    assert :total in Catalog.measurement_keys()
    assert Naming.metadata_keys() == Catalog.metadata_keys()
  end
end
