defmodule Mix.Tasks.Compile.SnakepitNative do
  @shortdoc "Builds the snakepit_telemetry Rust NIF with cargo"

  @moduledoc """
  Builds the Rust NIF of `snakepit_telemetry` with `cargo` and copies the shared
  library into `priv/native/`.

  This compiler is listed in the project's `:compilers` (`[:snakepit_native] ++
  Mix.compilers()`), so it runs on every `mix compile`, before the Elixir
  compiler. It runs, from the project root:

      cargo build --release --manifest-path <root>/Cargo.toml -p snakepit_telemetry_nif \\
        --message-format=json-render-diagnostics

  Cargo's progress and diagnostics stream to the terminal as usual; the JSON
  messages on its standard output tell where the `cdylib` was written (this
  respects `CARGO_TARGET_DIR` and any `build.target-dir` in `.cargo/config.toml`).
  The library is then copied to `priv/native/libsnakepit_telemetry_nif.so`
  (`.dll` on Windows) only when its content changed. Cargo itself decides what
  to rebuild, so a no-op build takes a fraction of a second.

  ## Environment

    * `SNAKEPIT_TELEMETRY_SKIP_NATIVE=1` skips the native build entirely (for
      documentation builds or pure-Elixir work). The NIF is then not available
      at run time.

  ## Errors

  `Mix.raise/1` is called with an explanation when `cargo` is not on the `PATH`
  (with how to install Rust) or when the build fails.
  """

  use Mix.Task.Compiler

  @crate "snakepit_telemetry_nif"
  @skip_env "SNAKEPIT_TELEMETRY_SKIP_NATIVE"
  # This file lives in <root>/mix/tasks/, also when the project is a dependency.
  @default_root Path.expand("../..", __DIR__)

  @impl Mix.Task.Compiler
  def run(_args) do
    if System.get_env(@skip_env) == "1" do
      Mix.shell().info("Skipping the native build of #{@crate} (#{@skip_env}=1)")
      {:noop, []}
    else
      build([])
    end
  end

  @impl Mix.Task.Compiler
  def clean do
    File.rm(destination(priv_dir(@default_root)))
    :ok
  end

  @impl Mix.Task.Compiler
  def manifests, do: []

  @doc false
  # Options (for tests): :root (the Cargo workspace root and project root),
  # :priv_dir (where `native/` is created), :path (the PATH searched for cargo).
  @spec build(keyword()) :: {:ok | :noop, []}
  def build(opts) do
    root = Keyword.get(opts, :root, @default_root)
    priv = Keyword.get(opts, :priv_dir, priv_dir(root))
    path = Keyword.get_lazy(opts, :path, fn -> System.get_env("PATH", "") end)

    cargo = find_cargo(path)
    artifacts = run_cargo(cargo, root)
    source = pick_artifact(artifacts, root)
    copy_if_changed(source, destination(priv))
  end

  defp priv_dir(root), do: Path.join(root, "priv")

  defp destination(priv) do
    name =
      case :os.type() do
        {:win32, _} -> "#{@crate}.dll"
        _ -> "lib#{@crate}.so"
      end

    Path.join([priv, "native", name])
  end

  defp find_cargo(path) do
    case :os.find_executable(~c"cargo", String.to_charlist(path)) do
      false ->
        Mix.raise("""
        could not find `cargo` on the PATH, so the Rust NIF of snakepit_telemetry \
        (crate #{@crate}) cannot be built.

        Install a recent stable Rust toolchain, for example with rustup:

            curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh

        (see https://rustup.rs), or your system's package (e.g. `apt-get install cargo`), \
        then make sure `cargo` is on the PATH (rustup puts it in ~/.cargo/bin).

        To compile only the Elixir code (for example to build docs), set \
        #{@skip_env}=1; the NIF is then unavailable at run time.
        """)

      cargo ->
        List.to_string(cargo)
    end
  end

  defp run_cargo(cargo, root) do
    manifest = Path.join(root, "Cargo.toml")

    args = [
      "build",
      "--release",
      "--manifest-path",
      manifest,
      "-p",
      @crate,
      "--message-format=json-render-diagnostics"
    ]

    Mix.shell().info("Building the Rust NIF #{@crate} with cargo (release)")

    # stderr (progress and rendered diagnostics) is inherited, so it streams to
    # the terminal; stdout carries one JSON message per line, parsed as it comes.
    port =
      Port.open({:spawn_executable, cargo}, [
        :binary,
        :exit_status,
        :hide,
        {:line, 1_048_576},
        {:args, args},
        {:cd, root}
      ])

    {status, artifacts} = collect(port, "", [])

    if status != 0 do
      Mix.raise("""
      `cargo build` of the Rust NIF #{@crate} failed (exit status #{status}); \
      see cargo's output above.

      Command: #{Enum.join([cargo | args], " ")}
      In: #{root}

      Set #{@skip_env}=1 to compile only the Elixir code (the NIF is then \
      unavailable at run time).
      """)
    end

    artifacts
  end

  defp collect(port, partial, artifacts) do
    receive do
      {^port, {:data, {:noeol, part}}} ->
        collect(port, partial <> part, artifacts)

      {^port, {:data, {:eol, part}}} ->
        collect(port, "", artifacts ++ line(partial <> part))

      {^port, {:exit_status, status}} ->
        {status, artifacts ++ line(partial)}
    end
  end

  defp line(""), do: []
  defp line("{" <> _ = json), do: artifact_files(json)

  defp line(other) do
    IO.puts(other)
    []
  end

  defp pick_artifact(artifacts, root) do
    candidates = Enum.filter(artifacts, &(Path.extname(&1) in [".so", ".dylib", ".dll"]))

    case candidates do
      [file | _] ->
        file

      [] ->
        Mix.raise("""
        `cargo build` succeeded but reported no cdylib for the crate #{@crate} \
        (looked for a .so, .dylib or .dll); check that its Cargo.toml has \
        `crate-type = ["cdylib"]`. Workspace: #{root}
        """)
    end
  end

  defp copy_if_changed(source, dest) do
    new = File.read!(source)

    case File.read(dest) do
      {:ok, ^new} ->
        {:noop, []}

      _ ->
        File.mkdir_p!(Path.dirname(dest))
        # Write to a temporary file and rename, so a running VM that has the old
        # library mapped never sees a half-written file.
        tmp = dest <> ".tmp"
        File.write!(tmp, new)
        File.rename!(tmp, dest)
        Mix.shell().info("Copied #{Path.basename(source)} to #{Path.relative_to_cwd(dest)}")
        {:ok, []}
    end
  end

  @doc false
  # The filenames of a `compiler-artifact` message for the crate's cdylib; []
  # for any other message. Cargo's target object holds no nested objects.
  def artifact_files(json) do
    with true <- String.contains?(json, ~s("reason":"compiler-artifact")),
         [target] <- Regex.run(~r/"target":\{[^{}]*\}/, json),
         true <- String.contains?(target, ~s("name":"#{@crate}")),
         true <- String.contains?(target, ~s("cdylib")),
         [_, files] <- Regex.run(~r/"filenames":\[([^\]]*)\]/, json) do
      ~r/"((?:[^"\\]|\\.)*)"/
      |> Regex.scan(files, capture: :all_but_first)
      |> Enum.map(fn [file] -> unescape(file) end)
    else
      _ -> []
    end
  end

  defp unescape(string) do
    Regex.replace(~r/\\(.)/, string, fn _, char ->
      case char do
        "n" -> "\n"
        "t" -> "\t"
        other -> other
      end
    end)
  end
end
