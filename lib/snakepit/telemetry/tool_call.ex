defmodule Snakepit.Telemetry.ToolCall do
  @moduledoc """
  Calls a tool on a registered worker: the unary `ExecuteTool` RPC of Snakepit's bridge
  protocol, made on the NIF's runtime. Use it through `Snakepit.Telemetry.Worker.execute/4`.

  Each parameter travels as a `google.protobuf.Any` whose value is the parameter's JSON
  (type URL `type.googleapis.com/google.protobuf.StringValue`, as Snakepit's Elixir client
  sends it); the result comes back the same way and is decoded with string keys, never
  atoms. JSON is encoded and decoded by the NIF (serde_json) on dirty schedulers; the call
  itself runs on the NIF's runtime, and the caller only waits for a message.

  ## Telemetry events

    * `[:snakepit, :grpc, :call, :start]`
      * Measurements: `:system_time`.
      * Metadata: `:node`, `:worker_id`, `:rpc_method` (`"ExecuteTool"`), `:tool`,
        `:correlation_id`.
    * `[:snakepit, :grpc, :call, :stop]` when the worker answered (also with
      `success: false`).
      * Measurements: `:duration` (`:native` units), `:request_size` (bytes of JSON
        parameters), `:response_size` (bytes of the JSON result or error).
      * Metadata: as for `:start`, plus `:grpc_status` (`:ok`) and `:success`.
    * `[:snakepit, :grpc, :call, :exception]` when it did not (timeout, gRPC error).
      * Measurements: `:duration`.
      * Metadata: as for `:start`, plus `:grpc_status` (an atom such as `:unavailable`, or
        `:timeout`), `:error_type` and `:error_message`.
  """

  alias Snakepit.Telemetry.{GrpcStream, Native}

  @default_timeout 30_000
  @option_keys [:correlation_id, :timeout, :session_id, :metadata]
  @grpc_codes ~w(ok cancelled unknown invalid_argument deadline_exceeded not_found
                 already_exists permission_denied resource_exhausted failed_precondition
                 aborted out_of_range unimplemented internal unavailable data_loss
                 unauthenticated)a

  @type result ::
          {:ok, term()}
          | {:error,
             :timeout
             | :unknown_worker
             | :not_running
             | {:tool_failed, term()}
             | {:grpc, atom(), String.t()}
             | {:invalid_param, term()}
             | {:invalid_option, term()}
             | {:invalid_result, binary()}
             | :response_too_large}

  @doc """
  A new correlation id in Snakepit's form: `"sp-"` and 24 lowercase hex digits.

      iex> Snakepit.Telemetry.ToolCall.new_correlation_id() =~ ~r/^sp-[0-9a-f]{24}$/
      true
  """
  @spec new_correlation_id() :: String.t()
  def new_correlation_id, do: "sp-" <> Base.encode16(:crypto.strong_rand_bytes(12), case: :lower)

  @doc """
  Calls `tool` on `worker_id` with `params` (a map or keyword list); see
  `Snakepit.Telemetry.Worker.execute/4`.

      iex> Snakepit.Telemetry.ToolCall.execute("nobody", "telemetry_demo", %{})
      {:error, :unknown_worker}
      iex> Snakepit.Telemetry.ToolCall.execute("nobody", "telemetry_demo", %{pid: self()})
      {:error, {:invalid_param, :pid}}
  """
  @spec execute(String.t(), String.t(), map() | keyword(), keyword()) :: result()
  def execute(worker_id, tool, params, opts \\ []) do
    with :ok <- check_name(worker_id, :worker_id),
         :ok <- check_name(tool, :tool),
         {:ok, opts} <- options(opts),
         runtime when runtime != nil <- GrpcStream.runtime() || {:error, :not_running},
         {:ok, encoded} <- Native.json_encode_params(params) do
      call(runtime, worker_id, tool, encoded, opts)
    else
      {:error, {:invalid_params, _}} -> {:error, {:invalid_option, :params}}
      {:error, _} = error -> error
    end
  end

  defp call(runtime, worker_id, tool, encoded, opts) do
    correlation_id = opts[:correlation_id] || new_correlation_id()

    meta = %{
      node: node(),
      worker_id: worker_id,
      rpc_method: "ExecuteTool",
      tool: tool,
      correlation_id: correlation_id
    }

    started = System.monotonic_time()

    :telemetry.execute(
      [:snakepit, :grpc, :call, :start],
      %{system_time: System.system_time()},
      meta
    )

    call =
      Native.execute_tool(
        runtime,
        worker_id,
        tool,
        encoded,
        opts[:session_id],
        Map.to_list(opts[:metadata]),
        correlation_id,
        opts[:timeout],
        self()
      )

    case call do
      {:ok, call_id} ->
        request_size = Enum.reduce(encoded, 0, fn {_, json}, acc -> acc + byte_size(json) end)
        outcome = await(call_id, opts[:timeout])
        finish(outcome, meta, started, request_size)

      {:error, :unknown_worker} = error ->
        error
    end
  end

  # The NIF enforces the timeout itself and always answers; the margin only guards
  # against a runtime that stopped meanwhile.
  defp await(call_id, timeout) do
    receive do
      {:snakepit_tool_result, ^call_id, result} -> result
    after
      timeout + 5_000 -> {:error, :timeout}
    end
  end

  defp finish({:response, true, json, _error, _metadata}, meta, started, request_size) do
    stop(meta, started, request_size, byte_size(json), true)

    case Native.json_decode(json) do
      {:ok, result} -> {:ok, result}
      {:error, :invalid_json} -> {:error, {:invalid_result, json}}
    end
  end

  defp finish({:response, false, _json, error, _metadata}, meta, started, request_size) do
    stop(meta, started, request_size, byte_size(error), false)

    details =
      case Native.json_decode(error) do
        {:ok, decoded} -> decoded
        {:error, :invalid_json} -> error
      end

    {:error, {:tool_failed, details}}
  end

  defp finish({:error, reason}, meta, started, _request_size) do
    {status, type, message, error} =
      case reason do
        :timeout ->
          {:timeout, :timeout, "no answer in time", :timeout}

        :response_too_large ->
          {:out_of_range, :response_too_large, "response over the limit", :response_too_large}

        {:grpc, code, message} ->
          status = Enum.at(@grpc_codes, code, :unknown)
          {status, :grpc, message, {:grpc, status, message}}

        {:transport, text} ->
          {:unavailable, :transport, text, {:grpc, :unavailable, text}}
      end

    :telemetry.execute(
      [:snakepit, :grpc, :call, :exception],
      %{duration: System.monotonic_time() - started},
      Map.merge(meta, %{grpc_status: status, error_type: type, error_message: message})
    )

    {:error, error}
  end

  defp stop(meta, started, request_size, response_size, success) do
    :telemetry.execute(
      [:snakepit, :grpc, :call, :stop],
      %{
        duration: System.monotonic_time() - started,
        request_size: request_size,
        response_size: response_size
      },
      Map.merge(meta, %{grpc_status: :ok, success: success})
    )
  end

  defp check_name(name, what) do
    if is_binary(name) and byte_size(name) in 1..256 and String.valid?(name),
      do: :ok,
      else: {:error, {:"invalid_#{what}", name}}
  end

  defp options(opts) when is_list(opts) do
    with true <- Keyword.keyword?(opts) || {:error, {:invalid_option, opts}},
         [] <- Keyword.keys(opts) -- @option_keys,
         {:ok, timeout} <- timeout(Keyword.get(opts, :timeout, @default_timeout)),
         {:ok, correlation_id} <- correlation_id(Keyword.get(opts, :correlation_id)),
         {:ok, session_id} <- string_option(:session_id, Keyword.get(opts, :session_id, "")),
         {:ok, metadata} <- metadata(Keyword.get(opts, :metadata, %{})) do
      {:ok,
       [
         timeout: timeout,
         correlation_id: correlation_id,
         session_id: session_id,
         metadata: metadata
       ]}
    else
      [key | _] -> {:error, {:invalid_option, key}}
      {:error, _} = error -> error
    end
  end

  defp options(other), do: {:error, {:invalid_option, other}}

  defp timeout(ms) when is_integer(ms) and ms > 0 and ms <= 3_600_000, do: {:ok, ms}
  defp timeout(_), do: {:error, {:invalid_option, :timeout}}

  defp correlation_id(nil), do: {:ok, nil}

  defp correlation_id(id) when is_binary(id) and byte_size(id) in 1..256 do
    if id =~ ~r/^[\x21-\x7e]+$/, do: {:ok, id}, else: {:error, {:invalid_option, :correlation_id}}
  end

  defp correlation_id(_), do: {:error, {:invalid_option, :correlation_id}}

  defp string_option(key, value),
    do: if(valid_string?(value), do: {:ok, value}, else: {:error, {:invalid_option, key}})

  defp valid_string?(s), do: is_binary(s) and byte_size(s) <= 4096 and String.valid?(s)

  defp metadata(map) when is_map(map) and map_size(map) <= 64 do
    if Enum.all?(map, fn {k, v} -> valid_string?(k) and valid_string?(v) end),
      do: {:ok, map},
      else: {:error, {:invalid_option, :metadata}}
  end

  defp metadata(_), do: {:error, {:invalid_option, :metadata}}
end
