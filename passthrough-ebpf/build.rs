//! The BPF object is linked by `bpf-linker`, a binary cargo does not know about: rebuild when
//! it changes (for example after `cargo xtask setup` upgraded it).

fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(e) => println!("cargo:warning=bpf-linker not found ({e}); run `cargo xtask setup`"),
    }
}
