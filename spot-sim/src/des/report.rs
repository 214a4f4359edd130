//! The comparison of scenarios: a text table, CSV files and JSON.
//!
//! Savings are measured against on-demand: the cost of the `on-demand` scenario (without
//! consolidation) when the comparison has it, else of any on-demand-only scenario, else each
//! scenario's own instances priced on-demand ([`Summary::on_demand_equivalent`]).

use std::fmt::Write as _;

use serde::Serialize;

use super::sim::{ScenarioResult, Summary};
use super::strategy::Allocation;

/// Scenarios side by side.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The results, in the order they were asked for.
    pub results: Vec<ScenarioResult>,
}

/// One row of the table, as numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// The scenario's name.
    pub scenario: String,
    /// Total cost, USD.
    pub cost: f64,
    /// Savings versus on-demand, percent.
    pub savings_percent: f64,
    /// Interruption notices.
    pub interruptions: u64,
    /// Pods evicted.
    pub evictions: u64,
    /// Pod-minutes pending.
    pub pending_pod_minutes: f64,
    /// Mean nodes.
    pub mean_nodes: f64,
    /// Peak nodes.
    pub peak_nodes: usize,
    /// Spot share of node-hours, percent.
    pub spot_percent: f64,
    /// Instances launched.
    pub launches: u64,
    /// Insufficient-capacity errors.
    pub ice_errors: u64,
    /// Consolidation commands.
    pub consolidations: u64,
}

fn ice(summary: &Summary) -> u64 {
    summary
        .launch_errors
        .iter()
        .filter(|(code, _)| code.as_str() == crate::cloud::INSUFFICIENT_CAPACITY)
        .map(|(_, n)| *n)
        .sum()
}

/// A CSV field: quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

impl Report {
    /// The report of these results.
    pub fn new(results: Vec<ScenarioResult>) -> Report {
        Report { results }
    }

    /// The on-demand baseline cost for a scenario (see the [module documentation](self)).
    pub fn baseline(&self, result: &ScenarioResult) -> f64 {
        let on_demand = |consolidation: Option<bool>| {
            self.results
                .iter()
                .find(|r| {
                    r.scenario.allocation == Allocation::OnDemand
                        && consolidation.is_none_or(|c| r.scenario.consolidation == c)
                })
                .map(|r| r.summary.cost)
        };
        on_demand(Some(false))
            .or_else(|| on_demand(None))
            .unwrap_or(result.summary.on_demand_equivalent)
    }

    /// The rows of the table.
    pub fn rows(&self) -> Vec<Row> {
        self.results
            .iter()
            .map(|r| {
                let s = &r.summary;
                let baseline = self.baseline(r);
                Row {
                    scenario: r.scenario.to_string(),
                    cost: s.cost,
                    savings_percent: if baseline > 0.0 {
                        100.0 * (1.0 - s.cost / baseline)
                    } else {
                        0.0
                    },
                    interruptions: s.interruptions,
                    evictions: s.evictions,
                    pending_pod_minutes: s.pending_pod_minutes,
                    mean_nodes: s.mean_nodes,
                    peak_nodes: s.peak_nodes,
                    spot_percent: 100.0 * s.spot_share,
                    launches: s.launches,
                    ice_errors: ice(s),
                    consolidations: s.consolidations,
                }
            })
            .collect()
    }

    /// The comparison as an aligned text table.
    pub fn table(&self) -> String {
        let header = [
            "scenario",
            "cost $",
            "savings",
            "interruptions",
            "evictions",
            "pending pod-min",
            "nodes mean/peak",
            "spot",
            "launches",
            "ICE",
            "consolidations",
        ];
        let rows: Vec<Vec<String>> = self
            .rows()
            .into_iter()
            .map(|r| {
                vec![
                    r.scenario,
                    format!("{:.2}", r.cost),
                    format!("{:.1} %", r.savings_percent),
                    r.interruptions.to_string(),
                    r.evictions.to_string(),
                    format!("{:.0}", r.pending_pod_minutes),
                    format!("{:.0}/{}", r.mean_nodes, r.peak_nodes),
                    format!("{:.0} %", r.spot_percent),
                    r.launches.to_string(),
                    r.ice_errors.to_string(),
                    r.consolidations.to_string(),
                ]
            })
            .collect();
        let widths: Vec<usize> = (0..header.len())
            .map(|c| {
                rows.iter()
                    .map(|r| r[c].chars().count())
                    .chain([header[c].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: Vec<&str>| -> String {
            let mut out = String::new();
            for (c, cell) in cells.iter().enumerate() {
                let pad = widths[c] - cell.chars().count();
                if c == 0 {
                    out.push_str(cell);
                    out.push_str(&" ".repeat(pad));
                } else {
                    out.push_str("  ");
                    out.push_str(&" ".repeat(pad));
                    out.push_str(cell);
                }
            }
            out.trim_end().to_owned()
        };
        let mut out = line(header.to_vec());
        out.push('\n');
        out.push_str(&line(
            widths
                .iter()
                .map(|w| "-".repeat(*w))
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str)
                .collect(),
        ));
        out.push('\n');
        for r in &rows {
            out.push_str(&line(r.iter().map(String::as_str).collect()));
            out.push('\n');
        }
        out
    }

    /// `results.csv`: one line per scenario.
    pub fn results_csv(&self) -> String {
        let mut out = String::from(
            "scenario,cost_usd,savings_percent,interruptions,evictions,pending_pod_minutes,mean_nodes,\
             peak_nodes,spot_percent,launches,ice_errors,consolidations\n",
        );
        for r in self.rows() {
            let _ = writeln!(
                out,
                "{},{:.4},{:.2},{},{},{:.1},{:.2},{},{:.2},{},{},{}",
                csv_field(&r.scenario),
                r.cost,
                r.savings_percent,
                r.interruptions,
                r.evictions,
                r.pending_pod_minutes,
                r.mean_nodes,
                r.peak_nodes,
                r.spot_percent,
                r.launches,
                r.ice_errors,
                r.consolidations
            );
        }
        out
    }

    /// `timeseries.csv`: one line per scenario and sample.
    pub fn timeseries_csv(&self) -> String {
        let mut out = String::from(
            "scenario,hours,nodes,spot_nodes,pods,pending_mean,pending,cost_per_hour_usd,cost_usd\n",
        );
        for r in &self.results {
            let name = csv_field(&r.scenario.to_string());
            for s in &r.series {
                let _ = writeln!(
                    out,
                    "{name},{:.4},{},{},{},{:.3},{},{:.4},{:.4}",
                    s.hours,
                    s.nodes,
                    s.spot_nodes,
                    s.pods,
                    s.pending_mean,
                    s.pending,
                    s.cost_per_hour,
                    s.cost
                );
            }
        }
        out
    }

    /// Rows and full results as pretty JSON.
    pub fn to_json(&self) -> String {
        let value = serde_json::json!({
            "rows": self.rows(),
            "results": self.results,
        });
        serde_json::to_string_pretty(&value).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::des::sim::Sample;
    use crate::des::strategy::Scenario;

    fn result(scenario: &str, cost: f64, od: f64) -> ScenarioResult {
        ScenarioResult {
            scenario: scenario.parse().unwrap(),
            summary: Summary {
                cost,
                on_demand_equivalent: od,
                interruptions: 3,
                evictions: 12,
                pending_pod_minutes: 45.5,
                mean_nodes: 10.2,
                peak_nodes: 14,
                spot_share: 0.75,
                launches: 20,
                launch_errors: [
                    ("InsufficientInstanceCapacity".to_owned(), 2),
                    ("Other".to_owned(), 5),
                ]
                .into(),
                ..Summary::default()
            },
            series: vec![Sample {
                hours: 0.5,
                nodes: 10,
                spot_nodes: 8,
                pods: 40,
                pending_mean: 1.25,
                pending: 0,
                cost_per_hour: 1.5,
                cost: 0.7,
            }],
        }
    }

    #[test]
    fn savings_are_against_the_on_demand_scenario() {
        let report = Report::new(vec![
            result("pco+consolidation", 40.0, 90.0),
            result("on-demand", 100.0, 100.0),
        ]);
        let rows = report.rows();
        assert!((rows[0].savings_percent - 60.0).abs() < 1e-9);
        assert_eq!(rows[1].savings_percent, 0.0);
        assert_eq!(rows[0].ice_errors, 2);
        // Without an on-demand scenario: the scenario's own on-demand equivalent.
        let alone = Report::new(vec![result("lowest-price", 30.0, 120.0)]);
        assert!((alone.rows()[0].savings_percent - 75.0).abs() < 1e-9);
        // An on-demand scenario with consolidation serves when the plain one is missing.
        let od_c = Report::new(vec![result("lp", 30.0, 120.0), result("od+c", 60.0, 60.0)]);
        assert!((od_c.rows()[0].savings_percent - 50.0).abs() < 1e-9);
        assert_eq!(
            od_c.results[1].scenario,
            "on-demand+consolidation".parse::<Scenario>().unwrap()
        );
    }

    #[test]
    fn table_csv_and_json() {
        let report = Report::new(vec![
            result("on-demand", 100.0, 100.0),
            result("pco+c", 40.0, 90.0),
        ]);
        let table = report.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(
            lines[0].starts_with("scenario") && lines[0].contains("savings"),
            "{table}"
        );
        assert!(
            lines[3].starts_with("price-capacity-optimized+consolidation"),
            "{table}"
        );
        assert!(
            lines[3].contains("60.0 %") && lines[3].contains("10/14"),
            "{table}"
        );
        // Columns line up: every line of the table has the same width as its header.
        assert_eq!(lines[1].len(), lines[0].len());
        let csv = report.results_csv();
        assert_eq!(csv.lines().count(), 3);
        assert_eq!(
            csv.lines().nth(2).unwrap(),
            "price-capacity-optimized+consolidation,40.0000,60.00,3,12,45.5,10.20,14,75.00,20,2,0"
        );
        let series = report.timeseries_csv();
        assert_eq!(series.lines().count(), 3);
        assert_eq!(
            series.lines().nth(1).unwrap(),
            "on-demand,0.5000,10,8,40,1.250,0,1.5000,0.7000"
        );
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["rows"][1]["interruptions"], 3);
        assert_eq!(json["results"][0]["scenario"]["allocation"], "on-demand");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
    }
}
