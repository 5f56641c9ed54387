defmodule Mix.Tasks.Compile.SnakepitNativeTest do
  use ExUnit.Case, async: true

  import ExUnit.CaptureIO, only: [with_io: 1]

  alias Mix.Tasks.Compile.SnakepitNative

  @moduletag :tmp_dir

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

  defp artifact_json(file) do
    ~s({"reason":"compiler-artifact","package_id":"path+file:///x#snakepit_telemetry_nif@0.1.0",) <>
      ~s("target":{"kind":["cdylib"],"crate_types":["cdylib"],"name":"snakepit_telemetry_nif","src_path":"/x/src/lib.rs"},) <>
      ~s("filenames":["#{file}"],"executable":null,"fresh":false})
  end

  describe "artifact_files/1" do
    test "finds the cdylib of the crate only" do
      assert SnakepitNative.artifact_files(
               artifact_json("/t/release/libsnakepit_telemetry_nif.so")
             ) ==
               ["/t/release/libsnakepit_telemetry_nif.so"]

      proc_macro =
        ~s({"reason":"compiler-artifact","target":{"kind":["proc-macro"],"name":"rustler_codegen"},) <>
          ~s("filenames":["/t/release/deps/librustler_codegen-1.so"]})

      assert SnakepitNative.artifact_files(proc_macro) == []
      assert SnakepitNative.artifact_files(~s({"reason":"build-finished","success":true})) == []
      assert SnakepitNative.artifact_files(~s({"reason":"compiler-artifact"})) == []
    end

    test "unescapes JSON strings" do
      assert SnakepitNative.artifact_files(artifact_json(~S(/t/a\"b\\c.so))) == [~S(/t/a"b\c.so)]
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

    error = assert_raise Mix.Error, fn -> SnakepitNative.build(root: tmp, path: bin) end
    assert error.message =~ "failed (exit status 101)"
    assert error.message =~ "--manifest-path #{tmp}/Cargo.toml -p snakepit_telemetry_nif"
  end

  test "copies the library, only when it changed", %{tmp_dir: tmp} do
    lib = Path.join(tmp, "target/release/libsnakepit_telemetry_nif.so")
    File.mkdir_p!(Path.dirname(lib))
    File.write!(lib, "v1")

    # The fake cargo checks its arguments and prints the artifact message,
    # with a line of other output around it.
    bin =
      fake_cargo(tmp, """
      [ "$1 $2 $3" = "build --release --manifest-path" ] || exit 3
      [ "$(pwd)" = "#{tmp}" ] || exit 4
      echo "not json"
      echo '#{artifact_json(lib)}'
      echo '{"reason":"build-finished","success":true}'
      """)

    dest = Path.join(tmp, "priv/native/libsnakepit_telemetry_nif.so")
    build = fn -> with_io(fn -> SnakepitNative.build(root: tmp, path: bin) end) end

    # Lines that are not JSON are echoed.
    assert build.() == {{:ok, []}, "not json\n"}
    assert File.read!(dest) == "v1"
    assert_received {:mix_shell, :info, ["Copied libsnakepit_telemetry_nif.so to " <> _]}
    assert {{:noop, []}, _} = build.()

    File.write!(lib, "v2")
    assert {{:ok, []}, _} = build.()
    assert File.read!(dest) == "v2"
  end

  test "a build that reports no cdylib raises", %{tmp_dir: tmp} do
    bin = fake_cargo(tmp, "echo '{\"reason\":\"build-finished\",\"success\":true}'\n")
    error = assert_raise Mix.Error, fn -> SnakepitNative.build(root: tmp, path: bin) end
    assert error.message =~ "reported no cdylib"
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

      assert SnakepitNative.build(root: tmp) == {:ok, []}
      assert File.regular?(Path.join(tmp, "priv/native/libsnakepit_telemetry_nif.so"))
      assert SnakepitNative.build(root: tmp) == {:noop, []}
    else
      IO.puts("skipped: cargo is not on the PATH")
    end
  end
end
