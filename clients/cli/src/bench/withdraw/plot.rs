//! PNG plots of a `bench withdraw` run: throughput and p99 latency against
//! clients, for the mesh and pgbench's one-statement baseline, one panel per
//! scenario.
//!
//! Drawn with `plotters` on its bitmap backend; its text needs a TrueType
//! font, read at run time from the first of [`FONTS`] that exists (Debian's
//! `fonts-dejavu-core`).

use std::path::Path;

use anyhow::{Context as _, bail};
use plotters::prelude::*;

use super::measure::{Measured, Row};

/// The files written into the plot directory.
pub(super) const FILES: [&str; 2] = ["withdraw-throughput.png", "withdraw-p99.png"];

/// Fonts tried for the plots' text, in order.
const FONTS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Size of each PNG, in pixels: two panels side by side.
const SIZE: (u32, u32) = (1400, 560);

/// The two columns, with their colours.
const SERIES: [(&str, RGBColor); 2] = [
    ("mesh (College batching)", RGBColor(0x1f, 0x77, 0xb4)),
    (
        "pgbench, one statement per withdrawal",
        RGBColor(0xd6, 0x27, 0x28),
    ),
];

/// Writes both plots of `rows` into `dir`.
pub(super) fn write_plots(rows: &[Row], dir: &Path) -> anyhow::Result<()> {
    register_font()?;
    std::fs::create_dir_all(dir)?;
    plot(rows, &dir.join(FILES[0]), "withdrawals/s", false, |m| {
        m.rate
    })?;
    plot(rows, &dir.join(FILES[1]), "p99 latency (ms)", true, |m| {
        m.latency.value_at_quantile(0.99) as f64 / 1000.0
    })?;
    Ok(())
}

fn register_font() -> anyhow::Result<()> {
    let Some(path) = FONTS.iter().find(|p| Path::new(p).is_file()) else {
        bail!(
            "no font for the plots' text; install fonts-dejavu-core (looked for {})",
            FONTS.join(", ")
        );
    };
    let bytes: &'static [u8] = Box::leak(std::fs::read(path)?.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{path} is not a usable font"))
}

/// One PNG: a panel per scenario, `value` of each column against clients
/// (log scale), on a log scale too when `log_y`.
fn plot(
    rows: &[Row],
    path: &Path,
    what: &str,
    log_y: bool,
    value: impl Fn(&Measured) -> f64,
) -> anyhow::Result<()> {
    let mut scenarios: Vec<&str> = Vec::new();
    for row in rows {
        if !scenarios.contains(&row.scenario.as_str()) {
            scenarios.push(&row.scenario);
        }
    }
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, scenarios.len().max(1)));
    let max_clients = rows.iter().map(|r| r.clients).max().unwrap_or(1) as f64;
    for (panel, scenario) in panels.iter().zip(&scenarios) {
        let cells: Vec<&Row> = rows.iter().filter(|r| r.scenario == *scenario).collect();
        // In the order of SERIES.
        let sides: [fn(&Row) -> &Measured; 2] = [Row::mesh, |row| &row.pgbench];
        let series: Vec<Vec<(f64, f64)>> = sides
            .iter()
            .map(|side| {
                cells
                    .iter()
                    .map(|row| (row.clients as f64, value(side(row))))
                    .collect()
            })
            .collect();
        let top = series
            .iter()
            .flatten()
            .map(|&(_, y)| y)
            .fold(0.0, f64::max)
            .max(1e-3)
            * 1.15;
        let bottom = series
            .iter()
            .flatten()
            .map(|&(_, y)| y)
            .fold(f64::INFINITY, f64::min)
            .max(1e-3)
            / 1.5;
        let mut builder = ChartBuilder::on(panel);
        builder
            .caption(format!("{what}: {scenario}"), ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(70);
        let x = (0.8..max_clients * 1.25).log_scale();
        macro_rules! draw {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .x_desc("concurrent clients")
                    .y_desc(what)
                    .label_style(("sans-serif", 16))
                    .draw()?;
                for (points, (name, colour)) in series.iter().zip(SERIES) {
                    chart
                        .draw_series(LineSeries::new(
                            points.iter().copied(),
                            colour.stroke_width(3),
                        ))?
                        .label(name)
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3))
                        });
                    chart
                        .draw_series(points.iter().map(|&p| Circle::new(p, 5, colour.filled())))?;
                }
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperLeft)
                    .label_font(("sans-serif", 15))
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .draw()?;
            }};
        }
        if log_y {
            draw!(builder.build_cartesian_2d(x, (bottom..top).log_scale())?);
        } else {
            draw!(builder.build_cartesian_2d(x, 0.0..top)?);
        }
    }
    root.present()
        .with_context(|| format!("failed to write {}", path.display()))?;
    Ok(())
}
