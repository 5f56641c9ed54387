defmodule Snakepit.TelemetryTest do
  # async: false: attach_* use fixed, global handler ids.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog

  alias Snakepit.Telemetry.{Catalog, Naming}

  doctest Snakepit.Telemetry

  # Snakepit v0.13's Snakepit.Telemetry.events/0, in its order
  # (lib/snakepit/telemetry.ex of nshkrdotcom/snakepit, the v0.13.0 release).
  @snakepit_events [
    # session_events/0
    [:snakepit, :session_store, :session, :created],
    [:snakepit, :session_store, :session, :accessed],
    [:snakepit, :session_store, :session, :deleted],
    [:snakepit, :session_store, :session, :expired],
    # program_events/0
    [:snakepit, :session_store, :program, :stored],
    [:snakepit, :session_store, :program, :retrieved],
    [:snakepit, :session_store, :program, :deleted],
    # heartbeat_events/0
    [:snakepit, :heartbeat, :monitor_started],
    [:snakepit, :heartbeat, :monitor_stopped],
    [:snakepit, :heartbeat, :monitor_failure],
    [:snakepit, :heartbeat, :ping_sent],
    [:snakepit, :heartbeat, :pong_received],
    [:snakepit, :heartbeat, :heartbeat_timeout],
    # pool_events/0
    [:snakepit, :pool, :initialized],
    [:snakepit, :pool, :init_started],
    [:snakepit, :pool, :init_complete],
    [:snakepit, :pool, :status],
    [:snakepit, :pool, :queue, :enqueued],
    [:snakepit, :pool, :queue, :dequeued],
    [:snakepit, :pool, :queue, :timeout],
    [:snakepit, :pool, :worker, :spawn_started],
    [:snakepit, :pool, :worker, :spawned],
    [:snakepit, :pool, :worker_ready],
    [:snakepit, :pool, :worker, :spawn_failed],
    [:snakepit, :pool, :worker, :terminated],
    [:snakepit, :pool, :worker, :restarted],
    [:snakepit, :worker, :recycled],
    [:snakepit, :session, :created],
    [:snakepit, :session, :destroyed],
    [:snakepit, :session, :affinity, :assigned],
    [:snakepit, :session, :affinity, :broken],
    # python_events/0
    [:snakepit, :python, :call, :start],
    [:snakepit, :python, :call, :stop],
    [:snakepit, :python, :call, :exception],
    [:snakepit, :python, :memory, :sampled],
    [:snakepit, :python, :cpu, :sampled],
    [:snakepit, :python, :gc, :completed],
    [:snakepit, :python, :error, :occurred],
    [:snakepit, :python, :tool, :execution, :start],
    [:snakepit, :python, :tool, :execution, :stop],
    [:snakepit, :python, :tool, :execution, :exception],
    [:snakepit, :python, :tool, :result_size],
    # grpc_events/0
    [:snakepit, :grpc, :call, :start],
    [:snakepit, :grpc, :call, :stop],
    [:snakepit, :grpc, :call, :exception],
    [:snakepit, :grpc, :stream, :opened],
    [:snakepit, :grpc, :stream, :message],
    [:snakepit, :grpc, :stream, :closed],
    [:snakepit, :grpc, :connection, :established],
    [:snakepit, :grpc, :connection, :lost],
    [:snakepit, :grpc, :connection, :reconnected],
    # script_events/0
    [:snakepit, :script, :shutdown, :start],
    [:snakepit, :script, :shutdown, :stop],
    [:snakepit, :script, :shutdown, :cleanup],
    [:snakepit, :script, :shutdown, :exit],
    # runtime_events/0
    [:snakepit, :zero_copy, :export],
    [:snakepit, :zero_copy, :import],
    [:snakepit, :zero_copy, :fallback],
    [:snakepit, :worker, :crash],
    [:snakepit, :worker, :tainted],
    [:snakepit, :worker, :restarted],
    [:snakepit, :python, :exception, :mapped],
    [:snakepit, :python, :exception, :unmapped],
    # deprecation_events/0
    [:snakepit, :deprecated, :module_used]
  ]

  # Catalog events Snakepit does not have.
  @ours_only [[:snakepit, :python, :telemetry, :dropped]]

  describe "events/0" do
    test "is exactly Snakepit's list, in its order" do
      assert Snakepit.Telemetry.events() == @snakepit_events
      assert length(Snakepit.Telemetry.events()) == 64
    end

    test "every event is a list of atoms starting with :snakepit, none twice" do
      events = Snakepit.Telemetry.events()

      for event <- events do
        assert [:snakepit | rest] = event
        assert length(rest) in 2..4, inspect(event)
        assert Enum.all?(event, &is_atom/1), inspect(event)
      end

      assert Enum.uniq(events) == events
    end

    test "joins the family lists in Snakepit's order" do
      families = [
        session_events: 4,
        program_events: 3,
        heartbeat_events: 6,
        pool_events: 18,
        python_events: 11,
        grpc_events: 9,
        script_events: 4,
        runtime_events: 8,
        deprecation_events: 1
      ]

      lists =
        for {fun, count} <- families do
          list = apply(Snakepit.Telemetry, fun, [])
          assert length(list) == count, "#{fun}/0"
          list
        end

      assert Enum.concat(lists) == Snakepit.Telemetry.events()
    end

    test "holds every catalog event, but the ones Snakepit does not have" do
      events = MapSet.new(Snakepit.Telemetry.events())

      for %{event: event} <- Catalog.events(), event not in @ours_only do
        assert event in events, "catalog event #{inspect(event)} is not one of Snakepit's"
      end

      for event <- @ours_only, do: refute(event in events)
    end

    test "holds what every Naming builder gives for Snakepit's names" do
      events = MapSet.new(Snakepit.Telemetry.events())

      built =
        Enum.map(Naming.pool_events(), &Naming.pool_event/1) ++
          Enum.map(Naming.session_events(), &Naming.session_event/1) ++
          Enum.map(Naming.python_events(), &Naming.python_event/1)

      for event <- built, do: assert(event in events, inspect(event))

      for %{event: [:snakepit, :grpc, kind, name]} <- Catalog.events() do
        assert Naming.grpc_event(kind, name) in events
      end

      assert Naming.pool_event(:worker_ready) in Snakepit.Telemetry.pool_events()
    end
  end

  describe "attach_* handlers" do
    setup do
      ids = ["snakepit-session-logger", "snakepit-program-logger", "snakepit-heartbeat-logger"]
      Enum.each(ids, &:telemetry.detach/1)
      on_exit(fn -> Enum.each(ids, &:telemetry.detach/1) end)
      :ok
    end

    test "attach_handlers/0 attaches the three, once" do
      assert Snakepit.Telemetry.attach_handlers() == :ok
      assert Snakepit.Telemetry.attach_handlers() == {:error, :already_exists}
      assert Snakepit.Telemetry.attach_session_handlers() == {:error, :already_exists}

      ids =
        [:snakepit]
        |> :telemetry.list_handlers()
        |> Enum.map(& &1.id)
        |> Enum.filter(&String.starts_with?(&1, "snakepit-"))
        |> Enum.uniq()
        |> Enum.sort()

      assert ids == [
               "snakepit-heartbeat-logger",
               "snakepit-program-logger",
               "snakepit-session-logger"
             ]
    end

    test "the handlers log Snakepit's lines" do
      :ok = Snakepit.Telemetry.attach_handlers()

      log =
        capture_log(fn ->
          :telemetry.execute([:snakepit, :session_store, :session, :created], %{}, %{
            session_id: "s1"
          })

          :telemetry.execute([:snakepit, :session_store, :program, :stored], %{}, %{
            program_id: "p1",
            session_id: "s1"
          })

          :telemetry.execute([:snakepit, :heartbeat, :heartbeat_timeout], %{count: 3}, %{
            worker_id: "w1"
          })
        end)

      assert log =~ "Session created: s1"
      assert log =~ "Program stored: p1 in session s1"
      assert log =~ "Heartbeat timeout for w1 missed=3"
    end

    test "a missing metadata key does not detach the handler" do
      :ok = Snakepit.Telemetry.attach_session_handlers()

      log =
        capture_log(fn ->
          :telemetry.execute([:snakepit, :session_store, :session, :deleted], %{}, %{})
        end)

      assert log =~ "Session deleted: "
      refute log =~ "has failed"

      handlers = :telemetry.list_handlers([:snakepit, :session_store, :session, :deleted])
      assert Enum.any?(handlers, &(&1.id == "snakepit-session-logger"))
    end
  end
end
