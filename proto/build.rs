//! Compiles `proto/tidelog/v1/*.proto` without a system `protoc`: protox parses the
//! files into a `FileDescriptorSet`, tonic-prost-build generates the prost messages
//! and the tonic clients and servers from it, and the encoded set is written to
//! `OUT_DIR/tidelog_descriptor.bin` for gRPC server reflection.

use std::path::PathBuf;
use std::{env, fs};

use prost::Message as _;

/// Directory that holds the package directories (`tidelog/v1/...`); also the include
/// root, so imports are written `import "tidelog/v1/x.proto";`.
const PROTO_ROOT: &str = "proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");

    let mut files = Vec::new();
    collect_protos(&PathBuf::from(PROTO_ROOT), &mut files)?;
    files.sort();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    // Source info keeps the comments: prost copies them into the Rust docs, and
    // reflection clients (grpcurl describe) show them.
    let fds = protox::Compiler::new([PROTO_ROOT])?
        .include_source_info(true)
        .include_imports(true)
        .open_files(&files)?
        .file_descriptor_set();

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("tidelog_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(".")
        // Decodes each message from one `Bytes` (see src/codec.rs).
        .codec_path("crate::codec::Codec")
        // The rerun-if-changed lines above cover the inputs; tonic-prost-build's own
        // would be based on protoc's include paths, which we do not use.
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;

    Ok(())
}

/// Appends every `.proto` file under `dir`, recursively.
fn collect_protos(dir: &PathBuf, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
