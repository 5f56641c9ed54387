defmodule Snakepit.Telemetry.ControlTest do
  use ExUnit.Case, async: true

  alias Snakepit.Telemetry.Control

  doctest Control

  test "toggle/1" do
    assert Control.toggle(true) == {:ok, {:toggle, true}}
    assert Control.toggle(false) == {:ok, {:toggle, false}}
    assert Control.toggle(nil) == {:error, {:invalid_option, nil}}
    assert Control.toggle(1) == {:error, {:invalid_option, 1}}
  end

  describe "sampling" do
    test "rates from 0 to 1 become floats" do
      assert Control.sampling(0) == {:ok, {:sampling, 0.0, []}}
      assert Control.sampling(1) == {:ok, {:sampling, 1.0, []}}
      assert Control.sampling(0.0) == {:ok, {:sampling, 0.0, []}}
      assert Control.sampling(0.125, ["*"]) == {:ok, {:sampling, 0.125, ["*"]}}
    end

    test "invalid rates" do
      for rate <- [-0.1, 1.0001, 2, -1, "0.5", nil, :half, [0.5]] do
        assert Control.sampling(rate) == {:error, {:invalid_rate, rate}}
        assert Control.sampling(rate, ["*"]) == {:error, {:invalid_rate, rate}}
      end
    end

    test "invalid patterns" do
      assert Control.sampling(0.5, [""]) == {:error, {:invalid_pattern, ""}}
      assert Control.sampling(0.5, ["ok.*", :atom]) == {:error, {:invalid_pattern, :atom}}
      assert Control.sampling(0.5, "python.*") == {:error, {:invalid_pattern, "python.*"}}
    end
  end

  describe "filter/0" do
    test "Snakepit's filter/0: no allow or deny patterns, every event passes" do
      assert Control.filter() == {:ok, {:filter, [], []}}
      assert Control.filter() == Control.filter([])
    end

    test "applied to a worker's settings, it clears an earlier filter" do
      alias Snakepit.Telemetry.Settings
      settings = %Settings{enabled: true, sampling_rate: 1.0, allow: ["python.*"], deny: ["x"]}
      {:ok, message} = Control.filter()
      assert {:ok, %Settings{allow: [], deny: []}} = Settings.change(settings, message, 16)
    end
  end

  describe "Snakepit's documented examples, in this module's shape" do
    test "toggle/1, sampling/1,2, filter/1" do
      assert Control.toggle(true) == {:ok, {:toggle, true}}
      assert Control.sampling(0.5) == {:ok, {:sampling, 0.5, []}}

      assert Control.sampling(0.1, ["python.call.*"]) ==
               {:ok, {:sampling, 0.1, ["python.call.*"]}}

      assert Control.filter(allow: ["python.call.start"]) ==
               {:ok, {:filter, ["python.call.start"], []}}

      assert Control.filter(deny: ["python.memory.sampled"]) ==
               {:ok, {:filter, [], ["python.memory.sampled"]}}
    end
  end

  describe "filter/1" do
    test "allow and deny, defaults empty" do
      assert Control.filter([]) == {:ok, {:filter, [], []}}
      assert Control.filter(allow: ["a.*"]) == {:ok, {:filter, ["a.*"], []}}
      assert Control.filter(deny: ["b"], allow: ["a"]) == {:ok, {:filter, ["a"], ["b"]}}
    end

    test "errors" do
      assert Control.filter(allow: ["a"], other: 1) == {:error, {:invalid_option, :other}}
      assert Control.filter([:allow]) == {:error, {:invalid_option, :allow}}
      assert Control.filter(%{allow: []}) == {:error, {:invalid_option, %{allow: []}}}
      assert Control.filter(allow: ["bad pattern"]) == {:error, {:invalid_pattern, "bad pattern"}}
      assert Control.filter(deny: "x") == {:error, {:invalid_pattern, "x"}}
    end
  end

  describe "valid_pattern?/1" do
    test "the allowed alphabet and length" do
      assert Control.valid_pattern?("A-Za-z0-9_.*?-")
      assert Control.valid_pattern?(String.duplicate("a", 256))
      refute Control.valid_pattern?(String.duplicate("a", 257))
      refute Control.valid_pattern?("")

      for bad <- [" ", "a/b", "a|b", "é", "a\n", "[ab]", "a+", "a\\b", "{a}"] do
        refute Control.valid_pattern?(bad), "expected #{inspect(bad)} to be invalid"
      end

      refute Control.valid_pattern?(nil)
      refute Control.valid_pattern?(~c"abc")
    end
  end

  describe "the shared pattern table" do
    # The rows the Rust and Python tests also read: pattern | name | match, nomatch or invalid.
    @table Path.expand("../../fixtures/pattern_cases.txt", __DIR__)
    @external_resource @table

    test "valid_pattern?/1 agrees with every row" do
      rows =
        for line <- File.read!(@table) |> String.split("\n"),
            String.trim(line) != "",
            not String.starts_with?(line, "#") do
          [pattern, _name, expected] = String.split(line, " | ")
          {pattern, String.trim_trailing(expected)}
        end

      assert length(rows) >= 40

      for {pattern, expected} <- rows do
        assert expected in ["match", "nomatch", "invalid"]

        assert Control.valid_pattern?(pattern) == (expected != "invalid"),
               "#{inspect(pattern)} should be #{expected}"
      end
    end
  end
end
