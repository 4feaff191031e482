//! Draws one criterion group's throughput as a horizontal bar chart in SVG, so that
//! `docs/benchmarks.md` can show a picture of the figures it quotes.
//!
//! ```text
//! cargo run -p sluice-benches --bin bench-chart -- --criterion-dir target/criterion \
//!     --group append --out docs/img/append.svg [--filter '1KiB x500']
//! ```
//!
//! Criterion keeps each benchmark's last run in `<criterion-dir>/<group>/<id path>/new/`:
//! `benchmark.json` names it and holds its throughput per iteration, and `estimates.json` holds
//! the mean time per iteration in nanoseconds. One bar is drawn per benchmark of the group
//! whose id contains the filter, its length the throughput in MiB/s. Benchmarks without a
//! throughput in bytes are left out with a note on stderr. Missing or malformed files end the
//! program with a message and exit code 2.
//!
//! The SVG is written by hand (rectangles, lines and text) to keep the tool free of plotting
//! dependencies.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::Value;

const USAGE: &str = "usage: bench-chart --group GROUP --out FILE.svg \
                     [--criterion-dir DIR (default target/criterion)] [--filter SUBSTRING]";

/// One bar: a benchmark id without its group, and its throughput.
#[derive(Debug, Clone, PartialEq)]
struct Bar {
    id: String,
    mib_s: f64,
}

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("bench-chart: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Vec<String>) -> Result<(), String> {
    let (mut dir, mut group, mut out, mut filter) =
        (PathBuf::from("target/criterion"), None, None, String::new());
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--criterion-dir" => dir = PathBuf::from(value()?),
            "--group" => group = Some(value()?),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--filter" => filter = value()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            _ => return Err(format!("unknown argument {flag:?}\n{USAGE}")),
        }
    }
    let (Some(group), Some(out)) = (group, out) else {
        return Err(format!("--group and --out are required\n{USAGE}"));
    };

    // Criterion names the group's directory after the group, with these characters replaced.
    let group_dir =
        dir.join(group.replace(['?', '"', '/', '\\', '*', '<', '>', ':', '|', '^'], "_"));
    if !group_dir.is_dir() {
        return Err(format!(
            "no criterion results for group {group:?}: {} is not a directory (run the benchmark first)",
            group_dir.display()
        ));
    }
    let mut found = Vec::new();
    find_benchmarks(&group_dir, &mut found)?;
    let mut bars = Vec::new();
    for bench_dir in found {
        if let Some(bar) = read_bar(&bench_dir, &group, &filter)? {
            bars.push(bar);
        }
    }
    if bars.is_empty() {
        return Err(format!(
            "no benchmark of group {group:?} with a throughput in bytes matches filter {filter:?} under {}",
            group_dir.display()
        ));
    }
    bars.sort_by(|a, b| a.id.cmp(&b.id));
    let title = match filter.as_str() {
        "" => format!("{group}: throughput (MiB/s, mean)"),
        f => format!("{group} ({f}): throughput (MiB/s, mean)"),
    };
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    fs::write(&out, svg(&title, &bars))
        .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    eprintln!("wrote {} ({} bars)", out.display(), bars.len());
    Ok(())
}

/// Collects every directory under `dir` that holds a `new/benchmark.json`.
fn find_benchmarks(dir: &Path, found: &mut Vec<PathBuf>) -> Result<(), String> {
    if dir.join("new").join("benchmark.json").is_file() {
        found.push(dir.to_path_buf());
        return Ok(());
    }
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut subdirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && !p.ends_with("report"))
        .collect();
    subdirs.sort();
    for sub in subdirs {
        find_benchmarks(&sub, found)?;
    }
    Ok(())
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text =
        fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not valid JSON: {e}", path.display()))
}

/// The bar of the benchmark in `dir`, or `None` if it is of another group, does not match the
/// filter, or has no throughput in bytes.
fn read_bar(dir: &Path, group: &str, filter: &str) -> Result<Option<Bar>, String> {
    let bench_path = dir.join("new").join("benchmark.json");
    let bench = read_json(&bench_path)?;
    let field = |name: &str| {
        bench.get(name).and_then(Value::as_str).ok_or(format!(
            "{} has no string field {name:?}",
            bench_path.display()
        ))
    };
    let full_id = field("full_id")?;
    if field("group_id")? != group || !full_id.contains(filter) {
        return Ok(None);
    }
    let throughput = bench.get("throughput");
    let Some(bytes) = ["Bytes", "BytesDecimal"]
        .iter()
        .find_map(|k| throughput.and_then(|t| t.get(k)).and_then(Value::as_u64))
    else {
        eprintln!("bench-chart: skipping {full_id}: no throughput in bytes");
        return Ok(None);
    };
    let est_path = dir.join("new").join("estimates.json");
    let mean_ns = read_json(&est_path)?
        .pointer("/mean/point_estimate")
        .and_then(Value::as_f64)
        .filter(|ns| ns.is_finite() && *ns > 0.0)
        .ok_or(format!(
            "{} has no positive mean.point_estimate",
            est_path.display()
        ))?;
    let id = full_id
        .strip_prefix(group)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or(full_id);
    Ok(Some(Bar {
        id: id.to_string(),
        mib_s: bytes as f64 / (mean_ns * 1e-9) / f64::from(1 << 20),
    }))
}

/// Escapes text for SVG content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Evenly spaced axis ticks from 0 that cover `max`, about `target` of them, on a step of 1, 2
/// or 5 times a power of ten. The last tick is at or above `max`.
fn ticks(max: f64, target: usize) -> Vec<f64> {
    if !max.is_finite() || max <= 0.0 || target == 0 {
        return vec![0.0, 1.0];
    }
    let raw = max / target as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let count = (max / step).ceil() as usize;
    (0..=count).map(|i| i as f64 * step).collect()
}

/// A tick's label, with as many decimals as the step between ticks needs (none from 1 up).
fn tick_label(value: f64, step: f64) -> String {
    let decimals = if step >= 1.0 || step <= 0.0 {
        0
    } else {
        (-step.log10()).ceil() as usize
    };
    format!("{value:.decimals$}")
}

/// The chart: a title, one labelled bar per benchmark, and an x axis with ticks and grid lines.
fn svg(title: &str, bars: &[Bar]) -> String {
    const BAR_H: usize = 22;
    const GAP: usize = 10;
    const TOP: usize = 50;
    const PLOT_W: f64 = 520.0;
    // Text is not measured in SVG; about 7 pixels per character of a 12-pixel sans-serif font.
    let label_w = 20 + 7 * bars.iter().map(|b| b.id.chars().count()).max().unwrap_or(0);
    let width = label_w + PLOT_W as usize + 90;
    let plot_bottom = TOP + bars.len() * (BAR_H + GAP);
    let height = plot_bottom + 50;
    let max = bars.iter().map(|b| b.mib_s).fold(0.0, f64::max);
    let ticks = ticks(max, 5);
    let axis_max = ticks.last().copied().unwrap_or(1.0);
    let x = |v: f64| label_w as f64 + v / axis_max * PLOT_W;

    let (mid, title) = (width / 2, escape(title));
    let (grid_top, tick_y, unit_y) = (TOP - 5, plot_bottom + 16, plot_bottom + 36);
    let (axis_end, unit_x) = (x(axis_max), x(axis_max / 2.0));
    let step = ticks.get(1).copied().unwrap_or(1.0);
    let mut s = String::new();
    // Writing to a String cannot fail, so the results of `writeln!` are ignored below.
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">
<rect width="{width}" height="{height}" fill="white"/>
<text x="{mid}" y="24" font-size="15" font-weight="bold" text-anchor="middle">{title}</text>"#
    );
    for t in &ticks {
        let (tx, label) = (x(*t), tick_label(*t, step));
        let _ = writeln!(
            s,
            r##"<line x1="{tx:.1}" y1="{grid_top}" x2="{tx:.1}" y2="{plot_bottom}" stroke="#ddd"/>
<text x="{tx:.1}" y="{tick_y}" text-anchor="middle">{label}</text>"##
        );
    }
    let _ = writeln!(
        s,
        r##"<line x1="{label_w}" y1="{plot_bottom}" x2="{axis_end:.1}" y2="{plot_bottom}" stroke="#333"/>
<text x="{unit_x:.1}" y="{unit_y}" text-anchor="middle">MiB/s</text>"##
    );
    for (i, bar) in bars.iter().enumerate() {
        let (y, label_x, id) = (TOP + i * (BAR_H + GAP), label_w - 8, escape(&bar.id));
        let (text_y, bar_w) = (y + BAR_H / 2 + 4, x(bar.mib_s) - label_w as f64);
        let (value_x, value) = (x(bar.mib_s) + 5.0, bar.mib_s);
        let _ = writeln!(
            s,
            r##"<text x="{label_x}" y="{text_y}" text-anchor="end">{id}</text>
<rect x="{label_w}" y="{y}" width="{bar_w:.1}" height="{BAR_H}" fill="#4878a8"/>
<text x="{value_x:.1}" y="{text_y}">{value:.0}</text>"##
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_handles_markup_characters() {
        assert_eq!(escape("1KiB x500/always"), "1KiB x500/always");
        assert_eq!(
            escape(r#"a<b & "c">'d'"#),
            "a&lt;b &amp; &quot;c&quot;&gt;&apos;d&apos;"
        );
    }

    #[test]
    fn ticks_use_round_steps_and_cover_the_maximum() {
        assert_eq!(ticks(870.0, 5), [0.0, 200.0, 400.0, 600.0, 800.0, 1000.0]);
        let small = ticks(1.0, 5);
        let labels: Vec<String> = small.iter().map(|t| tick_label(*t, 0.2)).collect();
        assert_eq!(labels, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        assert_eq!(tick_label(1000.0, 200.0), "1000");
        assert_eq!(ticks(3100.0, 5), [0.0, 1000.0, 2000.0, 3000.0, 4000.0]);
        assert_eq!(ticks(0.0, 5), [0.0, 1.0]);
        assert_eq!(ticks(f64::NAN, 5), [0.0, 1.0]);
    }

    #[test]
    fn svg_escapes_ids_and_has_one_bar_each() {
        let bars = [
            Bar {
                id: "1KiB x500/always".into(),
                mib_s: 800.0,
            },
            Bar {
                id: "<odd> & id".into(),
                mib_s: 80.0,
            },
        ];
        let out = svg("append", &bars);
        assert!(out.contains(">1KiB x500/always</text>"));
        assert!(out.contains(">&lt;odd&gt; &amp; id</text>"));
        assert!(!out.contains("<odd>"));
        assert_eq!(out.matches(r##"fill="#4878a8""##).count(), 2);
    }
}
