defmodule Snakepit.Telemetry.ScaleTest do
  # Thousands of registrations (stderr-only, endpoint :none): list_streams/0 and :all
  # controls still cover every one. (How long they take, and that they never hold a normal
  # scheduler, is measured in bench/inspection_at_scale.exs, not asserted here.)
  use ExUnit.Case, async: false

  alias Snakepit.Telemetry.GrpcStream

  test "2,000 registrations: list_streams shows all, :all changes apply to all of them" do
    mine = register_idle(2_000, :scale)
    assert length(mine.()) == 2_000
    assert Enum.all?(mine.(), &(&1.status == :not_streaming and &1.endpoint == :none))

    assert :ok = GrpcStream.toggle(:all, false)
    assert :ok = GrpcStream.update_filter(:all, deny: ["python.gc.*"])
    assert Enum.all?(mine.(), &(&1.enabled == false and &1.deny == ["python.gc.*"]))
    assert :ok = GrpcStream.toggle(:all, true)
  end

  # Up to 256 changes are applied on GrpcStream's own scheduler, 32 per NIF call (more on a
  # dirty scheduler, above): every chunk must land, the last, short one too.
  test "100 registrations: :all changes made in chunks reach every one" do
    mine = register_idle(100, :chunks)
    assert length(mine.()) == 100

    assert :ok = GrpcStream.update_sampling(:all, 0.25)
    assert :ok = GrpcStream.toggle(:all, false)
    assert Enum.all?(mine.(), &(&1.enabled == false and &1.sampling_rate == 0.25))
    assert :ok = GrpcStream.toggle(:all, true)
    assert :ok = GrpcStream.update_sampling(:all, 1.0)
    assert Enum.all?(mine.(), &(&1.enabled == true and &1.sampling_rate == 1.0))
  end

  # Registers `count` stderr-only workers under `pool` (unregistered when the test ends);
  # returns a function that lists their streams.
  defp register_idle(count, pool) do
    ids = for i <- 1..count, do: "#{pool}-#{i}-#{System.unique_integer([:positive])}"
    on_exit(fn -> Enum.each(ids, &GrpcStream.unregister_worker/1) end)
    for id <- ids, do: :ok = GrpcStream.register_worker(id, :none, pool_name: pool)
    fn -> Enum.filter(GrpcStream.list_streams(), &(&1.metadata[:pool_name] == pool)) end
  end
end
