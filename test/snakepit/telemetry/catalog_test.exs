defmodule Snakepit.Telemetry.CatalogTest do
  use ExUnit.Case, async: true

  alias Snakepit.Telemetry.Catalog
  alias Snakepit.Telemetry.Catalog.Parser

  doctest Catalog

  # Counts the content lines of each section independently of the parser.
  defp section_counts do
    Catalog.path()
    |> File.read!()
    |> String.split("\n")
    |> Enum.map(&(&1 |> String.split("#") |> hd() |> String.trim()))
    |> Enum.reject(&(&1 == ""))
    |> Enum.reduce({nil, %{}}, fn
      "[" <> rest, {_section, counts} -> {String.trim_trailing(rest, "]"), counts}
      _line, {section, counts} -> {section, Map.update(counts, section, 1, &(&1 + 1))}
    end)
    |> elem(1)
  end

  test "parses the real catalog: as many events and keys as the file has lines" do
    counts = section_counts()
    assert length(Catalog.measurement_keys()) == counts["measurement_keys"]
    assert length(Catalog.metadata_keys()) == counts["metadata_keys"]
    assert length(Catalog.events()) == counts["events"]
    assert counts["events"] > 0
  end

  test "events are in file order, with atoms and the worker name" do
    names = Enum.map(Catalog.events(), &Enum.join(&1.event, "."))
    assert hd(names) == "snakepit.pool.initialized"
    assert List.last(names) == "snakepit.grpc.connection.reconnected"

    stop =
      Enum.find(Catalog.events(), &(&1.event == [:snakepit, :python, :tool, :execution, :stop]))

    assert stop.worker_name == "tool.execution.stop"
    assert stop.measurements == [:duration, :count]
    assert :result in stop.metadata
  end

  test "worker events are exactly the events with a worker name" do
    worker = Catalog.worker_events()
    assert worker == Enum.filter(Catalog.events(), &(&1.worker_name != nil))
    assert Enum.all?(worker, &match?([:snakepit, :python | _], &1.event))
    assert length(worker) == 12
  end

  test "every key an event uses is declared" do
    for event <- Catalog.events() do
      assert event.measurements -- Catalog.measurement_keys() == []
      assert event.metadata -- Catalog.metadata_keys() == []
    end
  end

  test "native time keys are the measurement keys marked native" do
    assert Catalog.native_time_keys() == [:duration, :system_time]
    assert Catalog.native_time_keys() -- Catalog.measurement_keys() == []
  end

  test "native_spec/1 hands the NIF every worker event, then the app events" do
    app = %{name: "myapp.model.loaded", event: [:myapp, :model, :loaded], measurements: [:w]}
    spec = Catalog.native_spec([app])

    worker_events =
      Enum.map(Catalog.worker_events(), &{&1.worker_name, &1.event, &1.measurements})

    assert spec.events ==
             worker_events ++ [{"myapp.model.loaded", [:myapp, :model, :loaded], [:w]}]

    assert Enum.map(spec.measurement_keys, &elem(&1, 0)) == Catalog.measurement_keys()

    assert for({key, true} <- spec.measurement_keys, do: key) == Catalog.native_time_keys()
    assert spec.metadata_keys == Catalog.metadata_keys()
  end

  describe "a malformed catalog fails with the line" do
    @good """
    [measurement_keys]
    duration native
    count

    [metadata_keys]
    node

    [events]
    a.b | x.y | duration | node
    """

    defp parse(text), do: Parser.parse!("catalog.txt", text)

    defp error_for(text) do
      error = assert_raise CompileError, fn -> parse(text) end
      {error.line, Exception.message(error)}
    end

    test "the good sample parses" do
      assert %{events: [%{event: [:a, :b], worker_name: "x.y"}]} = parse(@good)
    end

    test "an unknown measurement key in an event" do
      {line, message} = error_for(String.replace(@good, "| duration |", "| nope |"))
      assert line == 9
      assert message =~ "line 9"
      assert message =~ ~s("nope" is not declared)
    end

    test "a wrong number of fields" do
      {line, message} = error_for(String.replace(@good, "a.b | x.y |", "a.b |"))
      assert line == 9
      assert message =~ "4 fields"
    end

    test "an unknown unit" do
      {line, message} = error_for(String.replace(@good, "duration native", "duration seconds"))
      assert line == 2
      assert message =~ "key native"
    end

    test "an unknown section" do
      {line, message} = error_for(String.replace(@good, "[metadata_keys]", "[meta]"))
      assert line == 5
      assert message =~ "unknown section"
    end

    test "a line outside any section" do
      {line, _message} = error_for("stray\n" <> @good)
      assert line == 1
    end

    test "duplicates" do
      assert {3, _} = error_for(String.replace(@good, "count\n", "duration\n"))
      assert {10, _} = error_for(@good <> "a.b | - | - | -\n")
      assert {10, _} = error_for(@good <> "c.d | x.y | - | -\n")
    end

    test "invalid names" do
      assert {9, message} = error_for(String.replace(@good, "a.b |", "A.b |"))
      assert message =~ "invalid event name"
      assert {9, _} = error_for(String.replace(@good, "x.y", "single"))
    end
  end
end
