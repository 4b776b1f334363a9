//! Generates the gRPC code from `carrel/v1/*.proto` with the pure-Rust `protox`
//! compiler, so building needs no `protoc` on the machine. Also writes the file
//! descriptor set that the hub serves for gRPC server reflection.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "carrel/v1/records.proto",
        "carrel/v1/site_link.proto",
        "carrel/v1/auth.proto",
        "carrel/v1/orders.proto",
        "carrel/v1/release.proto",
        "carrel/v1/notifications.proto",
        "carrel/v1/admin.proto",
        "carrel/v1/schedule.proto",
        "carrel/v1/analytics.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let fds = protox::compile(files, ["."])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("carrel_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
