defmodule Snakepit.Telemetry.Test.TcpProxy do
  @moduledoc """
  A TCP relay on 127.0.0.1 in front of a worker's port, for tests: `cut/1` closes every
  connection it relays at that moment (both sides), as a network failure would, while it
  keeps accepting new ones.
  """

  use GenServer

  def start_link(target_port), do: GenServer.start_link(__MODULE__, target_port)

  @doc "The port clients connect to."
  def port(proxy), do: GenServer.call(proxy, :port)

  @doc "Closes every connection relayed now; returns how many."
  def cut(proxy), do: GenServer.call(proxy, :cut)

  @doc """
  Stops passing what the worker sends on the connections relayed now: it is still read (so
  the worker's socket does not fill) and never delivered, as bytes a stalled network holds
  and `cut/1` then loses. The other direction and later connections pass as before. Returns
  how many connections it holds.
  """
  def hold(proxy), do: GenServer.call(proxy, :hold)

  @impl true
  def init(target_port) do
    {:ok, listener} =
      :gen_tcp.listen(0, [:binary, active: false, reuseaddr: true, ip: {127, 0, 0, 1}])

    {:ok, port} = :inet.port(listener)
    owner = self()
    acceptor = spawn_link(fn -> accept(listener, target_port, owner) end)
    {:ok, %{listener: listener, port: port, acceptor: acceptor, pipes: []}}
  end

  @impl true
  def handle_call(:port, _from, state), do: {:reply, state.port, state}

  def handle_call(:hold, _from, state) do
    for pid <- state.pipes do
      ref = Process.monitor(pid)
      send(pid, {:hold, self(), ref})

      receive do
        {^ref, :holding} -> Process.demonitor(ref, [:flush])
        {:DOWN, ^ref, _, _, _} -> :ok
      end
    end

    {:reply, length(state.pipes), state}
  end

  def handle_call(:cut, _from, state) do
    for pid <- state.pipes, do: Process.exit(pid, :kill)
    {:reply, length(state.pipes), %{state | pipes: []}}
  end

  @impl true
  def handle_cast({:pipe, pid}, state), do: {:noreply, %{state | pipes: [pid | state.pipes]}}

  defp accept(listener, target_port, owner) do
    case :gen_tcp.accept(listener) do
      {:ok, client} ->
        {:ok, upstream} = :gen_tcp.connect({127, 0, 0, 1}, target_port, [:binary, active: false])

        # One process owns both sockets: killing it closes both, at once.
        pipe = spawn(fn -> relay(client, upstream) end)
        :ok = :gen_tcp.controlling_process(client, pipe)
        :ok = :gen_tcp.controlling_process(upstream, pipe)
        send(pipe, :go)
        GenServer.cast(owner, {:pipe, pipe})
        accept(listener, target_port, owner)

      {:error, _} ->
        :ok
    end
  end

  defp relay(client, upstream) do
    receive do
      :go -> :ok
    end

    :ok = :inet.setopts(client, active: :once)
    :ok = :inet.setopts(upstream, active: :once)
    loop(client, upstream, false)
  end

  # `holding`: what the worker sends is read and not delivered (`hold/1`).
  defp loop(client, upstream, holding) do
    receive do
      {:tcp, ^client, data} ->
        forward(data, upstream, client, upstream, holding)

      {:tcp, ^upstream, _data} when holding ->
        :ok = :inet.setopts(upstream, active: :once)
        loop(client, upstream, holding)

      {:tcp, ^upstream, data} ->
        forward(data, client, client, upstream, holding)

      {:hold, from, ref} ->
        send(from, {ref, :holding})
        loop(client, upstream, true)

      {:tcp_closed, _} ->
        close(client, upstream)

      {:tcp_error, _, _} ->
        close(client, upstream)
    end
  end

  # Sends `data` on `to`, reads on from the socket it came from; either side failing ends
  # the relay (both sockets closed).
  defp forward(data, to, client, upstream, holding) do
    from = if to == upstream, do: client, else: upstream

    with :ok <- :gen_tcp.send(to, data),
         :ok <- :inet.setopts(from, active: :once) do
      loop(client, upstream, holding)
    else
      {:error, _} -> close(client, upstream)
    end
  end

  defp close(client, upstream) do
    :gen_tcp.close(client)
    :gen_tcp.close(upstream)
  end
end
