//! `spot-imds-sim`: an instance metadata service simulator (IMDSv2 by default) compatible with
//! amazon-ec2-metadata-mock's paths and bodies, with start-up scenarios and a `/sim/` control API.
//!
//! Prints `listening on http://ADDR` once bound and serves until SIGTERM or SIGINT.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use spot_aws::imds_sim::{ImdsSim, SimConfig};
use spot_core::event::SpotAction;

/// An EC2 instance metadata service (IMDS) simulator for interruption-handling tests.
///
/// Serves /latest/api/token (IMDSv2), /latest/meta-data/ (instance-id, instance-type,
/// placement/*, spot/instance-action, events/recommendations/rebalance,
/// events/maintenance/scheduled, autoscaling/target-lifecycle-state, ...) and
/// /latest/dynamic/instance-identity/document. Scenarios can be armed at start-up with the
/// flags below, or triggered at any time with POST /sim/spot-itn, /sim/rebalance, /sim/scheduled,
/// /sim/asg-target-state and /sim/reset (empty body or JSON, optional "delay_seconds");
/// GET /sim/state shows the current state.
#[derive(Debug, Parser)]
#[command(name = "spot-imds-sim", version)]
struct Args {
    /// Address to listen on; port 0 picks a free port (the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:1338")]
    listen: SocketAddr,

    /// The instance id served at meta-data/instance-id and in the identity document.
    #[arg(long, default_value = "i-1234567890abcdef0")]
    instance_id: String,

    /// The instance type served at meta-data/instance-type.
    #[arg(long, default_value = "m4.xlarge")]
    instance_type: String,

    /// The availability zone; the region is derived from it unless --region is given.
    #[arg(long, default_value = "us-east-1a")]
    zone: String,

    /// The region served at meta-data/placement/region (default: derived from --zone).
    #[arg(long)]
    region: Option<String>,

    /// Serve a spot interruption notice this many seconds after start.
    #[arg(long, value_name = "SECS")]
    spot_itn_delay: Option<u64>,

    /// The action of the spot notice: terminate, stop or hibernate.
    #[arg(long, default_value = "terminate", value_parser = parse_action)]
    spot_action: SpotAction,

    /// Seconds from the spot notice to its deadline.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    spot_notice: u64,

    /// Serve a rebalance recommendation this many seconds after start.
    #[arg(long, value_name = "SECS")]
    rebalance_delay: Option<u64>,

    /// Schedule a maintenance event with this code (system-reboot, instance-stop,
    /// instance-reboot, system-maintenance, instance-retirement); at start unless
    /// --scheduled-delay is given.
    #[arg(long, value_name = "CODE")]
    scheduled_code: Option<String>,

    /// Schedule the maintenance event (code system-reboot unless --scheduled-code) this many
    /// seconds after start.
    #[arg(long, value_name = "SECS")]
    scheduled_delay: Option<u64>,

    /// Set the Auto Scaling target lifecycle state to Terminated this many seconds after start
    /// (it is InService before).
    #[arg(long, value_name = "SECS")]
    asg_terminate_delay: Option<u64>,

    /// Also serve requests without a token (IMDSv1); by default only IMDSv2 is served and such
    /// requests get 401.
    #[arg(long)]
    imdsv1: bool,
}

fn parse_action(value: &str) -> Result<SpotAction, String> {
    spot_aws::imds::parse::parse_spot_action("--spot-action", "action", value).map_err(|e| e.to_string())
}

impl Args {
    fn config(self) -> SimConfig {
        let mut config = SimConfig {
            instance_id: self.instance_id,
            instance_type: self.instance_type,
            availability_zone: self.zone,
            region: self.region,
            imdsv1: self.imdsv1,
            spot_itn_delay: self.spot_itn_delay.map(Duration::from_secs),
            spot_action: self.spot_action,
            spot_notice: Duration::from_secs(self.spot_notice),
            rebalance_delay: self.rebalance_delay.map(Duration::from_secs),
            asg_terminate_delay: self.asg_terminate_delay.map(Duration::from_secs),
            ..SimConfig::default()
        };
        if self.scheduled_code.is_some() || self.scheduled_delay.is_some() {
            config.scheduled_code = self.scheduled_code.unwrap_or(config.scheduled_code);
            config.scheduled_delay = Some(Duration::from_secs(self.scheduled_delay.unwrap_or(0)));
        }
        config
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let listen = args.listen;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let sim = ImdsSim::start(args.config(), listen).await?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {}", sim.url())?;
        stdout.flush()?;
    }
    tokio::select! {
        _ = terminate.recv() => eprintln!("SIGTERM: shutting down"),
        result = tokio::signal::ctrl_c() => {
            result?;
            eprintln!("SIGINT: shutting down");
        }
    }
    sim.shutdown().await?;
    Ok(())
}
