//! Real headless Chromium (Debian's `chromium` package) against a running sluice: the page's
//! script runs for a few seconds of virtual time, then the DOM or a screenshot is taken.
//!
//! A machine without Chromium fails the test with how to install it: the dashboard is part of
//! the product and CI installs the browser (`scripts/setup`), so silently skipping would hide a
//! broken page.

use std::path::{Path, PathBuf};
use std::process::Command;

/// How long the page's script runs before the DOM or the screenshot is taken: virtual time
/// (the browser waits for real fetches), long enough for several polls of `/metrics`. Rates the
/// page computes from its own clock are not meaningful under virtual time; counts are.
const SCRIPT_BUDGET_MS: u32 = 7_000;

/// The Chromium binary on PATH.
fn chromium() -> PathBuf {
    ["chromium", "chromium-browser"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH")?
                .to_str()?
                .split(':')
                .map(|dir| Path::new(dir).join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "chromium is not installed, and the dashboard test needs a real browser: \
                 `apt-get install -y chromium` (scripts/setup does it)"
            )
        })
}

fn headless(url: &str, extra: &[&str]) -> String {
    headless_for(url, SCRIPT_BUDGET_MS, extra)
}

fn headless_for(url: &str, budget_ms: u32, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().expect("a temp dir for the browser profile");
    let output = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            &format!("--user-data-dir={}", profile.path().display()),
            &format!("--virtual-time-budget={budget_ms}"),
        ])
        .args(extra)
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("run chromium: {e}"));
    assert!(
        output.status.success(),
        "chromium exited with {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The DOM of `url` after its script ran.
pub fn dump_dom(url: &str) -> String {
    headless(url, &["--dump-dom"])
}

/// The DOM of `url` after its script ran for `budget_ms` (virtual time): for what the page
/// only concludes after watching a while.
pub fn dump_dom_after(url: &str, budget_ms: u32) -> String {
    headless_for(url, budget_ms, &["--dump-dom"])
}

/// Saves a screenshot of `url` (after its script ran) to `path`, creating its folder.
pub fn screenshot(url: &str, path: &Path) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    }
    headless(
        url,
        &[
            &format!("--screenshot={}", path.display()),
            "--window-size=1280,760",
        ],
    );
    assert!(
        path.is_file(),
        "chromium wrote no screenshot to {}",
        path.display()
    );
}

/// The text of the element marked `data-stat="<stat>"` in the card of pipeline `pipeline`, in
/// a DOM dumped by [`dump_dom`]; None if the page shows no such card or value.
pub fn card_stat(dom: &str, pipeline: &str, stat: &str) -> Option<String> {
    let card = dom.find(&format!("data-pipeline=\"{pipeline}\""))?;
    let rest = &dom[card..];
    let end = rest[1..]
        .find("data-pipeline=\"")
        .map_or(rest.len(), |i| i + 1);
    let card = &rest[..end];
    let at = card.find(&format!("data-stat=\"{stat}\">"))? + stat.len() + 13;
    Some(card[at..].split('<').next()?.to_owned())
}
