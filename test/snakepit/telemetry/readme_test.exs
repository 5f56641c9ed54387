defmodule Snakepit.Telemetry.ReadmeTest do
  use ExUnit.Case, async: true

  @readme Path.expand("../../../README.md", __DIR__)

  test "the README's catalog table is the catalog" do
    readme = File.read!(@readme)
    [_, rest] = String.split(readme, ~r/<!-- catalog-table:start[^>]*-->\n/, parts: 2)
    [table, _] = String.split(rest, "<!-- catalog-table:end -->", parts: 2)
    assert table == Snakepit.Telemetry.Catalog.markdown_table()
  end
end
