//! Running the real `kubectl` against a simulator, isolated from the user's configuration
//! (its own kubeconfig, cache directory and `HOME`): what tests, examples and demos share.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{Error, RunningSim, Sim};

/// `kubectl` pointed at one simulator. The kubeconfig and kubectl's cache live in a
/// directory the caller owns (a temporary directory in tests).
#[derive(Debug, Clone)]
pub struct Kubectl {
    dir: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    /// Writes a kubeconfig for `running` to `dir/kubeconfig`; kubectl's cache goes to
    /// `dir/cache` and `HOME` is `dir`.
    pub fn new(running: &RunningSim, dir: &Path) -> Result<Kubectl, Error> {
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, Sim::kubeconfig(running.addr())).map_err(|source| Error::Kubeconfig {
            path: kubeconfig.display().to_string(),
            source,
        })?;
        Ok(Kubectl {
            dir: dir.to_path_buf(),
            kubeconfig,
        })
    }

    /// The kubeconfig file.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// `kubectl --kubeconfig … --cache-dir … ARGS` with `HOME` set to the directory and
    /// `KUBECONFIG` removed.
    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.join("cache"))
            .args(args)
            .env("HOME", &self.dir)
            .env_remove("KUBECONFIG");
        cmd
    }

    /// Runs kubectl to completion off the async runtime.
    pub async fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<Output, Error> {
        let mut cmd = self.command(args);
        let line = describe(args);
        tokio::task::spawn_blocking(move || cmd.output())
            .await
            .map_err(|e| Error::Kubectl {
                args: line.clone(),
                message: format!("the kubectl task failed: {e}"),
            })?
            .map_err(|e| Error::Kubectl {
                args: line,
                message: format!("cannot run kubectl (is it on PATH?): {e}"),
            })
    }

    /// Runs kubectl and returns its stdout when it succeeds; otherwise an error with the
    /// exit status, stdout and stderr.
    pub async fn run_ok<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<String, Error> {
        let out = self.run(args).await?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return Ok(stdout);
        }
        Err(Error::Kubectl {
            args: describe(args),
            message: format!(
                "{}\nstdout: {stdout}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }
}

fn describe<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    args.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks that `kubectl` is installed (tests that need it fail, never skip, without it).
pub fn require_kubectl() -> Result<(), Error> {
    match Command::new("kubectl").args(["version", "--client"]).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(Error::Kubectl {
            args: "version --client".into(),
            message: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr)),
        }),
        Err(e) => Err(Error::Kubectl {
            args: "version --client".into(),
            message: format!("kubectl must be on PATH (v1.32 is what CI provides): {e}"),
        }),
    }
}
