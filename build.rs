//! With the `fastpath` feature: compile the kernel fast path's XDP program
//! (src/io/fastpath/bpf/relay.bpf.c) with clang through libbpf-cargo into
//! OUT_DIR/relay.bpf.o, which src/io/fastpath/kernel.rs embeds. Without
//! it, nothing: ferroturn builds where clang is missing.

fn main() {
    #[cfg(feature = "fastpath")]
    fastpath();
}

#[cfg(feature = "fastpath")]
fn fastpath() {
    const SRC: &str = "src/io/fastpath/bpf/relay.bpf.c";
    println!("cargo:rerun-if-changed={SRC}");
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    // Debian keeps asm/types.h under the multiarch include directory.
    let multiarch = format!(
        "-I/usr/include/{}-linux-gnu",
        std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default()
    );
    if let Err(e) = libbpf_cargo::SkeletonBuilder::new()
        .source(SRC)
        .obj(out.join("relay.bpf.o"))
        .clang_args([multiarch.as_str(), "-Wall", "-Werror"])
        .build()
    {
        panic!("feature `fastpath`: compiling {SRC} failed (needs clang and libbpf-dev): {e:#}");
    }
}
