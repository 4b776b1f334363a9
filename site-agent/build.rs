//! Generates the SiLA 2 framework message types from `proto/sila/SiLAFramework.proto`
//! with the pure-Rust `protox` compiler (no `protoc` needed). Feature-specific messages
//! are not generated: the SiLA 2 adapter encodes them from the server's feature
//! definition at run time, so a site can map any feature without a rebuild.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "proto/sila/SiLAFramework.proto";
    println!("cargo:rerun-if-changed={file}");
    let fds = protox::compile([file], ["proto/sila"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(false)
        .compile_fds(fds)?;
    Ok(())
}
