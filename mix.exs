# The Mix compiler that builds the Rust NIF must exist before this project (or a
# project depending on it) compiles, so it is loaded from source here.
Code.require_file("mix/tasks/compile.snakepit_native.ex", __DIR__)

defmodule Snakepit.Telemetry.MixProject do
  use Mix.Project

  @version "0.1.0"
  @description "Telemetry from Snakepit's Python workers into :telemetry, over a gRPC stream read by a Rust NIF."

  def project do
    [
      app: :snakepit_telemetry,
      version: @version,
      elixir: "~> 1.14",
      description: @description,
      start_permanent: Mix.env() == :prod,
      build_path: build_path(),
      compilers: [:snakepit_native] ++ Mix.compilers(),
      elixirc_paths: elixirc_paths(),
      deps: deps(),
      package: package(),
      docs: [main: "readme", extras: ["README.md"]]
    ]
  end

  def application do
    [
      mod: {Snakepit.Telemetry.Application, []},
      extra_applications: extra_applications()
    ]
  end

  # How `:telemetry` is provided (see telemetry_source/0):
  #
  #   :code_path - the real telemetry application is already on the code path
  #                (e.g. through ERL_LIBS): nothing is declared, it is only
  #                listed in :extra_applications; built apart (build_path/0).
  #   :hex       - `{:telemetry, "~> 1.0"}` from Hex, as every user with Hex gets.
  #   :standin   - offline, with no real package at hand: the small stand-in in
  #                standin/telemetry/ is compiled into this application. It is
  #                never part of the Hex package.
  defp deps do
    case telemetry_source() do
      :hex -> [{:telemetry, "~> 1.0"}, {:ex_doc, "~> 0.30", only: :dev, runtime: false}]
      _ -> []
    end
  end

  defp extra_applications do
    case telemetry_source() do
      :code_path -> [:logger, :crypto, :telemetry]
      _ -> [:logger, :crypto]
    end
  end

  # A build against a real telemetry from the code path differs from the usual one:
  # no stand-in module, and :telemetry among the applications. Mix's check that every
  # remote call goes to an application we depend on caches that closure of
  # applications in the build directory (.mix/compile.app_tracer) and rebuilds it
  # only when mix.exs or config/ is newer (not on --force); ERL_LIBS changes neither.
  # Sharing a directory, a build against the real telemetry would reuse the closure
  # cached by a stand-in build, without :telemetry, and `mix compile
  # --warnings-as-errors` fails with "... does not depend on :telemetry". So that
  # build has its own directory: _build/real_telemetry/<env>. (MIX_BUILD_ROOT and
  # MIX_BUILD_PATH, when set, take precedence over this.)
  defp build_path do
    if telemetry_source() == :code_path, do: "_build/real_telemetry", else: "_build"
  end

  defp elixirc_paths do
    standin = if telemetry_source() == :standin, do: ["standin/telemetry"], else: []
    support = if Mix.env() == :test, do: ["test/support"], else: []
    ["lib"] ++ standin ++ support
  end

  # Decided once per VM and project directory, so that evaluating this file
  # again later (Mix does when compiling dependencies, when the real telemetry
  # may have reached the code path meanwhile) cannot flip the choice.
  defp telemetry_source do
    key = {__MODULE__, :telemetry_source, __DIR__}

    case :persistent_term.get(key, nil) do
      nil ->
        source = decide_telemetry_source()
        :persistent_term.put(key, source)
        source

      source ->
        source
    end
  end

  defp decide_telemetry_source do
    standin_dir = Path.join(__DIR__, "standin/telemetry")
    deps_dir = System.get_env("MIX_DEPS_PATH") || Path.join(__DIR__, "deps")

    cond do
      real_telemetry_on_code_path?() ->
        :code_path

      System.get_env("SNAKEPIT_TELEMETRY_STANDIN") != "1" and
          (File.dir?(Path.join(deps_dir, "telemetry")) or hex_available?()) ->
        :hex

      File.dir?(standin_dir) ->
        :standin

      # The stand-in is not shipped in the Hex package: a copy without it has
      # to use the real package.
      true ->
        :hex
    end
  end

  defp real_telemetry_on_code_path? do
    is_list(:code.lib_dir(:telemetry)) and Code.ensure_loaded?(:telemetry) and
      not Keyword.has_key?(:telemetry.module_info(:attributes), :snakepit_telemetry_standin)
  end

  defp hex_available? do
    archives = Mix.path_for(:archives)
    Code.ensure_loaded?(Hex) or Path.wildcard(Path.join(archives, "hex-*")) != []
  end

  defp package do
    [
      licenses: ["MIT"],
      links: %{},
      files: [
        "lib",
        "mix",
        "native",
        "proto",
        "priv/python",
        "priv/catalog.txt",
        "priv/bin",
        "Cargo.toml",
        "Cargo.lock",
        ".formatter.exs",
        "mix.exs",
        "README*",
        "LICENSE*",
        "CHANGELOG*"
      ],
      # standin/ is deliberately not listed: Hex users get the real telemetry.
      exclude_patterns: [
        ~r{(^|/)target/},
        ~r{__pycache__},
        ~r{\.pyc$},
        ~r{(^|/)\.(pytest|mypy|ruff)_cache/},
        ~r{(^|/)\.venv/},
        ~r{\.egg-info/},
        ~r{\.(so|dylib|dll)$}
      ]
    ]
  end
end
