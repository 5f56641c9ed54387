defmodule Mix.Tasks.Compile.SnakepitNative do
  @shortdoc "Builds the snakepit_telemetry Rust NIF with cargo"

  @moduledoc """
  Builds the Rust NIF of `snakepit_telemetry` with `cargo` and copies the shared
  library into `priv/native/`.

  This compiler is listed in the project's `:compilers` (`[:snakepit_native] ++
  Mix.compilers()`), so it runs on every `mix compile`, before the Elixir
  compiler. It runs, from the project root:

      cargo build --release --manifest-path <root>/Cargo.toml -p snakepit_telemetry_nif \\
        --target-dir <target dir>

  and finds the library where cargo puts it, as rustler's Mix compiler does:
  `<target dir>/release/` plus the platform's file name for a `cdylib`,
  `libsnakepit_telemetry_nif.so` (Linux and other Unixes),
  `libsnakepit_telemetry_nif.dylib` (macOS) or `snakepit_telemetry_nif.dll`
  (Windows). The target directory is `CARGO_TARGET_DIR` when set (relative to
  the project root when relative), else `<root>/target`; it is passed to cargo
  explicitly, so a `build.target-dir` in a `.cargo/config.toml` cannot move the
  library elsewhere.

  It then builds the Python bridge's native encoder the same way (`-p
  snakepit_bridge_wire`, a PyO3 extension module) and copies it to
  `priv/python/snakepit_bridge/telemetry/_wire.abi3.so` (`_wire.pyd` on Windows). That
  one is optional: if it fails, a warning says so and Python workers serialize events
  with protobuf instead.

  The library is copied to `priv/native/libsnakepit_telemetry_nif.so`
  (`libsnakepit_telemetry_nif.dll` on Windows), the name
  `Snakepit.Telemetry.Native` loads (`:erlang.load_nif/2` appends `.so`, on macOS
  too, or `.dll`), only when its content changed. Cargo itself decides what to
  rebuild, so a no-op build takes a fraction of a second. Cargo's progress and
  diagnostics stream to the terminal as usual.

  ## Environment

    * `CARGO_TARGET_DIR`: cargo's target directory (see above).
    * `SNAKEPIT_TELEMETRY_SKIP_NATIVE=1` skips the native build entirely (for
      documentation builds or pure-Elixir work). The NIF is then not available
      at run time.

  ## Errors

  `Mix.raise/1` is called with an explanation when `cargo` is not on the `PATH`
  (with how to install Rust), when the build fails, or when cargo succeeds but
  the library is not where it must be.
  """

  use Mix.Task.Compiler

  @crate "snakepit_telemetry_nif"
  @wire_crate "snakepit_bridge_wire"
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
    File.rm(destination(priv_dir(@default_root), :os.type()))
    :ok
  end

  @impl Mix.Task.Compiler
  def manifests, do: []

  @doc false
  # Options (for tests): :root (the Cargo workspace root and project root),
  # :priv_dir (where `native/` is created), :path (the PATH searched for cargo),
  # :target_dir (instead of CARGO_TARGET_DIR), :profile (:release, the default,
  # or :debug).
  @spec build(keyword()) :: {:ok | :noop, []}
  def build(opts) do
    root = Keyword.get(opts, :root, @default_root)
    priv = Keyword.get(opts, :priv_dir, priv_dir(root))
    path = Keyword.get_lazy(opts, :path, fn -> System.get_env("PATH", "") end)
    profile = Keyword.get(opts, :profile, :release)

    target_dir =
      Keyword.get_lazy(opts, :target_dir, fn ->
        target_dir(root, System.get_env("CARGO_TARGET_DIR"))
      end)

    cargo = find_cargo(path)
    run_cargo(cargo, root, target_dir, profile)
    source = built_library(target_dir, profile, :os.type())
    result = copy_if_changed(source, destination(priv, :os.type()))
    build_python_encoder(cargo, root, priv, target_dir, profile)
    result
  end

  # The Python bridge's native encoder (`native/#{@wire_crate}`, a PyO3 extension module):
  # optional, since `snakepit_bridge` falls back to protobuf without it, so a failed build
  # is reported and compilation goes on. Skipped when the crate is not in `root`.
  defp build_python_encoder(cargo, root, priv, target_dir, profile) do
    if File.regular?(Path.join([root, "native", @wire_crate, "Cargo.toml"])) do
      args =
        ["build"] ++
          if(profile == :release, do: ["--release"], else: []) ++
          ["--manifest-path", Path.join(root, "Cargo.toml"), "-p", @wire_crate] ++
          ["--target-dir", target_dir]

      Mix.shell().info("Building the Python bridge's native encoder #{@wire_crate} (#{profile})")
      {_output, status} = System.cmd(cargo, args, cd: root, into: IO.stream(:stdio, :line))
      {built, loaded} = python_extension_names(@wire_crate, :os.type())
      file = Path.join([target_dir, Atom.to_string(profile), built])

      if status == 0 and File.regular?(file) do
        copy_if_changed(file, Path.join([priv, "python", "snakepit_bridge", "telemetry", loaded]))
      else
        Mix.shell().error("""
        warning: the Python bridge's native encoder (crate #{@wire_crate}) was not built \
        (cargo exit status #{status}); Python workers will serialize events with protobuf \
        instead, at several times the CPU per event.
        """)
      end
    end
  end

  @doc false
  # The file cargo builds for the PyO3 crate `crate` on `os_type`, and the name Python
  # imports it by (`_wire`, built against the stable ABI).
  @spec python_extension_names(String.t(), {atom(), atom()}) :: {String.t(), String.t()}
  def python_extension_names(crate, {:win32, _}), do: {"#{crate}.dll", "_wire.pyd"}
  def python_extension_names(crate, {:unix, :darwin}), do: {"lib#{crate}.dylib", "_wire.abi3.so"}
  def python_extension_names(crate, {:unix, _}), do: {"lib#{crate}.so", "_wire.abi3.so"}

  @doc false
  # Cargo's target directory: `cargo_target_dir` (the value of CARGO_TARGET_DIR)
  # when set, relative to `root` when relative, else `<root>/target`.
  @spec target_dir(Path.t(), String.t() | nil) :: Path.t()
  def target_dir(root, cargo_target_dir) when cargo_target_dir in [nil, ""],
    do: Path.join(root, "target")

  def target_dir(root, cargo_target_dir), do: Path.expand(cargo_target_dir, root)

  @doc false
  # The file name cargo gives the crate's cdylib on `os_type` (as :os.type/0
  # returns it), and the name it is copied to in priv/native for
  # :erlang.load_nif/2, which appends ".dll" on Windows and ".so" elsewhere.
  @spec library_names({atom(), atom()}) :: {built :: String.t(), loaded :: String.t()}
  def library_names({:win32, _}), do: {"#{@crate}.dll", "lib#{@crate}.dll"}
  def library_names({:unix, :darwin}), do: {"lib#{@crate}.dylib", "lib#{@crate}.so"}
  def library_names({:unix, _}), do: {"lib#{@crate}.so", "lib#{@crate}.so"}

  defp priv_dir(root), do: Path.join(root, "priv")

  defp destination(priv, os_type) do
    {_built, loaded} = library_names(os_type)
    Path.join([priv, "native", loaded])
  end

  defp built_library(target_dir, profile, os_type) do
    {built, _loaded} = library_names(os_type)
    file = Path.join([target_dir, Atom.to_string(profile), built])

    if File.regular?(file) do
      file
    else
      Mix.raise("""
      `cargo build` succeeded but the library of the crate #{@crate} is not where \
      cargo puts a cdylib: #{file} does not exist. Check that the crate's \
      Cargo.toml has `crate-type = ["cdylib"]` and that CARGO_BUILD_TARGET (or \
      `build.target` in .cargo/config.toml) is not set, which would put it in a \
      per-target subdirectory.
      """)
    end
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

  defp run_cargo(cargo, root, target_dir, profile) do
    args =
      ["build"] ++
        if(profile == :release, do: ["--release"], else: []) ++
        [
          "--manifest-path",
          Path.join(root, "Cargo.toml"),
          "-p",
          @crate,
          "--target-dir",
          target_dir
        ]

    Mix.shell().info("Building the Rust NIF #{@crate} with cargo (#{profile})")

    # cargo writes its progress and diagnostics to stderr, which is inherited, so
    # they stream to the terminal (in colour there); anything on stdout is passed on.
    {_output, status} = System.cmd(cargo, args, cd: root, into: IO.stream(:stdio, :line))

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

    :ok
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
end
