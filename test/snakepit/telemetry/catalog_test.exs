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
    assert length(worker) == 11
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

  test "describe/0 is the catalog with strings only" do
    describe = Catalog.describe()

    assert Map.keys(describe) |> Enum.sort() ==
             ["events", "measurement_keys", "metadata_keys", "native_time_keys"]

    assert describe["measurement_keys"] == Enum.map(Catalog.measurement_keys(), &to_string/1)
    assert describe["metadata_keys"] == Enum.map(Catalog.metadata_keys(), &to_string/1)
    assert describe["native_time_keys"] == ["duration", "system_time"]
    assert length(describe["events"]) == length(Catalog.events())

    assert hd(describe["events"]) == %{
             "event" => "snakepit.pool.initialized",
             "worker_name" => nil,
             "measurements" => ["duration", "worker_count"],
             "metadata" => ["node", "pool_name"]
           }
  end

  defp python do
    venv = Path.expand("../../../.venv/bin/python", __DIR__)
    if File.exists?(venv), do: venv, else: System.find_executable("python3")
  end

  # Re-encodes JSON canonically (sorted keys, compact) with Python's json module.
  defp canonical_json(python, json, extra_env \\ []) do
    script =
      "import json, sys; print(json.dumps(json.load(sys.stdin), sort_keys=True, separators=(',', ':')))"

    tmp =
      Path.join(System.tmp_dir!(), "snakepit_catalog_#{System.unique_integer([:positive])}.json")

    File.write!(tmp, json)

    try do
      {out, 0} =
        System.cmd("sh", ["-c", ~s("$0" -c "$1" < "$2"), python, script, tmp], env: extra_env)

      String.trim(out)
    after
      File.rm(tmp)
    end
  end

  test "to_json/0 is valid, canonical JSON of describe/0" do
    case python() do
      nil ->
        IO.puts("skipped: no python3 to decode JSON")

      python ->
        json = Catalog.to_json()
        assert canonical_json(python, json) == json
    end
  end

  @python_root Path.expand("../../../priv/python", __DIR__)
  @python_catalog Path.join(@python_root, "snakepit_bridge/telemetry/catalog.py")

  @tag :python
  test "agrees with python -m snakepit_bridge.telemetry.catalog --json" do
    python = python()

    if python == nil or not File.exists?(@python_catalog) do
      IO.puts("skipped: no python or no #{@python_catalog} yet")
    else
      {json, 0} =
        System.cmd(python, ["-m", "snakepit_bridge.telemetry.catalog", "--json"],
          env: [{"PYTHONPATH", @python_root}]
        )

      assert canonical_json(python, json) == Catalog.to_json()
    end
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
