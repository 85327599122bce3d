//! Plain core modules: plugins from languages without component tooling
//! (hand-written WAT, C with clang, AssemblyScript).
//!
//! Such a module implements the same `processor` world as every other
//! plugin, through the canonical ABI that component tooling would have
//! generated: it exports `init`, `process`, `memory` and `cabi_realloc`
//! (and may export `cabi_post_process` to free a batch). At load, the
//! runtime tells a module from a component by its header and wraps the
//! module into a component against `sdk/wit`, as `wasm-tools component new`
//! would. From there on it is an ordinary plugin: one interface, one call
//! path, the same sandbox, limits and fault handling.
//!
//! Why wrap rather than define a second, simpler ABI: a second ABI would be
//! a second interface to document, version and keep in step with the WIT;
//! wrapping keeps `sdk/wit` the only contract, and a module built with
//! `wit-bindgen c` works unchanged. The cost is that a hand-written module
//! reads the canonical ABI's record layouts, which for `process` are a few
//! fixed offsets (see `sdk/README.md` and `sdk/c/sluice.h`).

use anyhow::{Context, Result};
use wit_component::{ComponentEncoder, StringEncoding, embed_component_metadata};
use wit_parser::Resolve;

/// The interface every plugin implements, built into the runtime so a core
/// module needs no WIT of its own.
const WIT: &str = include_str!("../../../sdk/wit/sluice.wit");

/// Whether `bytes` is a core WebAssembly module (version 1) rather than a
/// component (its header carries the component layer).
pub fn is_core_module(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\0asm\x01\0\0\0")
}

/// Wraps a core module into a component of the `processor` world. A module
/// that already names its world (one built with `wit-bindgen c`) keeps it;
/// the two must agree.
pub fn componentize(module: &[u8]) -> Result<Vec<u8>> {
    let mut resolve = Resolve::default();
    let package = resolve
        .push_source("sluice.wit", WIT)
        .context("the built-in WIT does not parse")?;
    let world = resolve.select_world(&[package], Some("processor"))?;
    let mut module = module.to_vec();
    embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8)?;
    let encoded = ComponentEncoder::default()
        .validate(true)
        .module(&module)
        .and_then(|mut encoder| encoder.encode());
    let component = match encoded {
        Ok(component) => component,
        // C's stdio and files pull in WASI preview 1, which a core module is not given.
        Err(e) if format!("{e:#}").contains("wasi_snapshot_preview1") => anyhow::bail!(
            "it is a core module that imports WASI preview 1 (`wasi_snapshot_preview1`, e.g. through \
             printf or fopen), which core-module plugins are not given; write to the runtime's log \
             with the `log` import instead (sluice_log in C; see sdk/README.md)"
        ),
        Err(e) => {
            return Err(anyhow::anyhow!("{}", first_line(&format!("{e:#}")))).context(
                "it is a core module but does not implement the sluice:processor world through the canonical ABI \
                 (exports `init`, `process`, `memory` and `cabi_realloc`; see sdk/README.md)",
            );
        }
    };
    Ok(component)
}

/// wit-component's errors span many lines of context; the first two say what is wrong.
fn first_line(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .take(2)
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_modules_from_components() {
        assert!(is_core_module(b"\0asm\x01\0\0\0"));
        assert!(!is_core_module(b"\0asm\x0d\0\x01\0"));
        assert!(!is_core_module(b"(module)"));
    }

    #[test]
    fn names_wasi_preview1_as_what_is_missing() {
        // (module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))))
        let module = b"\0asm\x01\0\0\0\x01\x09\x01\x60\x04\x7f\x7f\x7f\x7f\x01\x7f\x02\x23\x01\x16wasi_snapshot_preview1\x08fd_write\x00\x00";
        let text = format!("{:#}", componentize(module).unwrap_err());
        assert!(text.contains("imports WASI preview 1"), "{text}");
    }

    #[test]
    fn refuses_a_module_without_the_exports() {
        // `(module)` in binary: header only.
        let err = componentize(b"\0asm\x01\0\0\0").unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("canonical ABI"), "{text}");
    }
}
