defmodule Mix.Tasks.Compile.SnakepitNativeTest do
  use ExUnit.Case, async: true

  import ExUnit.CaptureIO, only: [with_io: 1]

  alias Mix.Tasks.Compile.SnakepitNative

  @moduletag :tmp_dir

  @lib "libsnakepit_telemetry_nif.so"

  setup do
    # Mix.shell() is per process: keep this test's output in its mailbox.
    Mix.shell(Mix.Shell.Process)
    on_exit(fn -> Mix.shell(Mix.Shell.IO) end)
    :ok
  end

  defp fake_cargo(dir, script) do
    bin = Path.join(dir, "bin")
    File.mkdir_p!(bin)
    cargo = Path.join(bin, "cargo")
    File.write!(cargo, "#!/bin/sh\n" <> script)
    File.chmod!(cargo, 0o755)
    bin
  end

  # A fake cargo that checks it was run from `root` with exactly `args`, prints a
  # line on stdout and writes `content` to `file` (the library it "builds").
  defp fake_cargo(root, args, file, content) do
    fake_cargo(root, """
    [ "$*" = "#{Enum.join(args, " ")}" ] || { echo "unexpected arguments: $*" >&2; exit 3; }
    [ "$(pwd)" = "#{root}" ] || exit 4
    mkdir -p "#{Path.dirname(file)}"
    printf '%s' '#{content}' > "#{file}"
    echo "cargo says hello"
    """)
  end

  defp args(root, target_dir, profile \\ :release) do
    ["build"] ++
      if(profile == :release, do: ["--release"], else: []) ++
      ~w(--manifest-path #{root}/Cargo.toml -p snakepit_telemetry_nif --target-dir #{target_dir})
  end

  describe "library_names/1" do
    test "cargo's name for the cdylib, and the name :erlang.load_nif/2 looks for" do
      assert SnakepitNative.library_names({:unix, :linux}) ==
               {"libsnakepit_telemetry_nif.so", "libsnakepit_telemetry_nif.so"}

      assert SnakepitNative.library_names({:unix, :freebsd}) ==
               {"libsnakepit_telemetry_nif.so", "libsnakepit_telemetry_nif.so"}

      assert SnakepitNative.library_names({:unix, :darwin}) ==
               {"libsnakepit_telemetry_nif.dylib", "libsnakepit_telemetry_nif.so"}

      assert SnakepitNative.library_names({:win32, :nt}) ==
               {"snakepit_telemetry_nif.dll", "libsnakepit_telemetry_nif.dll"}
    end

    test "the loaded name is the one Snakepit.Telemetry.Native passes to :erlang.load_nif/2" do
      {_built, loaded} = SnakepitNative.library_names(:os.type())
      source = File.read!(Path.expand("../../../lib/snakepit/telemetry/native.ex", __DIR__))
      assert source =~ "native/#{Path.rootname(loaded)}"
    end
  end

  describe "target_dir/2" do
    test "is CARGO_TARGET_DIR when set, relative to the root, else <root>/target" do
      assert SnakepitNative.target_dir("/p", nil) == "/p/target"
      assert SnakepitNative.target_dir("/p", "") == "/p/target"
      assert SnakepitNative.target_dir("/p", "/shared/target") == "/shared/target"
      assert SnakepitNative.target_dir("/p", "build/cargo") == "/p/build/cargo"
    end
  end

  test "without cargo on the PATH it explains how to install Rust", %{tmp_dir: tmp} do
    error =
      assert_raise Mix.Error, fn ->
        SnakepitNative.build(root: tmp, path: Path.join(tmp, "empty"))
      end

    assert error.message =~ "could not find `cargo` on the PATH"
    assert error.message =~ "rustup"
    assert error.message =~ "SNAKEPIT_TELEMETRY_SKIP_NATIVE=1"
  end

  test "a failed build raises with the command", %{tmp_dir: tmp} do
    bin = fake_cargo(tmp, "exit 101\n")
    target = Path.join(tmp, "target")

    error =
      assert_raise Mix.Error, fn ->
        SnakepitNative.build(root: tmp, path: bin, target_dir: target)
      end

    assert error.message =~ "failed (exit status 101)"
    assert error.message =~ Enum.join([Path.join(bin, "cargo") | args(tmp, target)], " ")
    refute File.exists?(Path.join(tmp, "priv/native/#{@lib}"))
  end

  test "copies the library from <target dir>/release, only when it changed", %{tmp_dir: tmp} do
    target = Path.join(tmp, "cargo-target")
    bin = fake_cargo(tmp, args(tmp, target), "#{target}/release/#{@lib}", "v1")
    dest = Path.join(tmp, "priv/native/#{@lib}")

    build = fn ->
      with_io(fn -> SnakepitNative.build(root: tmp, path: bin, target_dir: target) end)
    end

    # cargo's standard output is passed on.
    assert build.() == {{:ok, []}, "cargo says hello\n"}
    assert File.read!(dest) == "v1"
    assert_received {:mix_shell, :info, ["Building the Rust NIF snakepit_telemetry_nif" <> _]}
    assert_received {:mix_shell, :info, ["Copied #{@lib} to " <> _]}

    # Same content: nothing is copied.
    assert {{:noop, []}, _} = build.()
    refute_received {:mix_shell, :info, ["Copied" <> _]}

    # A library that changes between builds is copied again.
    ^bin = fake_cargo(tmp, args(tmp, target), "#{target}/release/#{@lib}", "v2")
    assert {{:ok, []}, _} = build.()
    assert File.read!(dest) == "v2"
    refute File.exists?(dest <> ".tmp")
  end

  test "a debug build is taken from <target dir>/debug", %{tmp_dir: tmp} do
    target = Path.join(tmp, "target")
    bin = fake_cargo(tmp, args(tmp, target, :debug), "#{target}/debug/#{@lib}", "dbg")
    # A stale release library must not be picked up instead.
    File.mkdir_p!(Path.join(target, "release"))
    File.write!(Path.join([target, "release", @lib]), "stale")

    assert {{:ok, []}, _} =
             with_io(fn ->
               SnakepitNative.build(root: tmp, path: bin, target_dir: target, profile: :debug)
             end)

    assert File.read!(Path.join(tmp, "priv/native/#{@lib}")) == "dbg"
  end

  test "the target dir defaults to <root>/target", %{tmp_dir: tmp} do
    target = Path.join(tmp, "target")
    bin = fake_cargo(tmp, args(tmp, target), "#{target}/release/#{@lib}", "lib")

    # Unless this suite runs with CARGO_TARGET_DIR set (covered below).
    if System.get_env("CARGO_TARGET_DIR") in [nil, ""] do
      assert {{:ok, []}, _} = with_io(fn -> SnakepitNative.build(root: tmp, path: bin) end)
      assert File.read!(Path.join(tmp, "priv/native/#{@lib}")) == "lib"
    end
  end

  test "a build that leaves no library where cargo puts it raises", %{tmp_dir: tmp} do
    target = Path.join(tmp, "target")
    # Built for another file name (as a crate without crate-type cdylib would be).
    bin =
      fake_cargo(tmp, args(tmp, target), "#{target}/release/libsnakepit_telemetry_nif.rlib", "x")

    {error, _} =
      with_io(fn ->
        assert_raise Mix.Error, fn ->
          SnakepitNative.build(root: tmp, path: bin, target_dir: target)
        end
      end)

    assert error.message =~ "#{target}/release/#{@lib} does not exist"
    assert error.message =~ ~s(crate-type = ["cdylib"])
    refute File.exists?(Path.join(tmp, "priv/native/#{@lib}"))
  end

  test "SNAKEPIT_TELEMETRY_SKIP_NATIVE=1 skips the build" do
    # The suite itself may run with it set; only check when it is.
    if System.get_env("SNAKEPIT_TELEMETRY_SKIP_NATIVE") == "1" do
      assert SnakepitNative.run([]) == {:noop, []}
      assert_received {:mix_shell, :info, ["Skipping the native build" <> _]}
    end
  end

  @tag :cargo
  @tag timeout: 300_000
  test "builds a real throwaway crate with cargo", %{tmp_dir: tmp} do
    if System.find_executable("cargo") do
      crate = Path.join(tmp, "native/snakepit_telemetry_nif")
      File.mkdir_p!(Path.join(crate, "src"))

      File.write!(
        Path.join(tmp, "Cargo.toml"),
        ~s([workspace]\nmembers = ["native/snakepit_telemetry_nif"]\nresolver = "2"\n)
      )

      File.write!(Path.join(crate, "Cargo.toml"), """
      [package]
      name = "snakepit_telemetry_nif"
      version = "0.0.0"
      edition = "2021"

      [lib]
      crate-type = ["cdylib"]
      """)

      File.write!(
        Path.join(crate, "src/lib.rs"),
        "#[no_mangle] pub extern \"C\" fn answer() -> i32 { 42 }\n"
      )

      # Its own target dir, also when CARGO_TARGET_DIR is set: a throwaway crate of
      # the same name must not overwrite the project's library in a shared one.
      opts = [root: tmp, target_dir: Path.join(tmp, "target")]
      assert SnakepitNative.build(opts) == {:ok, []}
      {built, loaded} = SnakepitNative.library_names(:os.type())
      assert File.regular?(Path.join([tmp, "target/release", built]))

      assert File.read!(Path.join([tmp, "priv/native", loaded])) ==
               File.read!(Path.join([tmp, "target/release", built]))

      assert SnakepitNative.build(opts) == {:noop, []}
    else
      IO.puts("skipped: cargo is not on the PATH")
    end
  end
end

defmodule Mix.Tasks.Compile.SnakepitNativeEnvTest do
  # Sets CARGO_TARGET_DIR for the whole VM, so not async: ExUnit runs the
  # synchronous modules after all the async ones.
  use ExUnit.Case, async: false

  import ExUnit.CaptureIO, only: [with_io: 1]

  alias Mix.Tasks.Compile.SnakepitNative

  @moduletag :tmp_dir

  setup do
    Mix.shell(Mix.Shell.Process)
    previous = System.get_env("CARGO_TARGET_DIR")

    on_exit(fn ->
      Mix.shell(Mix.Shell.IO)

      if previous,
        do: System.put_env("CARGO_TARGET_DIR", previous),
        else: System.delete_env("CARGO_TARGET_DIR")
    end)
  end

  test "CARGO_TARGET_DIR is where the library is built and taken from", %{tmp_dir: tmp} do
    target = Path.join(tmp, "elsewhere")
    System.put_env("CARGO_TARGET_DIR", target)

    # The fake cargo writes the library under the --target-dir it is given.
    bin = Path.join(tmp, "bin")
    File.mkdir_p!(bin)

    File.write!(Path.join(bin, "cargo"), """
    #!/bin/sh
    case "$*" in *"--target-dir #{target}") ;; *) echo "bad: $*" >&2; exit 3 ;; esac
    mkdir -p "#{target}/release"
    printf from-env > "#{target}/release/libsnakepit_telemetry_nif.so"
    """)

    File.chmod!(Path.join(bin, "cargo"), 0o755)

    assert {{:ok, []}, _} = with_io(fn -> SnakepitNative.build(root: tmp, path: bin) end)
    assert File.read!(Path.join(tmp, "priv/native/libsnakepit_telemetry_nif.so")) == "from-env"
  end
end
