defmodule Snakepit.Telemetry.Test.Proto do
  @moduledoc """
  Hand-encodes `TelemetryEvent` messages, including what no well-behaved worker sends
  (NaN and infinite doubles, which Elixir floats cannot hold), for the `raw_hex` command
  of the scripted worker.
  """

  import Bitwise

  @nan <<0, 0, 0, 0, 0, 0, 0xF8, 0x7F>>
  @inf <<0, 0, 0, 0, 0, 0, 0xF0, 0x7F>>
  @neg_inf <<0, 0, 0, 0, 0, 0, 0xF0, 0xFF>>

  @doc """
  The bytes of one event. Measurement values: integers, floats, binaries, or `:nan`,
  `:inf`, `:neg_inf`, `:neg_zero`. Options: `timestamp_ns` (default
  1_700_000_000_000_000_000) and `correlation_id` (none by default).
  """
  def event(name, measurements, metadata \\ %{}, opts \\ []) do
    parts = name |> String.split(".") |> Enum.map(&field(1, 2, &1))

    ms =
      Enum.map(measurements, fn {k, v} ->
        field(2, 2, [field(1, 2, to_string(k)), field(2, 2, value(v))])
      end)

    md =
      Enum.map(metadata, fn {k, v} -> field(3, 2, [field(1, 2, to_string(k)), field(2, 2, v)]) end)

    timestamp = [<<4 <<< 3>>, varint(Keyword.get(opts, :timestamp_ns, 1_700_000_000_000_000_000))]

    correlation =
      case Keyword.get(opts, :correlation_id) do
        nil -> []
        id -> field(5, 2, id)
      end

    IO.iodata_to_binary([parts, ms, md, timestamp, correlation])
  end

  @doc "The same as lowercase hex, for `raw_hex`."
  def hex(bytes), do: Base.encode16(bytes, case: :lower)

  defp value(v) when is_integer(v), do: [<<1 <<< 3>>, varint(v)]
  defp value(v) when is_float(v), do: [<<2 <<< 3 ||| 1>>, <<v::float-little-64>>]
  defp value(:nan), do: [<<2 <<< 3 ||| 1>>, @nan]
  defp value(:inf), do: [<<2 <<< 3 ||| 1>>, @inf]
  defp value(:neg_inf), do: [<<2 <<< 3 ||| 1>>, @neg_inf]
  defp value(:neg_zero), do: [<<2 <<< 3 ||| 1>>, <<0, 0, 0, 0, 0, 0, 0, 0x80>>]
  defp value(v) when is_binary(v), do: field(3, 2, v)

  defp field(number, 2, payload) do
    payload = IO.iodata_to_binary(payload)
    [varint(number <<< 3 ||| 2), varint(byte_size(payload)), payload]
  end

  defp varint(n) when n < 0, do: varint(n + (1 <<< 64))
  defp varint(n) when n < 0x80, do: <<n>>
  defp varint(n), do: <<(n &&& 0x7F) ||| 0x80, varint(n >>> 7)::binary>>
end
