defmodule Snakepit.Telemetry.Dispatcher do
  @moduledoc """
  Runs the handlers: receives event batches from the NIF, has the NIF make each batch's
  events into terms on this process's heap (`Native.take_events/1`, a chunk of at most about
  200 µs per call), calls `:telemetry.execute/3` for each event, then acknowledges the batch
  so the NIF may send the next one.

  There are `partition_count/0` Dispatchers (the config's `:dispatchers`, by default one
  per scheduler), and each worker's batches go to one of them, chosen by its
  id (`partition/1`): the handlers of different workers run in parallel, each worker's
  events keep their order, and a slow handler stalls only the workers of its partition.

  They are separate from `Snakepit.Telemetry.GrpcStream` so that handlers never run in the
  process that serves registration and control calls: a slow handler never delays them,
  and a handler may call any `GrpcStream` function. A Dispatcher's mailbox holds at most
  `max_in_flight_batches` unacknowledged batches per worker; the NIF buffers (and past its
  bounds drops and counts) the rest. A handler that raises is detached by `:telemetry`, as
  for any other event.

  Each keeps a heap of at least about 1 MiB (`min_heap_size` 121,536 words, one of the
  sizes the VM uses as given): a batch of 1,024 typical events makes at most about 53,000
  words of terms (their flat size; shared keys make them take less), and on a heap that
  shrinks back after each batch every batch's terms were copied by a garbage collection
  while its handlers ran. With the heap kept, the full path took 0.36–0.38 µs of CPU per
  event instead of 0.39–0.43 (the schedulers' share fell by a fifth) with a busy tool
  streaming about 1 M events/s (`bench/tool_throughput.exs`).

  If one crashes or is killed, it is restarted and registers itself with the NIF again;
  events of the batches that were in its mailbox are counted as `:undeliverable` (of the
  batch it was running, those from the chunk it was on: the earlier chunks' handlers ran
  and count as emitted), and the streams go on. Stream and connection events of its workers are not lost: those that happen
  while it is down wait in the NIF, and those that were in its mailbox come back (each
  travels with a ticket it acknowledges), and its successor gets them in order.

  It emits every worker event of the catalog, the stream events
  `[:snakepit, :grpc, :stream, :opened | :closed]` and the connection events
  `[:snakepit, :grpc, :connection, :established | :lost | :reconnected]`; see
  `Snakepit.Telemetry.GrpcStream`.
  """

  use GenServer

  alias Snakepit.Telemetry.{GrpcStream, Native}

  @partitions_key {__MODULE__, :partitions}
  # See the moduledoc: room for a few batches' terms without a collection per batch.
  @min_heap_words 121_536

  @doc false
  def child_spec(opts) do
    partition = Keyword.fetch!(opts, :partition)
    %{id: {__MODULE__, partition}, start: {__MODULE__, :start_link, [opts]}}
  end

  @doc false
  def start_link(opts) do
    partition = Keyword.fetch!(opts, :partition)

    GenServer.start_link(__MODULE__, partition,
      name: name(partition),
      spawn_opt: [min_heap_size: @min_heap_words]
    )
  end

  @doc """
  How many Dispatchers there are (the config's `:dispatchers` when the application started).

      iex> Snakepit.Telemetry.Dispatcher.partition_count() >= 1
      true
  """
  @spec partition_count() :: pos_integer()
  def partition_count, do: :persistent_term.get(@partitions_key, System.schedulers_online())

  @doc false
  # Fixed for the application's lifetime (the NIF runtime is started with one receiver each).
  def put_partition_count(count) when is_integer(count) and count > 0 do
    if :persistent_term.get(@partitions_key, nil) != count,
      do: :persistent_term.put(@partitions_key, count)

    :ok
  end

  @doc """
  The partition whose Dispatcher runs the handlers of `worker_id`'s events.

      iex> p = Snakepit.Telemetry.Dispatcher.partition("worker_1")
      iex> p in 0..(Snakepit.Telemetry.Dispatcher.partition_count() - 1)
      true
  """
  @spec partition(String.t()) :: non_neg_integer()
  def partition(worker_id), do: :erlang.phash2(worker_id, partition_count())

  @doc "The registered name of the Dispatcher of `partition`."
  @spec name(non_neg_integer()) :: atom()
  def name(partition), do: Module.concat(__MODULE__, "P#{partition}")

  @doc "The pid of the Dispatcher that runs `worker_id`'s handlers, or nil."
  @spec whereis(String.t()) :: pid() | nil
  def whereis(worker_id), do: Process.whereis(name(partition(worker_id)))

  @doc "The pids of all Dispatchers, in partition order (nil where one is restarting)."
  @spec pids() :: [pid() | nil]
  def pids, do: for(p <- 0..(partition_count() - 1), do: Process.whereis(name(p)))

  @impl GenServer
  def init(partition) do
    # After a restart: this partition's batches and stream messages come here from now on.
    case GrpcStream.runtime() do
      nil -> :ok
      runtime -> Native.set_receiver(runtime, partition, self())
    end

    {:ok, %{node: node(), partition: partition}}
  end

  @impl GenServer
  def handle_info({:snakepit_telemetry_batch, batch, _worker_id, _generation, batch_node}, state) do
    node = node()

    try do
      # A node renamed (Node.start/2) after the batch was sent: tell the truth now.
      execute_batch(batch, if(batch_node == node, do: nil, else: node))
    after
      Native.ack(batch)
    end

    {:noreply, update_node(state, batch_node, node)}
  end

  def handle_info(
        {:snakepit_telemetry_stream, worker_id, generation, status, sent, ticket},
        state
      ) do
    try do
      emit_stream_event(worker_id, generation, status, sent)
    after
      Native.ack_status(ticket)
    end

    {:noreply, state}
  end

  def handle_info(_unexpected, state), do: {:noreply, state}

  # The batch's events come in chunks (each NIF call makes terms for at most about 200 µs).
  defp execute_batch(batch, renamed_to) do
    {more, events} = Native.take_events(batch)

    if renamed_to == nil do
      Enum.each(events, fn {event, measurements, metadata} ->
        :telemetry.execute(event, measurements, metadata)
      end)
    else
      Enum.each(events, fn {event, measurements, metadata} ->
        :telemetry.execute(event, measurements, Map.put(metadata, :node, renamed_to))
      end)
    end

    if more == :more, do: execute_batch(batch, renamed_to)
  end

  defp update_node(state, batch_node, node) when batch_node != node and state.node != node do
    case GrpcStream.runtime() do
      nil -> state
      runtime -> Native.set_node(runtime, node) && %{state | node: node}
    end
  end

  defp update_node(state, _batch_node, _node), do: state

  defp emit_stream_event(worker_id, generation, {:opened, how}, _sent) do
    meta = %{node: node(), worker_id: worker_id, stream_id: generation}

    :telemetry.execute(
      [:snakepit, :grpc, :stream, :opened],
      %{system_time: System.system_time()},
      Map.put(meta, :rpc_method, "StreamTelemetry")
    )

    case how do
      :established ->
        :telemetry.execute(
          [:snakepit, :grpc, :connection, :established],
          %{system_time: System.system_time()},
          meta
        )

      {:reconnected, downtime_ms, attempts} ->
        :telemetry.execute(
          [:snakepit, :grpc, :connection, :reconnected],
          %{downtime: downtime_ms, retry_count: attempts},
          meta
        )
    end
  end

  defp emit_stream_event(worker_id, generation, {:lost, reason, uptime_ms}, sent) do
    emit_closed(worker_id, generation, reason, sent)

    :telemetry.execute(
      [:snakepit, :grpc, :connection, :lost],
      %{uptime: uptime_ms},
      %{node: node(), worker_id: worker_id, stream_id: generation, reason: reason}
    )
  end

  defp emit_stream_event(worker_id, generation, {:closed, reason}, sent),
    do: emit_closed(worker_id, generation, reason, sent)

  # The registration ended while no stream was open: nothing was closed.
  defp emit_stream_event(_worker_id, _generation, {:ended, _reason}, _sent), do: :ok

  defp emit_closed(worker_id, generation, reason, sent) do
    :telemetry.execute(
      [:snakepit, :grpc, :stream, :closed],
      %{message_count: sent},
      %{node: node(), worker_id: worker_id, stream_id: generation, reason: reason}
    )
  end
end
