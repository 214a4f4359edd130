//! Finding, installing, starting, resetting and stopping a local moto server for the AWS tests.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The environment variable through which tests find the moto endpoint.
pub const ENDPOINT_ENV: &str = "SPOT_TEST_MOTO_ENDPOINT";

/// A running moto server, stopped when dropped.
pub struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    /// Starts moto on a free loopback port and waits until it answers.
    pub fn start(root: &Path) -> Result<Moto> {
        let target = target_dir(root);
        std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
        let exe = locate_or_install(root, &target)?;
        let port = free_port()?;
        let log = target.join("moto-server.log");
        let log_file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        eprintln!(
            "xtask: starting {} on 127.0.0.1:{port} (log: {})",
            exe.display(),
            log.display()
        );
        let child = Command::new(&exe)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let mut moto = Moto { child, port };
        for _ in 0..300 {
            if let Some(status) = moto.child.try_wait()? {
                bail!("moto_server exited early with {status}; see {}", log.display());
            }
            if moto.request("GET", "/moto-api/data.json").is_ok() {
                return Ok(moto);
            }
            #[allow(
                clippy::disallowed_methods,
                reason = "xtask is synchronous: there is no tokio clock"
            )]
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "moto_server did not answer on port {port} within 30 s; see {}",
            log.display()
        )
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Clears every resource (`POST /moto-api/reset`).
    pub fn reset(&self) -> Result<()> {
        self.request("POST", "/moto-api/reset").context("resetting moto")
    }

    /// One HTTP/1.0 request; Ok when the status is 2xx.
    fn request(&self, method: &str, path: &str) -> Result<()> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
        )?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head)?;
        let status = std::str::from_utf8(&head[9..12]).unwrap_or("000");
        if !status.starts_with('2') {
            bail!("{method} {path} answered {status}");
        }
        Ok(())
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("xtask: moto_server stopped");
    }
}

/// Cargo's target directory: `CARGO_TARGET_DIR`, else `target/` in the workspace.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// `moto_server` from PATH, else from `<target>/moto-venv`, else installed there from
/// `xtask/moto-requirements.txt`.
fn locate_or_install(root: &Path, target: &Path) -> Result<PathBuf> {
    if let Some(path) = on_path("moto_server") {
        return Ok(path);
    }
    let venv = target.join("moto-venv");
    let exe = venv.join("bin/moto_server");
    if exe.exists() {
        return Ok(exe);
    }
    eprintln!(
        "xtask: moto_server not found; installing moto[server] into {}",
        venv.display()
    );
    let python = on_path("python3").context("neither moto_server nor python3 is on PATH: install python3")?;
    run(Command::new(python).args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(root.join("xtask/moto-requirements.txt")))?;
    if !exe.exists() {
        bail!("installing moto did not produce {}", exe.display());
    }
    Ok(exe)
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// The first executable named `name` on PATH.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}
