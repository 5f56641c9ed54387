//! Generates the prost message types of `proto/snakepit_bridge.proto` (no protoc needed:
//! protox parses it). The event catalog is not read here: Elixir reads it and hands it to
//! the NIF at start (see `catalog.rs`).

use std::env;
use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let proto_dir = manifest_dir.join("../../proto");
    let proto = proto_dir.join("snakepit_bridge.proto");
    // prost-build prints no rerun line for a proto outside the crate.
    println!("cargo:rerun-if-changed={}", proto.display());
    println!("cargo:rerun-if-changed=build.rs");

    let descriptors = protox::compile([&proto], [&proto_dir])
        .unwrap_or_else(|e| panic!("cannot parse {}: {e}", proto.display()));
    prost_build::Config::new()
        .compile_fds(descriptors)
        .unwrap_or_else(|e| panic!("cannot generate code for {}: {e}", proto.display()));
}
