defmodule Snakepit.Telemetry.StandinTest do
  # Exercises the offline stand-in of :telemetry (standin/telemetry/telemetry.ex);
  # test_helper.exs excludes this tag when the real telemetry package is in use.
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog

  @moduletag :telemetry_standin

  # Only the stand-in's docs have examples (and the real module may have no docs).
  if Snakepit.Telemetry.Backend.telemetry_impl() == :standin do
    doctest :telemetry
  end

  setup context do
    id = {__MODULE__, context.test}
    on_exit(fn -> :telemetry.detach(id) end)
    %{id: id, event: [:standin_test, context.test]}
  end

  def forward(event, measurements, metadata, {pid, tag}) do
    send(pid, {tag, event, measurements, metadata})
  end

  def fail(_event, _measurements, _metadata, :raise), do: raise("handler boom")
  def fail(_event, _measurements, _metadata, :throw), do: throw(:handler_throw)
  def fail(_event, _measurements, _metadata, :exit), do: exit(:handler_exit)

  test "the stand-in is the loaded :telemetry" do
    assert Snakepit.Telemetry.Backend.telemetry_impl() == :standin
  end

  test "attach, execute, detach", %{id: id, event: event} do
    assert :telemetry.attach(id, event, &__MODULE__.forward/4, {self(), :got}) == :ok
    assert :telemetry.execute(event, %{count: 1}, %{meta: :data}) == :ok
    assert_receive {:got, ^event, %{count: 1}, %{meta: :data}}

    # Only the exact event, not a prefix or an extension of it.
    :telemetry.execute(event ++ [:more], %{}, %{})
    :telemetry.execute(Enum.take(event, 1), %{}, %{})
    refute_receive {:got, _, _, _}, 20

    assert :telemetry.detach(id) == :ok
    assert :telemetry.detach(id) == {:error, :not_found}
    :telemetry.execute(event, %{count: 2}, %{})
    refute_receive {:got, _, _, _}, 20
  end

  test "handlers run in the caller's process", %{id: id, event: event} do
    test_pid = self()
    :telemetry.attach(id, event, fn _, _, _, _ -> send(test_pid, {:ran_in, self()}) end, nil)
    :telemetry.execute(event, %{}, %{})
    assert_receive {:ran_in, ^test_pid}

    task = Task.async(fn -> :telemetry.execute(event, %{}, %{}) end)
    Task.await(task)
    task_pid = task.pid
    assert_receive {:ran_in, ^task_pid}
  end

  test "a duplicate id is refused", %{id: id, event: event} do
    assert :telemetry.attach(id, event, &__MODULE__.forward/4, {self(), :first}) == :ok

    assert :telemetry.attach(id, event ++ [:x], &__MODULE__.forward/4, nil) ==
             {:error, :already_exists}

    assert :telemetry.attach_many(id, [event], &__MODULE__.forward/4, nil) ==
             {:error, :already_exists}

    :telemetry.execute(event, %{}, %{})
    assert_receive {:first, ^event, _, _}
  end

  test "attach_many/4 attaches to every event; detach removes all", %{id: id, event: event} do
    a = event ++ [:a]
    b = event ++ [:b]
    assert :telemetry.attach_many(id, [a, b], &__MODULE__.forward/4, {self(), :many}) == :ok
    :telemetry.execute(a, %{n: 1}, %{})
    :telemetry.execute(b, %{n: 2}, %{})
    assert_receive {:many, ^a, %{n: 1}, _}
    assert_receive {:many, ^b, %{n: 2}, _}

    assert length(:telemetry.list_handlers(event)) == 2
    assert :telemetry.detach(id) == :ok
    assert :telemetry.list_handlers(event) == []
  end

  test "several handlers on one event all run", %{id: id, event: event} do
    other = {id, :other}
    on_exit(fn -> :telemetry.detach(other) end)
    :telemetry.attach(id, event, &__MODULE__.forward/4, {self(), :one})
    :telemetry.attach(other, event, &__MODULE__.forward/4, {self(), :two})
    :telemetry.execute(event, %{}, %{})
    assert_receive {:one, ^event, _, _}
    assert_receive {:two, ^event, _, _}
  end

  test "invalid arguments raise ArgumentError", %{id: id, event: event} do
    assert_raise ArgumentError, fn -> :telemetry.attach(id, event, fn _ -> :ok end, nil) end
    assert_raise ArgumentError, fn -> :telemetry.attach(id, [], &__MODULE__.forward/4, nil) end
    assert_raise ArgumentError, fn -> :telemetry.attach(id, ["a"], &__MODULE__.forward/4, nil) end

    assert_raise ArgumentError, fn ->
      :telemetry.attach_many(id, [], &__MODULE__.forward/4, nil)
    end

    assert :telemetry.list_handlers(event) == []
  end

  describe "a failing handler" do
    for kind <- [:raise, :throw, :exit] do
      test "that #{kind}s is detached and a failure event is emitted", %{id: id, event: event} do
        kind = unquote(kind)
        failure_id = {id, :failure}
        on_exit(fn -> :telemetry.detach(failure_id) end)

        test_pid = self()

        :telemetry.attach(
          failure_id,
          [:telemetry, :handler, :failure],
          fn name, measurements, metadata, _ ->
            if metadata.handler_id == id,
              do: send(test_pid, {:failure, name, measurements, metadata})
          end,
          nil
        )

        :telemetry.attach_many(id, [event, event ++ [:other]], &__MODULE__.fail/4, kind)

        log =
          capture_log(fn ->
            assert :telemetry.execute(event, %{}, %{}) == :ok
          end)

        assert log =~ "has failed and has been detached"

        assert_receive {:failure, [:telemetry, :handler, :failure], measurements, metadata}
        assert is_integer(measurements.monotonic_time)
        assert is_integer(measurements.system_time)
        assert metadata.event_name == event
        assert metadata.handler_id == id
        assert metadata.handler_config == kind
        assert is_list(metadata.stacktrace)

        case kind do
          :raise ->
            assert {:error, %RuntimeError{message: "handler boom"}} =
                     {metadata.kind, metadata.reason}

          :throw ->
            assert {:throw, :handler_throw} = {metadata.kind, metadata.reason}

          :exit ->
            assert {:exit, :handler_exit} = {metadata.kind, metadata.reason}
        end

        # Detached from all its events.
        assert :telemetry.list_handlers(event) == []
        assert :telemetry.execute(event ++ [:other], %{}, %{}) == :ok
        refute_receive {:failure, _, _, _}, 20
      end
    end

    test "does not stop the other handlers", %{id: id, event: event} do
      good = {id, :good}
      on_exit(fn -> :telemetry.detach(good) end)
      :telemetry.attach(id, event, &__MODULE__.fail/4, :raise)
      :telemetry.attach(good, event, &__MODULE__.forward/4, {self(), :good})
      capture_log(fn -> :telemetry.execute(event, %{}, %{}) end)
      assert_receive {:good, ^event, _, _}
      assert [%{id: ^good}] = :telemetry.list_handlers(event)
    end
  end

  describe "span/3" do
    setup %{id: id, event: event} do
      events = for suffix <- [:start, :stop, :exception], do: event ++ [suffix]
      :telemetry.attach_many(id, events, &__MODULE__.forward/4, {self(), :span})
      :ok
    end

    test "emits start and stop", %{event: event} do
      start = event ++ [:start]
      stop = event ++ [:stop]

      assert :telemetry.span(event, %{start: :meta}, fn -> {:result, %{stop: :meta}} end) ==
               :result

      assert_receive {:span, ^start, start_measurements, start_metadata}
      assert is_integer(start_measurements.monotonic_time)
      assert is_integer(start_measurements.system_time)
      assert %{start: :meta, telemetry_span_context: context} = start_metadata
      assert is_reference(context)

      assert_receive {:span, ^stop, stop_measurements, stop_metadata}
      assert Map.keys(stop_measurements) |> Enum.sort() == [:duration, :monotonic_time]
      assert stop_measurements.duration >= 0
      assert stop_measurements.monotonic_time >= start_measurements.monotonic_time
      assert stop_metadata == %{stop: :meta, telemetry_span_context: context}
    end

    test "adds extra stop measurements", %{event: event} do
      stop = event ++ [:stop]
      assert :telemetry.span(event, %{}, fn -> {:ok, %{rows: 3}, %{}} end) == :ok
      assert_receive {:span, ^stop, %{rows: 3, duration: _, monotonic_time: _}, _}
    end

    test "keeps a given span context", %{event: event} do
      stop = event ++ [:stop]
      :telemetry.span(event, %{telemetry_span_context: :mine}, fn -> {:ok, %{}} end)
      assert_receive {:span, ^stop, _, %{telemetry_span_context: :mine}}
    end

    test "emits exception and re-raises", %{event: event} do
      exception = event ++ [:exception]

      assert_raise RuntimeError, "span boom", fn ->
        :telemetry.span(event, %{start: :meta}, fn -> raise "span boom" end)
      end

      assert_receive {:span, _start, _, %{telemetry_span_context: context}}
      assert_receive {:span, ^exception, measurements, metadata}
      assert Map.keys(measurements) |> Enum.sort() == [:duration, :monotonic_time]

      assert %{kind: :error, reason: %RuntimeError{}, stacktrace: [_ | _], start: :meta} =
               metadata

      assert metadata.telemetry_span_context == context
      refute_receive {:span, _, _, _}, 20
    end

    test "throws and exits are re-raised as they were", %{event: event} do
      exception = event ++ [:exception]
      assert catch_throw(:telemetry.span(event, %{}, fn -> throw(:thrown) end)) == :thrown
      assert_receive {:span, ^exception, _, %{kind: :throw, reason: :thrown}}
      assert catch_exit(:telemetry.span(event, %{}, fn -> exit(:exited) end)) == :exited
      assert_receive {:span, ^exception, _, %{kind: :exit, reason: :exited}}
    end

    test "a bad return value is an exception", %{event: event} do
      exception = event ++ [:exception]
      assert_raise ArgumentError, fn -> :telemetry.span(event, %{}, fn -> :no_tuple end) end
      assert_receive {:span, ^exception, _, %{kind: :error, reason: %ArgumentError{}}}
    end
  end

  test "list_handlers/1 matches by prefix", %{id: id, event: event} do
    other = {id, :other}
    on_exit(fn -> :telemetry.detach(other) end)
    fun = &__MODULE__.forward/4
    :telemetry.attach(id, event ++ [:a, :b], fun, :config_a)
    :telemetry.attach(other, event ++ [:c], fun, :config_c)

    assert [
             %{id: ^id, event_name: a, function: ^fun, config: :config_a},
             %{id: ^other, event_name: c, config: :config_c}
           ] = :telemetry.list_handlers(event)

    assert a == event ++ [:a, :b]
    assert c == event ++ [:c]
    assert [%{id: ^id}] = :telemetry.list_handlers(event ++ [:a])
    assert [%{id: ^id}] = :telemetry.list_handlers(event ++ [:a, :b])
    assert :telemetry.list_handlers(event ++ [:a, :b, :c]) == []
    assert length(:telemetry.list_handlers([])) >= 2
  end

  test "concurrent attaches are all kept; one id wins once", %{event: event} do
    ids = for n <- 1..50, do: {__MODULE__, :concurrent, n}
    on_exit(fn -> Enum.each(ids, &:telemetry.detach/1) end)

    results =
      ids
      |> Task.async_stream(&:telemetry.attach(&1, event, fn _, _, _, _ -> :ok end, nil),
        max_concurrency: 50
      )
      |> Enum.map(fn {:ok, result} -> result end)

    assert Enum.all?(results, &(&1 == :ok))
    assert length(:telemetry.list_handlers(event)) == 50

    same = {__MODULE__, :same_id}
    on_exit(fn -> :telemetry.detach(same) end)

    results =
      1..20
      |> Task.async_stream(
        fn _ -> :telemetry.attach(same, event ++ [:same], fn _, _, _, _ -> :ok end, nil) end,
        max_concurrency: 20
      )
      |> Enum.map(fn {:ok, result} -> result end)

    assert Enum.count(results, &(&1 == :ok)) == 1
    assert Enum.count(results, &(&1 == {:error, :already_exists})) == 19
  end

  test "no application needs to be started" do
    refute Enum.any?(Application.started_applications(), &(elem(&1, 0) == :telemetry))
    assert :telemetry.execute([:standin_test, :no_app], %{}, %{}) == :ok
  end
end
