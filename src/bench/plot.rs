//! `--plot FILE.svg`: each phase's rate and HTTP latency percentiles over time, one colour per
//! phase, so a before/after comparison is a picture. Drawn from the timelines `drive` records.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

use super::progress::Timeline;

/// One second of a phase: the second, requests sent then and accepted, their p50 and p99 (ms).
type Second = (f64, f64, f64, f64);

/// Per second of a phase (by when requests were sent).
fn per_second(samples: &[(Duration, Duration)]) -> Vec<Second> {
    let mut seconds: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for (sent, latency) in samples {
        seconds.entry(sent.as_secs()).or_default().push(latency.as_secs_f64() * 1000.0);
    }
    seconds
        .into_iter()
        .map(|(second, mut latencies)| {
            latencies.sort_by(f64::total_cmp);
            let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
            (second as f64, latencies.len() as f64, at(0.5), at(0.99))
        })
        .collect()
}

/// Draws `timelines` to an SVG file at `path`.
pub(super) fn draw(path: &Path, timelines: &[Timeline]) -> Result<(), String> {
    let series: Vec<(&str, Vec<Second>)> =
        timelines.iter().filter(|t| !t.samples.is_empty()).map(|t| (t.name.as_str(), per_second(&t.samples))).collect();
    let longest = series.iter().flat_map(|(_, s)| s.iter().map(|p| p.0)).fold(1.0, f64::max) + 1.0;
    let top_rate = series.iter().flat_map(|(_, s)| s.iter().map(|p| p.1)).fold(1.0, f64::max) * 1.1;
    let top_latency = series.iter().flat_map(|(_, s)| s.iter().map(|p| p.3)).fold(1.0, f64::max) * 1.1;
    let root = SVGBackend::new(path, (1100, 800)).into_drawing_area();
    let failed = |e: &dyn std::fmt::Display| format!("cannot draw {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| failed(&e))?;
    let (upper, lower) = root.split_vertically(400);
    let mut rate = ChartBuilder::on(&upper)
        .caption("accepted messages per second, by phase", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..longest, 0.0..top_rate)
        .map_err(|e| failed(&e))?;
    rate.configure_mesh().x_desc("seconds into the phase").y_desc("msg/s").draw().map_err(|e| failed(&e))?;
    let mut latency = ChartBuilder::on(&lower)
        .caption("HTTP latency p50 (thick) and p99 (thin), ms", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..longest, 0.0..top_latency)
        .map_err(|e| failed(&e))?;
    latency.configure_mesh().x_desc("seconds into the phase").y_desc("ms").draw().map_err(|e| failed(&e))?;
    for (i, (name, points)) in series.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        rate.draw_series(LineSeries::new(points.iter().map(|p| (p.0, p.1)), colour.stroke_width(2)))
            .map_err(|e| failed(&e))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        latency.draw_series(LineSeries::new(points.iter().map(|p| (p.0, p.2)), colour.stroke_width(2))).map_err(|e| failed(&e))?;
        latency.draw_series(LineSeries::new(points.iter().map(|p| (p.0, p.3)), colour.stroke_width(1))).map_err(|e| failed(&e))?;
    }
    rate.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| failed(&e))?;
    root.present().map_err(|e| failed(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_become_an_svg_with_a_line_each() {
        let ms = Duration::from_millis;
        let timeline = |name: &str, latency: u64| Timeline {
            name: name.into(),
            samples: (0..300).map(|i| (ms(i * 10), ms(latency + i % 7))).collect(),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.svg");
        draw(&path, &[timeline("closed", 4), timeline("open", 1)]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("closed") && svg.contains("open"), "{}", &svg[..200.min(svg.len())]);
        assert!(svg.matches("<polyline").count() >= 6, "a rate, a p50 and a p99 line per phase");
        let seconds = per_second(&timeline("x", 4).samples);
        assert_eq!(seconds.len(), 3);
        assert_eq!(seconds[0].1, 100.0, "100 requests sent in the first second");
    }
}
