defmodule Snakepit.Telemetry.Test.Json do
  @moduledoc """
  A small JSON decoder for test fixtures (no JSON library can be fetched offline):
  objects, arrays, strings with the common escapes, integers, floats, true/false/null.
  """

  def decode!(text) do
    case value(skip(text)) do
      {value, rest} ->
        if skip(rest) == "",
          do: value,
          else: raise(ArgumentError, "trailing data: #{inspect(rest)}")
    end
  end

  defp value("{" <> rest), do: object(skip(rest), %{})
  defp value("[" <> rest), do: array(skip(rest), [])
  defp value("\"" <> rest), do: string(rest, [])
  defp value("true" <> rest), do: {true, rest}
  defp value("false" <> rest), do: {false, rest}
  defp value("null" <> rest), do: {nil, rest}
  defp value(text), do: number(text)

  defp object("}" <> rest, acc), do: {acc, rest}

  defp object("\"" <> rest, acc) do
    {key, rest} = string(rest, [])
    ":" <> rest = skip(rest)
    {val, rest} = value(skip(rest))
    acc = Map.put(acc, key, val)

    case skip(rest) do
      "," <> rest -> object(skip(rest), acc)
      "}" <> rest -> {acc, rest}
    end
  end

  defp array("]" <> rest, acc), do: {Enum.reverse(acc), rest}

  defp array(text, acc) do
    {val, rest} = value(text)

    case skip(rest) do
      "," <> rest -> array(skip(rest), [val | acc])
      "]" <> rest -> {Enum.reverse([val | acc]), rest}
    end
  end

  defp string("\"" <> rest, acc), do: {IO.iodata_to_binary(Enum.reverse(acc)), rest}
  defp string("\\n" <> rest, acc), do: string(rest, ["\n" | acc])
  defp string("\\t" <> rest, acc), do: string(rest, ["\t" | acc])
  defp string("\\\"" <> rest, acc), do: string(rest, ["\"" | acc])
  defp string("\\\\" <> rest, acc), do: string(rest, ["\\" | acc])
  defp string("\\/" <> rest, acc), do: string(rest, ["/" | acc])

  defp string("\\u" <> <<hex::binary-size(4), rest::binary>>, acc),
    do: string(rest, [<<String.to_integer(hex, 16)::utf8>> | acc])

  defp string(<<c::utf8, rest::binary>>, acc), do: string(rest, [<<c::utf8>> | acc])

  defp number(text) do
    case Integer.parse(text) do
      {int, "." <> _} -> float(text, int)
      {int, <<e, _::binary>>} when e in [?e, ?E] -> float(text, int)
      {int, rest} -> {int, rest}
    end
  end

  defp float(text, _int) do
    {float, rest} = Float.parse(text)
    {float, rest}
  end

  defp skip(<<c, rest::binary>>) when c in [?\s, ?\n, ?\r, ?\t], do: skip(rest)
  defp skip(text), do: text
end
