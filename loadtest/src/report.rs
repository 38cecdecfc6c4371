//! Writing a run down: the JSON result, an SVG chart (successful ops/s and
//! p99 over time, one panel per stage), and the text summary.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::load::StageResult;
use crate::scenarios::Report;

pub fn write(report: &Report, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let stamp = report.started_at.replace([':', '.'], "-");
    let base = format!("{:?}-{stamp}", report.scenario).to_lowercase();
    let json = dir.join(format!("{base}.json"));
    let svg = dir.join(format!("{base}.svg"));
    std::fs::write(&json, serde_json::to_string_pretty(report)?)?;
    std::fs::write(&svg, chart(report))?;
    Ok((json, svg))
}

fn panels(report: &Report) -> Vec<&StageResult> {
    report.ceiling.iter().chain(&report.stages).collect()
}

/// One panel per stage: blue = successful ops/s (left axis), red = p99 ms
/// (right axis), x = seconds.
pub fn chart(report: &Report) -> String {
    const W: f64 = 860.0;
    const H: f64 = 220.0;
    const PAD_L: f64 = 70.0;
    const PAD_R: f64 = 70.0;
    const PAD_T: f64 = 30.0;
    const PAD_B: f64 = 30.0;
    let panels = panels(report);
    let total_h = H * panels.len() as f64 + 50.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{total_h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="22" font-size="15">rush-loadtest {:?}, {} tasks, {}</text>
<text x="{legend_x}" y="38"><tspan fill="#1f5fbf">── successful ops/s (left axis)</tspan>  <tspan fill="#c0392b">- - p99 latency, ms (right axis)</tspan></text>
"##,
        report.scenario,
        report.concurrency,
        report.started_at,
        legend_x = 10.0,
    );
    for (i, st) in panels.iter().enumerate() {
        let top = 50.0 + i as f64 * H;
        let (x0, x1, y0, y1) = (PAD_L, W - PAD_R, top + PAD_T, top + H - PAD_B);
        let n = st.timeline.len().max(2) as f64;
        let ok_max = st.timeline.iter().map(|p| p.ok).max().unwrap_or(1).max(1) as f64 * 1.1;
        let p99_max = st.timeline.iter().map(|p| p.p99_ms).fold(0.0, f64::max).max(1.0) * 1.1;
        let x = |t: usize| x0 + (x1 - x0) * t as f64 / (n - 1.0);
        let line = |f: &dyn Fn(usize) -> f64| {
            st.timeline
                .iter()
                .enumerate()
                .map(|(t, _)| format!("{:.1},{:.1}", x(t), f(t)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let ok_pts = line(&|t| y1 - (y1 - y0) * st.timeline[t].ok as f64 / ok_max);
        let p99_pts = line(&|t| y1 - (y1 - y0) * st.timeline[t].p99_ms / p99_max);
        let _ = write!(
            s,
            r##"<text x="{x0}" y="{t}" font-weight="bold">{name}: {ok:.0} ok/s, p99 {p99:.2} ms, p99.9 {p999:.2} ms</text>
<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>
<text x="{lx}" y="{y0}" text-anchor="end" fill="#1f5fbf">{okm:.0}/s</text>
<text x="{lx}" y="{y1}" text-anchor="end" fill="#1f5fbf">0</text>
<text x="{rx}" y="{y0}" fill="#c0392b">{pm:.1} ms</text>
<text x="{rx}" y="{y1}" fill="#c0392b">0</text>
<text x="{x1}" y="{yb}" text-anchor="end">{secs} s</text>
<polyline fill="none" stroke="#1f5fbf" stroke-width="2" points="{ok_pts}"/>
<polyline fill="none" stroke="#c0392b" stroke-width="1.5" stroke-dasharray="4 2" points="{p99_pts}"/>
"##,
            t = y0 - 8.0,
            name = st.name,
            ok = st.ok_per_s,
            p99 = st.latency.p99_ms,
            p999 = st.latency.p999_ms,
            w = x1 - x0,
            h = y1 - y0,
            lx = x0 - 6.0,
            rx = x1 + 6.0,
            okm = ok_max,
            pm = p99_max,
            yb = y1 + 18.0,
            secs = st.timeline.len(),
        );
    }
    s.push_str("</svg>\n");
    s
}

pub fn summary(report: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "scenario {:?}, {} tasks, {:?}", report.scenario, report.concurrency, report.model);
    let _ = writeln!(
        s,
        "{:<16} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "stage", "ok/s", "req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9", "max ms"
    );
    for st in panels(report) {
        let l = &st.latency;
        let _ = writeln!(
            s,
            "{:<16} {:>10.0} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.2}",
            st.name, st.ok_per_s, st.total_per_s, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
        );
    }
    for (name, r) in &report.ceiling_ratio {
        let _ = writeln!(s, "{name}: {:.0}% of the HTTP ceiling", r * 100.0);
    }
    let sampled: Vec<_> = panels(report).into_iter().filter(|st| st.lag.is_some()).collect();
    if !sampled.is_empty() {
        let _ = writeln!(
            s,
            "{:<16} {:>11} {:>11} {:>11} {:>9} {:>9} {:>9} {:>10}",
            "durable side", "applied/s", "behind p50", "behind p99", "lag p99 s", "lag max s", "drain s", "cpu µs/ok"
        );
        for st in sampled {
            let Some(l) = &st.lag else { continue };
            let drain = st.drain_s.map_or("never".to_string(), |d| format!("{d:.2}"));
            let cpu = st.cpu_us_per_ok.map_or("-".to_string(), |c| format!("{c:.1}"));
            let _ = writeln!(
                s,
                "{:<16} {:>11.0} {:>11.0} {:>11.0} {:>9.2} {:>9.2} {:>9} {:>10}",
                st.name, l.applied_per_s, l.events_p50, l.events_p99, l.seconds_p99, l.seconds_max, drain, cpu
            );
        }
    }
    for (name, r) in &report.cpu_ratio {
        let _ = writeln!(s, "{name}: rush's CPU per ok (persistence included) is {r:.1}× its CPU per ceiling request");
    }
    if let Some(w) = report.wallets_settled_s {
        let _ = writeln!(s, "every wallet settled {w:.2} s after the load ended");
    }
    for st in &report.stages {
        let outcomes: Vec<String> = st.outcomes.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = writeln!(s, "{} outcomes: {}", st.name, outcomes.join(", "));
    }
    for c in &report.checks {
        let _ = writeln!(s, "[{}] {}: {}", if c.ok { "ok" } else { "VIOLATED" }, c.name, c.detail);
    }
    let _ = writeln!(s, "violations: {}", report.violations);
    s
}
