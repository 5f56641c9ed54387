defmodule Snakepit.Telemetry.Test.BenchStats do
  @moduledoc "Small statistics and formatting helpers shared by the scripts in `bench/`."

  @doc "The median of a non-empty list of numbers (the mean of the middle two for an even count)."
  def median([_ | _] = xs) do
    sorted = Enum.sort(xs)
    mid = div(length(sorted), 2)

    if rem(length(sorted), 2) == 1,
      do: Enum.at(sorted, mid),
      else: (Enum.at(sorted, mid - 1) + Enum.at(sorted, mid)) / 2
  end

  @doc "`median (min–max)`, rounded to integers."
  def spread([_ | _] = xs) do
    {lo, hi} = Enum.min_max(xs)
    "#{round(median(xs))} (#{round(lo)}–#{round(hi)})"
  end

  @doc "A number with two decimals."
  def fmt(x), do: :erlang.float_to_binary(x * 1.0, decimals: 2)

  @doc """
  The `:erlang.system_monitor` `long_schedule` reports in the mailbox, taken out of it
  (their info lists, oldest first).
  """
  def long_schedules do
    receive do
      {:monitor, _pid, :long_schedule, info} -> [info | long_schedules()]
    after
      0 -> []
    end
  end

  @doc """
  The `long_schedule` reports of `pid` in the mailbox (their info lists, oldest first); the
  others' are taken out of it too, and dropped.
  """
  def long_schedules(pid) do
    receive do
      {:monitor, ^pid, :long_schedule, info} -> [info | long_schedules(pid)]
      {:monitor, _other, :long_schedule, _info} -> long_schedules(pid)
    after
      0 -> []
    end
  end

  @doc """
  The `count_stream` binary (the bare-client baseline): `given`, or the release build under
  `CARGO_TARGET_DIR` (default `target/`); raises with the command that builds it if missing.
  """
  def count_stream!(given \\ nil) do
    target = System.get_env("CARGO_TARGET_DIR") || Path.expand("../../target", __DIR__)
    path = given || Path.join([target, "release", "examples", "count_stream"])

    unless File.regular?(path) do
      raise "#{path} not found: run " <>
              "`cargo build --release --example count_stream -p snakepit_telemetry_core`"
    end

    path
  end

  @doc "The `key=integer` fields of a `count_stream` result line, as a map."
  def count_stream_fields(line) do
    for [k, v] <- Regex.scan(~r/(\w+)=(\d+)/, line, capture: :all_but_first), into: %{} do
      {k, String.to_integer(v)}
    end
  end

  @doc """
  The value of a bench's `--spin READER_NS,SINK_NS` option as `{reader_ns, sink_ns}` (`nil`
  when not given); raises `ArgumentError` on anything else.
  """
  def parse_spin(nil), do: nil

  def parse_spin(string) do
    with [reader, sink] <- String.split(string, ","),
         {reader, ""} when reader >= 0 <- Integer.parse(String.trim(reader)),
         {sink, ""} when sink >= 0 <- Integer.parse(String.trim(sink)) do
      {reader, sink}
    else
      _ ->
        raise ArgumentError,
              "--spin takes READER_NS,SINK_NS (two integers >= 0), got #{inspect(string)}"
    end
  end

  @doc "The `count_stream` arguments for a `parse_spin/1` result."
  def spin_args({reader, sink}),
    do: ["--spin-reader-ns", Integer.to_string(reader), "--spin-sink-ns", Integer.to_string(sink)]

  @doc "Prints a Markdown table."
  def print_table(header, rows) do
    IO.puts("\n| " <> Enum.join(header, " | ") <> " |")
    IO.puts("|" <> String.duplicate("---|", length(header)))
    for row <- rows, do: IO.puts("| " <> Enum.join(row, " | ") <> " |")
    :ok
  end
end
