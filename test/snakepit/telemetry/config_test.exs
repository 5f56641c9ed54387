defmodule Snakepit.Telemetry.ConfigTest do
  use ExUnit.Case, async: true

  alias Snakepit.Telemetry.Config

  doctest Config

  defp error(opts) do
    assert_raise(ArgumentError, fn -> Config.load!(opts) end).message
  end

  test "defaults" do
    assert Config.load!([]) == %Config{
             enabled: true,
             sampling_rate: 1.0,
             max_buffer_size: 1024,
             excluded_events: [],
             grpc_stream: true,
             events: [],
             max_batch_size: 1024,
             max_in_flight_batches: 4,
             # Resolved at load: one Dispatcher per scheduler, NIF threads for half of them.
             dispatchers: System.schedulers_online(),
             runtime_threads: max(1, div(System.schedulers_online(), 2))
           }

    assert Enum.sort(Config.defaults()) == Enum.sort(Map.to_list(Map.from_struct(%Config{})))
  end

  test "dispatchers: an integer from 1 to 1024" do
    assert Config.load!(dispatchers: 3).dispatchers == 3

    for bad <- [0, 1025, 2.0, :many] do
      assert_raise ArgumentError, ~r/invalid :dispatchers .* from 1 to 1024/, fn ->
        Config.load!(dispatchers: bad)
      end
    end
  end

  test "min_batch_interval_us: an integer from 0 to 10 s in µs, 0 turning the wait off" do
    assert Config.load!([]).min_batch_interval_us == 5000
    assert Config.load!(min_batch_interval_us: 0).min_batch_interval_us == 0
    assert Config.load!(min_batch_interval_us: 250).min_batch_interval_us == 250
    assert Config.load!(min_batch_interval_us: 10_000_000).min_batch_interval_us == 10_000_000

    for bad <- [-1, 10_000_001, 2 ** 64, 1.5, "1000", nil, :infinity] do
      message = error(min_batch_interval_us: bad)
      assert message =~ "invalid :min_batch_interval_us"
      assert message =~ "an integer from 0 to 10_000_000 (microseconds, at most 10 s)"
      assert message =~ "got: #{inspect(bad)}"
    end
  end

  test "runtime_threads: a positive integer, or half the schedulers (at least 1) by default" do
    assert Config.load!(runtime_threads: 3).runtime_threads == 3
    assert Config.load!(runtime_threads: nil).runtime_threads >= 1

    for bad <- [0, -1, 2.0, :many] do
      assert_raise ArgumentError, ~r/invalid :runtime_threads .* positive integer/, fn ->
        Config.load!(runtime_threads: bad)
      end
    end
  end

  test "valid values are kept (rates become floats)" do
    config =
      Config.load!(
        enabled: false,
        sampling_rate: 0,
        max_buffer_size: 10,
        excluded_events: ["python.gc.*", "tool.result_size"],
        grpc_stream: false,
        max_batch_size: 1,
        max_in_flight_batches: 2
      )

    assert config.enabled == false
    assert config.sampling_rate === 0.0
    assert config.max_buffer_size == 10
    assert config.excluded_events == ["python.gc.*", "tool.result_size"]
    assert config.grpc_stream == false
    assert config.max_batch_size == 1
    assert config.max_in_flight_batches == 2
  end

  test "load!/0 reads the application environment" do
    # config/test.exs adds one app-defined event
    assert %Config{grpc_stream: true, events: [%{name: "myapp.model.loaded"}]} = Config.load!()
  end

  test "booleans" do
    for key <- [:enabled, :grpc_stream], value <- [nil, "true", 1, :yes] do
      message = error([{key, value}])
      assert message =~ "invalid #{inspect(key)}"
      assert message =~ "expected a boolean"
      assert message =~ "got: #{inspect(value)}"
    end
  end

  test "sampling_rate" do
    for value <- [-0.01, 1.01, 2, "0.5", nil, :all] do
      message = error(sampling_rate: value)
      assert message =~ "invalid :sampling_rate"
      assert message =~ "a number from 0.0 to 1.0"
      assert message =~ "got: #{inspect(value)}"
    end
  end

  test "positive integers" do
    for key <- [:max_buffer_size, :max_batch_size, :max_in_flight_batches],
        value <- [0, -1, 1.5, "10", nil, :infinity] do
      message = error([{key, value}])
      assert message =~ "invalid #{inspect(key)}"
      assert message =~ "a positive integer"
      assert message =~ "got: #{inspect(value)}"
    end
  end

  test "excluded_events" do
    assert error(excluded_events: "python.*") =~ "invalid :excluded_events"
    message = error(excluded_events: ["ok.*", "not ok"])
    assert message =~ "list of event patterns"
    assert message =~ ~s(invalid pattern: "not ok")
    assert error(excluded_events: [:python]) =~ "invalid pattern: :python"
    assert error(excluded_events: [""]) =~ ~s(invalid pattern: "")
  end

  test "unknown keys are named, with a suggestion" do
    message = error(sampling: 0.5, enabled: true, bogus: 1)
    assert message =~ "unknown key(s)"
    assert message =~ "[:sampling, :bogus]"
    assert message =~ ":sampling (did you mean :sampling_rate?)"
    assert message =~ "Valid keys: :enabled"
  end

  test "not a keyword list" do
    assert error(%{enabled: true}) =~ "keyword list"
    assert error([:enabled]) =~ "keyword list"
  end

  describe "events" do
    @event [
      name: "myapp.model.loaded",
      event: [:myapp, :model, :loaded],
      measurements: [:duration]
    ]

    test "keyword lists and maps are normalized" do
      config =
        Config.load!(
          events: [
            @event,
            %{name: "myapp.cache_hit", event: [:myapp, :cache, :hit]},
            [name: "single", event: [:single]]
          ]
        )

      assert config.events == [
               %{
                 name: "myapp.model.loaded",
                 event: [:myapp, :model, :loaded],
                 measurements: [:duration]
               },
               %{name: "myapp.cache_hit", event: [:myapp, :cache, :hit], measurements: []},
               %{name: "single", event: [:single], measurements: []}
             ]
    end

    test "not a list" do
      assert error(events: %{}) =~ "invalid :events"
    end

    test "entries that are not keyword lists or maps" do
      for entry <- ["myapp.x", [], [:a], 1, %URI{}] do
        assert error(events: [entry]) =~ "invalid entry in :events"
      end
    end

    test "invalid names" do
      for name <- [
            nil,
            :myapp,
            "MyApp.x",
            "myapp..x",
            ".myapp",
            "myapp.",
            "my app",
            "myapp-x",
            String.duplicate("a", 257)
          ] do
        message = error(events: [Keyword.put(@event, :name, name)])
        assert message =~ ":name to be a dotted name"
        assert message =~ "got: #{inspect(name)}"
      end
    end

    test "a catalog worker name" do
      message = error(events: [Keyword.put(@event, :name, "python.call.start")])
      assert message =~ ~s(:name not to be a catalog worker event, but "python.call.start" is one)
    end

    test "a repeated name" do
      message = error(events: [@event, Keyword.put(@event, :event, [:other])])
      assert message =~ ~s("myapp.model.loaded" appears more than once)
    end

    test "invalid events" do
      for event <- [nil, [], ["myapp"], [:myapp, "x"], :myapp] do
        message = error(events: [Keyword.put(@event, :event, event)])
        assert message =~ ":event to be a non-empty list of atoms"
      end

      message = error(events: [Keyword.put(@event, :event, [:snakepit, :pool, :status])])
      assert message =~ ":event not to be a catalog event"
    end

    test "invalid measurements" do
      for measurements <- [nil, :duration, ["duration"], [:ok, 1]] do
        message = error(events: [Keyword.put(@event, :measurements, measurements)])
        assert message =~ ":measurements to be a list of atoms"
      end
    end

    test "unknown keys and a missing event" do
      assert error(events: [Keyword.put(@event, :metadata, [])]) =~ "unknown [:metadata]"
      assert error(events: [Keyword.delete(@event, :event)]) =~ ":event to be a non-empty list"
      assert error(events: [Keyword.delete(@event, :name)]) =~ ":name to be a dotted name"
    end
  end
end
