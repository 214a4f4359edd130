//! `cargo xtask test`: formatting, lints and the whole test suite, with a moto server for the
//! AWS integration tests.
//!
//! Tests that need moto live in integration-test files named `moto_*.rs`. Each such file is a
//! test group: the harness resets moto before it, so groups never see each other's resources,
//! while the tests inside a group share the server (they use unique names).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::moto::{self, Moto};

/// Options of `cargo xtask test`.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Skip `cargo fmt --check` and clippy (a quicker local loop; CI never skips them).
    #[arg(long)]
    pub no_lint: bool,
    /// Only run tests whose name contains this (passed to nextest as a filter).
    pub filter: Option<String>,
}

/// Runs the checks.
pub fn run(root: &Path, args: &TestArgs) -> Result<()> {
    if !args.no_lint {
        cargo(root, &["fmt", "--all", "--", "--check"])
            .context("formatting differs: run `cargo fmt --all`")?;
        cargo(
            root,
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--",
                "-D",
                "warnings",
            ],
        )
        .context("clippy found problems")?;
    }
    if moto::on_path("kubectl").is_none() {
        bail!(
            "kubectl is not on PATH: the spot-k8s tests drive spot-kube-sim with the real kubectl; install it"
        );
    }
    // One build of every test target, before moto starts.
    cargo(
        root,
        &[
            "nextest",
            "run",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--no-run",
        ],
    )?;

    let moto = Moto::start(root)?;
    let groups = moto_groups(root)?;
    let mut totals = Totals::default();

    let mut base = "not binary(/^moto_/)".to_owned();
    if let Some(filter) = &args.filter {
        base = format!("({base}) and test(/{filter}/)");
    }
    totals.add(nextest(root, &moto, &base)?);
    for group in &groups {
        moto.reset()?;
        let mut expr = format!("binary_id({group})");
        if let Some(filter) = &args.filter {
            expr = format!("{expr} and test(/{filter}/)");
        }
        eprintln!("xtask: moto group {group} (moto reset)");
        totals.add(nextest(root, &moto, &expr)?);
    }
    drop(moto);
    if totals.failed > 0 {
        bail!("{} test(s) failed", totals.failed);
    }
    if totals.passed == 0 {
        bail!("no test ran");
    }
    println!("test: {} passed, {} failed", totals.passed, totals.failed);
    Ok(())
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
}

impl Totals {
    fn add(&mut self, other: Totals) {
        self.passed += other.passed;
        self.failed += other.failed;
    }
}

/// The nextest binary ids (`package::file`) of every `tests/moto_*.rs` file in the workspace.
fn moto_groups(root: &Path) -> Result<Vec<String>> {
    let mut groups = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let dir = entry?.path();
        let manifest = dir.join("Cargo.toml");
        let tests = dir.join("tests");
        if !manifest.is_file() || !tests.is_dir() {
            continue;
        }
        let package = package_name(&manifest)?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(&tests)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        files.sort();
        for file in files {
            let Some(stem) = file.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if stem.starts_with("moto_") && file.extension().is_some_and(|e| e == "rs") {
                groups.push(format!("{package}::{stem}"));
            }
        }
    }
    groups.sort();
    Ok(groups)
}

fn package_name(manifest: &Path) -> Result<String> {
    let text = std::fs::read_to_string(manifest)?;
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("name = \"")
                .and_then(|r| r.strip_suffix('"'))
        })
        .map(str::to_owned)
        .with_context(|| format!("no package name in {}", manifest.display()))
}

/// Runs nextest on one filter expression, streaming its output, and returns its counts.
fn nextest(root: &Path, moto: &Moto, expr: &str) -> Result<Totals> {
    let mut child = Command::new(env_cargo())
        .current_dir(root)
        .args([
            "nextest",
            "run",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--no-fail-fast",
        ])
        .args(["--no-tests", "pass", "-E", expr])
        .env(moto::ENDPOINT_ENV, moto.endpoint())
        .env("SPOT_XTASK_TEST", "1")
        .stderr(Stdio::piped())
        .spawn()
        .context(
            "running cargo nextest (is cargo-nextest installed? `cargo install cargo-nextest --locked`)",
        )?;
    let mut totals = Totals::default();
    let stderr = child.stderr.take().context("nextest stderr")?;
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        eprintln!("{line}");
        if let Some(t) = parse_summary(&line) {
            totals = t;
        }
    }
    let status = child.wait()?;
    if !status.success() && totals.failed == 0 {
        bail!("cargo nextest failed with {status} on `{expr}`");
    }
    Ok(totals)
}

/// Parses nextest's summary line: `Summary [ 1.2s] 12 tests run: 11 passed, 1 failed, 0 skipped`.
fn parse_summary(line: &str) -> Option<Totals> {
    let rest = line.trim_start().strip_prefix("Summary")?;
    let (_, counts) = rest.split_once(" run: ")?;
    let mut totals = Totals::default();
    for part in counts.split(", ") {
        let mut words = part.split_whitespace();
        let n: u64 = words.next()?.parse().ok()?;
        match words.next()? {
            "passed" => totals.passed += n,
            "failed" | "timed" => totals.failed += n,
            _ => {}
        }
    }
    Some(totals)
}

fn env_cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// Runs `cargo ARGS` in the workspace root.
pub fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(env_cargo()).current_dir(root).args(args).status()?;
    if !status.success() {
        bail!("cargo {} failed with {status}", args.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lines() {
        assert_eq!(
            parse_summary("     Summary [   1.234s] 12 tests run: 11 passed, 1 failed, 0 skipped"),
            Some(Totals {
                passed: 11,
                failed: 1
            })
        );
        assert_eq!(
            parse_summary("     Summary [   0.5s] 3 tests run: 2 passed (1 slow), 1 timed out, 2 skipped"),
            Some(Totals { passed: 2, failed: 1 })
        );
        assert_eq!(
            parse_summary("     Summary [   0.000s] 0 tests run: 0 passed, 40 skipped"),
            Some(Totals::default())
        );
        assert_eq!(parse_summary("   Starting 3 tests"), None);
    }

    #[test]
    fn finds_moto_groups_of_this_workspace() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let groups = moto_groups(root).unwrap();
        assert!(
            groups.contains(&"spot-aws::moto_harness".to_owned()),
            "{groups:?}"
        );
    }
}
