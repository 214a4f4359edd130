//! The `spot-imds-sim` binary: prints its address, serves IMDSv2, exits 0 on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use spot_aws::imds::parse::parse_instance_action;
use spot_aws::imds::{TOKEN_HEADER, TOKEN_TTL_HEADER};
use spot_core::event::SpotAction;

const BIN: &str = env!("CARGO_BIN_EXE_spot-imds-sim");

/// Kills the simulator if the test fails before it exits on its own.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn help_documents_every_flag() -> Result<()> {
    let output = Command::new(BIN).arg("--help").output()?;
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout)?;
    for flag in [
        "--listen",
        "--instance-id",
        "--instance-type",
        "--zone",
        "--region",
        "--spot-itn-delay",
        "--spot-action",
        "--spot-notice",
        "--rebalance-delay",
        "--scheduled-code",
        "--scheduled-delay",
        "--asg-terminate-delay",
        "--imdsv1",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
    let bad = Command::new(BIN).args(["--spot-action", "explode"]).output()?;
    assert!(!bad.status.success());
    Ok(())
}

#[tokio::test]
async fn binary_serves_a_spot_notice_and_exits_on_sigterm() -> Result<()> {
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--instance-id",
            "i-0bin",
            "--spot-itn-delay",
            "0",
            "--spot-action",
            "stop",
            "--scheduled-code",
            "instance-stop",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut child = Reaper(child);
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(Duration::from_secs(30), line).await???;
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .context(format!("unexpected first line {line:?}"))?
        .to_owned();
    assert!(
        url.starts_with("http://127.0.0.1:") && !url.ends_with(":0"),
        "{url}"
    );

    spot_aws::config::install_crypto_provider();

    let http = reqwest::Client::new();
    let token = http
        .put(format!("{url}/latest/api/token"))
        .header(TOKEN_TTL_HEADER, "21600")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let get = |path: &str| {
        http.get(format!("{url}{path}"))
            .header(TOKEN_HEADER, &token)
            .send()
    };
    // The notice is armed with no delay but by a task: allow it a moment.
    let mut body = None;
    for _ in 0..50 {
        let response = get("/latest/meta-data/spot/instance-action").await?;
        if response.status() == 200 {
            body = Some(response.text().await?);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let notice = parse_instance_action(&body.context("no spot notice")?)?;
    assert_eq!(notice.action, SpotAction::Stop);
    assert_eq!(
        get("/latest/meta-data/instance-id").await?.text().await?,
        "i-0bin"
    );
    let scheduled = get("/latest/meta-data/events/maintenance/scheduled")
        .await?
        .text()
        .await?;
    assert!(scheduled.contains("instance-stop"), "{scheduled}");
    let unauthorized = http
        .get(format!("{url}/latest/meta-data/instance-id"))
        .send()
        .await?;
    assert_eq!(unauthorized.status(), 401);

    let kill = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()?;
    assert!(kill.success());
    for _ in 0..200 {
        if let Some(status) = child.0.try_wait()? {
            assert!(status.success(), "exit status {status}");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("spot-imds-sim did not exit within 10 s of SIGTERM")
}
