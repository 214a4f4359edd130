//! SVG charts of the time series, one line per scenario, drawn with `plotters` (SVG backend
//! only; text is laid out by its built-in estimate, so no font is needed).
//!
//! - [`cost_svg`]: the cost per hour of the running instances (top) and the cumulative
//!   cost (bottom);
//! - [`pending_svg`]: the pods not running, averaged over each sample interval. Its y axis
//!   is scaled to the values after the first hour, so that the cold start (every pod pending
//!   while the first nodes boot) does not flatten the rest; higher values are drawn at the
//!   top edge and the caption says so.

use plotters::prelude::*;

use super::Error;
use super::sim::{Sample, ScenarioResult};

const SIZE: (u32, u32) = (1200, 900);

fn failed(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Io {
        path: what.to_owned(),
        message: e.to_string(),
    }
}

/// The largest finite value of the samples at or after `from_hours` (of all samples when
/// none is that late), and whether an earlier sample is larger.
fn y_range(results: &[ScenarioResult], value: fn(&Sample) -> f64, from_hours: f64) -> (f64, bool) {
    let max = |late: bool| {
        results
            .iter()
            .flat_map(|r| r.series.iter())
            .filter(|s| !late || s.hours >= from_hours)
            .map(value)
            .filter(|v| v.is_finite())
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
    };
    let all = max(false).unwrap_or(0.0);
    match max(true) {
        Some(late) if late > 0.0 => (late, all > late),
        _ => (all, false),
    }
}

/// One panel: a line per scenario of `value` over hours, the y axis scaled to the values
/// from `from_hours` on (earlier, higher values are drawn at the top edge).
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    results: &[ScenarioResult],
    title: &str,
    y_desc: &str,
    value: fn(&Sample) -> f64,
    from_hours: f64,
) -> Result<(), String> {
    let max_x = results
        .iter()
        .flat_map(|r| r.series.iter().map(|s| s.hours))
        .fold(1.0f64, f64::max);
    let (max_y, cut) = y_range(results, value, from_hours);
    let max_y = if max_y > 0.0 { max_y * 1.05 } else { 1.0 };
    let title = if cut {
        format!("{title} (axis cut: higher in the first {from_hours} h)")
    } else {
        title.to_owned()
    };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..max_x, 0f64..max_y)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("hours")
        .y_desc(y_desc)
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, r) in results.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = r.series.iter().map(|s| (s.hours, value(s).min(max_y))).collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(r.scenario.to_string())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// The cost chart: cost per hour and cumulative cost over time.
pub fn cost_svg(results: &[ScenarioResult]) -> Result<String, Error> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| failed("cost.svg", e))?;
        let areas = root.split_evenly((2, 1));
        panel(
            &areas[0],
            results,
            "Cost per hour of the running instances",
            "USD per hour",
            |s| s.cost_per_hour,
            0.0,
        )
        .map_err(|e| failed("cost.svg", e))?;
        panel(&areas[1], results, "Cumulative cost", "USD", |s| s.cost, 0.0)
            .map_err(|e| failed("cost.svg", e))?;
        root.present().map_err(|e| failed("cost.svg", e))?;
    }
    Ok(out)
}

/// The pending chart: pods not running, averaged over each sample interval.
pub fn pending_svg(results: &[ScenarioResult]) -> Result<String, Error> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (SIZE.0, SIZE.1 / 2)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| failed("pending.svg", e))?;
        panel(
            &root,
            results,
            "Pods not running (mean per interval)",
            "pods",
            |s| s.pending_mean,
            1.0,
        )
        .map_err(|e| failed("pending.svg", e))?;
        root.present().map_err(|e| failed("pending.svg", e))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::des::sim::Summary;

    fn result(scenario: &str, scale: f64) -> ScenarioResult {
        ScenarioResult {
            scenario: scenario.parse().unwrap(),
            summary: Summary::default(),
            series: (0..=24)
                .map(|h| Sample {
                    hours: f64::from(h),
                    nodes: 10,
                    spot_nodes: 5,
                    pods: 40,
                    pending_mean: f64::from(h % 5),
                    pending: 0,
                    cost_per_hour: scale,
                    cost: scale * f64::from(h),
                })
                .collect(),
        }
    }

    #[test]
    fn charts_are_svg_with_a_line_and_a_legend_per_scenario() {
        let results = [result("on-demand", 3.0), result("pco+consolidation", 1.0)];
        let cost = cost_svg(&results).unwrap();
        assert!(cost.starts_with("<svg") && cost.trim_end().ends_with("</svg>"));
        assert!(cost.contains("Cumulative cost") && cost.contains("on-demand"));
        assert!(cost.contains("price-capacity-optimized+consolidation"));
        // Two panels × two scenarios.
        assert!(cost.matches("<polyline").count() >= 4, "{cost}");
        let pending = pending_svg(&results).unwrap();
        assert!(pending.matches("<polyline").count() >= 2);
        // Empty series still draw axes.
        assert!(pending_svg(&[]).unwrap().contains("<svg"));
    }

    #[test]
    fn the_pending_axis_leaves_out_the_cold_start() {
        let mut cold = result("on-demand", 3.0);
        cold.series[0].pending_mean = 500.0;
        let results = [cold];
        assert_eq!(y_range(&results, |s| s.pending_mean, 1.0), (4.0, true));
        assert_eq!(y_range(&results, |s| s.pending_mean, 0.0), (500.0, false));
        assert_eq!(y_range(&[], |s| s.pending_mean, 1.0), (0.0, false));
        let pending = pending_svg(&results).unwrap();
        assert!(pending.contains("axis cut: higher in the first 1 h"), "{pending}");
        assert!(!cost_svg(&results).unwrap().contains("axis cut"));
    }
}
