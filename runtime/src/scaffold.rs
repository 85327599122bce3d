//! `sluice plugin new`: writes a processor project that builds with one
//! command and passes `sluice plugin test` on its sample input as it is.
//!
//! The templates are compiled into the binary (`runtime/templates/`), and so
//! are the SDK helpers for Python, JavaScript and C and the WIT: a scaffold
//! in those languages carries its own copy and builds wherever it is. A Rust
//! scaffold depends on `sluice-sdk` by path: by default the `sdk` folder of
//! the source tree this binary was built from.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// The languages `plugin new` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// sluice-sdk, `cargo build --target wasm32-wasip2`.
    Rust,
    /// componentize-py and `sdk/python/sluice.py`.
    Python,
    /// componentize-js and `sdk/js/sluice.js`.
    Js,
    /// clang-19 for wasm32-wasi and `sdk/c`: a core module.
    C,
}

/// The pinned tools, as `scripts/build-plugins` pins them.
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";
const COMPONENTIZE_JS: &str = "@bytecodealliance/componentize-js@0.23.0";

const WIT: &str = include_str!("../../sdk/wit/sluice.wit");
const README: &str = include_str!("../templates/README.md");
const SAMPLE: &str = include_str!("../templates/sample.jsonl");

/// The `sdk` folder beside this crate at build time.
const BUILT_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk");

/// What was written, and how to build and try it.
#[derive(Debug)]
pub struct Scaffold {
    /// The project folder.
    pub dir: PathBuf,
    /// The one command that builds it, run in `dir`.
    pub build: String,
    /// The .wasm that command writes, relative to `dir`.
    pub wasm: String,
    /// A one-time install the build needs, if any.
    pub setup: Option<String>,
}

/// Checks that `name` works as a file, crate and package name in every language.
pub fn check_name(name: &str) -> Result<()> {
    let valid = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
        && !name.contains("--");
    if !valid {
        bail!(
            "invalid plugin name `{name}`: use 1 to 64 lowercase letters, digits and single hyphens, starting with a letter (e.g. `order-enrich`)"
        );
    }
    // Names cargo refuses for a package.
    const RESERVED: &[&str] = &[
        "std",
        "core",
        "alloc",
        "test",
        "proc-macro",
        "self",
        "super",
        "crate",
        "fn",
        "mod",
        "struct",
        "enum",
        "impl",
        "trait",
        "type",
        "use",
        "let",
        "loop",
        "match",
        "if",
        "else",
        "for",
        "while",
        "in",
        "as",
        "pub",
        "ref",
        "mut",
        "move",
        "return",
        "static",
        "const",
        "extern",
        "unsafe",
        "where",
        "async",
        "await",
        "dyn",
        "true",
        "false",
        "break",
        "continue",
        "sluice-sdk",
        "sluice",
    ];
    if RESERVED.contains(&name) {
        bail!("invalid plugin name `{name}`: it is reserved; pick another (e.g. `{name}-plugin`)");
    }
    Ok(())
}

/// Writes a new processor named `name` in `lang` into `dir` (created; an
/// existing folder must be empty). `sdk` overrides where a Rust scaffold
/// finds `sluice-sdk`.
pub fn create(name: &str, lang: Lang, dir: &Path, sdk: Option<&Path>) -> Result<Scaffold> {
    check_name(name)?;
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir)
            .with_context(|| format!("{} exists and is not a readable folder", dir.display()))?;
        if entries.next().is_some() {
            bail!(
                "{} already exists and is not empty: choose a new folder with --dir",
                dir.display()
            );
        }
    }
    let snake = name.replace('-', "_");
    let wasm_name = format!("{name}.wasm");
    let mut files: Vec<(&str, String)> = Vec::new();
    let (build, wasm, setup, label) = match lang {
        Lang::Rust => {
            let sdk = rust_sdk(sdk)?;
            let sdk = sdk.to_str().context("the sdk path is not UTF-8")?;
            files.push((
                "Cargo.toml",
                include_str!("../templates/rust/Cargo.toml").replace("{{sdk}}", sdk),
            ));
            files.push((
                "src/lib.rs",
                include_str!("../templates/rust/src/lib.rs").to_string(),
            ));
            files.push((
                ".cargo/config.toml",
                include_str!("../templates/rust/.cargo/config.toml").to_string(),
            ));
            (
                "cargo build --release --target wasm32-wasip2".to_string(),
                format!("target/wasm32-wasip2/release/{snake}.wasm"),
                Some("rustup target add wasm32-wasip2".to_string()),
                "Rust",
            )
        }
        Lang::Python => {
            files.push(("app.py", include_str!("../templates/python/app.py").into()));
            files.push((
                "sluice.py",
                include_str!("../../sdk/python/sluice.py").into(),
            ));
            files.push(("wit/sluice.wit", WIT.into()));
            (
                format!("componentize-py -d wit -w processor componentize app -o {wasm_name}"),
                wasm_name.clone(),
                Some(format!("python3 -m pip install {COMPONENTIZE_PY}")),
                "Python",
            )
        }
        Lang::Js => {
            files.push(("app.js", include_str!("../templates/js/app.js").into()));
            files.push(("sluice.js", include_str!("../../sdk/js/sluice.js").into()));
            files.push(("wit/sluice.wit", WIT.into()));
            (
                // -d leaves out the WASI a processor has no use for (and the
                // sandbox refuses), as scripts/build-plugins does.
                format!(
                    "componentize-js app.js --wit wit -n processor -d stdio random clocks http fetch-event -o {wasm_name}"
                ),
                wasm_name.clone(),
                Some(format!("npm install -g {COMPONENTIZE_JS}")),
                "JavaScript",
            )
        }
        Lang::C => {
            files.push((
                "processor.c",
                include_str!("../templates/c/processor.c").into(),
            ));
            files.push(("sluice.h", include_str!("../../sdk/c/sluice.h").into()));
            files.push(("sluice.c", include_str!("../../sdk/c/sluice.c").into()));
            (
                format!(
                    "clang-19 --target=wasm32-wasi -mexec-model=reactor -O2 -Wl,--strip-all -o {wasm_name} sluice.c processor.c"
                ),
                wasm_name.clone(),
                Some("apt-get install clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32".into()),
                "C",
            )
        }
    };
    files.push(("sample.jsonl", SAMPLE.into()));
    files.push((
        "README.md",
        README
            .replace("{{lang}}", label)
            .replace("{{build}}", &build)
            .replace("{{wasm}}", &wasm),
    ));
    files.push((".gitignore", gitignore(lang).into()));
    for (path, text) in files {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().expect("a file in the folder"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::write(&file, text.replace("{{name}}", name))
            .with_context(|| format!("cannot write {}", file.display()))?;
    }
    Ok(Scaffold {
        dir: dir.to_path_buf(),
        build,
        wasm,
        setup,
    })
}

fn gitignore(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "target/\nCargo.lock\n",
        Lang::Python => "*.wasm\n__pycache__/\n",
        Lang::Js | Lang::C => "*.wasm\n",
    }
}

/// The `sluice-sdk` folder for a Rust scaffold, absolute.
fn rust_sdk(given: Option<&Path>) -> Result<PathBuf> {
    let (dir, how) = match given {
        Some(dir) => (dir.to_path_buf(), "--sdk"),
        None => (
            PathBuf::from(BUILT_SDK),
            "the source tree sluice was built from",
        ),
    };
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!(
            "no sluice-sdk at {} (from {how}): pass --sdk with the `sdk` folder of a Sluice checkout",
            dir.display()
        );
    }
    std::fs::canonicalize(&dir).with_context(|| format!("cannot resolve {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "order-enrich", "geo2ip", "x-1"] {
            check_name(ok).unwrap();
        }
        for bad in [
            "",
            "Order",
            "1st",
            "-a",
            "a-",
            "a--b",
            "a_b",
            "a b",
            "../x",
            "test",
            &"a".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "accepted `{bad}`");
        }
    }
}
