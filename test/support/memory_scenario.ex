defmodule Snakepit.Telemetry.Test.MemoryScenario do
  @moduledoc """
  The RSS-bound measurement of `hardening_test.exs`, run in a fresh BEAM (`main/0`, started
  by that test with `elixir -pa <ebin>`), so what earlier tests allocated and freed does not
  move the numbers. 300 events of 3 MB are sent in rounds of 10 while a handler is stuck;
  prints one line: `RESULT growth=<bytes> bound=<bytes> received=<n> overflow=<n> emitted=<n>`
  once the handler is released and every event is accounted for.
  """

  alias Snakepit.Telemetry.GrpcStream
  alias Snakepit.Telemetry.Test.{Forwarder, PythonWorker}

  import Snakepit.Telemetry.Test.Streams, only: [register!: 2, stream: 1, wait_until: 2]

  @stop [:snakepit, :python, :tool, :execution, :stop]
  @mib 1024 * 1024

  def main do
    env = [
      max_event_bytes: 4 * @mib,
      max_buffer_bytes: 16 * @mib,
      max_batch_bytes: @mib,
      max_in_flight_batches: 4
    ]

    for {key, value} <- env, do: Application.put_env(:snakepit_telemetry, key, value)
    {:ok, _} = Application.ensure_all_started(:snakepit_telemetry)

    # StreamTelemetry (--no-batched): the NIF keeps reading and drops past its bounds, the
    # harsher case for its memory (a batched stream stops reading instead).
    worker =
      PythonWorker.start([
        "--no-batched",
        "--max-event-bytes",
        "#{4 * @mib}",
        "--max-buffer-bytes",
        "#{64 * @mib}"
      ])

    id = "memory-bound"
    gated = Forwarder.attach_gated(@stop, nil)
    register!(id, worker)
    :erlang.garbage_collect()
    rss_before = rss_bytes()

    for _round <- 1..30 do
      PythonWorker.run(worker, %{
        "op" => "emit",
        "event" => "tool.execution.stop",
        "measurements" => %{"duration" => 1},
        "pad" => %{"tool" => 3_000_000},
        "count" => 10
      })

      PythonWorker.run(worker, %{"op" => "wait_sent", "timeout_ms" => 60_000})
    end

    wait_until(fn -> stream(id).received == 300 end, 60_000)
    dispatcher = receive do: ({:stuck, pid} -> pid)
    :erlang.garbage_collect()
    growth = rss_bytes() - rss_before
    # The documented bound (Snakepit.Telemetry.Config): buffer + in flight + one message
    # being read + the HTTP/2 window (38 MiB here), plus 16 MiB of allocator slack.
    bound = 16 * @mib + 4 * max(@mib, 4 * @mib) + 4 * @mib + 2 * @mib + 16 * @mib

    Forwarder.release(gated, dispatcher)
    wait_until(fn -> stream(id).emitted + stream(id).dropped.overflow == 300 end, 60_000)
    info = stream(id)

    IO.puts(
      "RESULT growth=#{growth} bound=#{bound} received=#{info.received} " <>
        "overflow=#{info.dropped.overflow} emitted=#{info.emitted}"
    )

    GrpcStream.unregister_worker(id)
    PythonWorker.stop(worker)
    System.halt(0)
  end

  defp rss_bytes do
    "/proc/#{System.pid()}/status"
    |> File.read!()
    |> then(&Regex.run(~r/VmRSS:\s+(\d+) kB/, &1, capture: :all_but_first))
    |> then(fn [kb] -> String.to_integer(kb) * 1024 end)
  end
end
