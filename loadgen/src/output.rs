//! Files loadgen writes besides its report: the full percentile distribution in
//! HdrHistogram's `.hgrm` text format (`--hdr-out`), and a latency-by-percentile chart as a
//! self-contained SVG (`--plot`).

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// The classic `.hgrm` percentile distribution (values in the histogram's unit, scaled by
/// `scale`: 1000.0 turns microseconds into milliseconds).
pub fn hgrm(h: &Histogram<u64>, scale: f64) -> String {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let inv = if q < 1.0 { format!("{:.2}", 1.0 / (1.0 - q)) } else { String::new() };
        let _ = writeln!(
            out,
            "{:12.3} {:14.12} {:10} {:14}",
            v.value_iterated_to() as f64 / scale,
            q,
            v.count_since_last_iteration(),
            inv
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]\n#[Max     = {:12.3}, Total count    = {:12}]",
        h.mean() / scale,
        h.stdev() / scale,
        h.max() as f64 / scale,
        h.len()
    );
    out
}

/// Latency against percentile (log scale on both axes, HdrHistogram style).
/// An SVG document's opening: its size, a white background and the title.
fn svg_open(w: f64, ht: f64, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{ht}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        w / 2.0,
        title.replace('&', "&amp;").replace('<', "&lt;")
    )
}

pub fn svg(h: &Histogram<u64>, title: &str, unit_scale: f64, unit: &str) -> String {
    let (w, ht, left, bottom, top, right) = (760.0, 420.0, 70.0, 50.0, 40.0, 20.0);
    let pw = w - left - right;
    let ph = ht - top - bottom;
    let xs = [0.0, 0.5, 0.9, 0.99, 0.999, 0.9999];
    let x_of = |q: f64| left + pw * (1.0 / (1.0 - q.min(0.99999))).log10() / 5.0;
    let max = (h.max() as f64 / unit_scale).max(1e-3);
    let min = (h.min().max(1) as f64 / unit_scale).max(1e-3);
    let (lo, hi) = (min.log10().floor(), max.log10().ceil().max(min.log10().floor() + 1.0));
    let y_of = |v: f64| top + ph * (1.0 - (v.max(1e-3).log10() - lo) / (hi - lo));
    let mut s = svg_open(w, ht, title);
    for q in xs {
        let x = x_of(q);
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}%</text>",
            top + ph,
            top + ph + 18.0,
            q * 100.0
        );
    }
    let mut e = lo;
    while e <= hi {
        let y = y_of(10f64.powf(e));
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{} {unit}</text>",
            left + pw,
            left - 6.0,
            y + 4.0,
            10f64.powf(e)
        );
        e += 1.0;
    }
    let mut points = String::new();
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let _ = write!(
            points,
            "{:.1},{:.1} ",
            x_of(q),
            y_of(v.value_iterated_to() as f64 / unit_scale)
        );
    }
    let _ = writeln!(
        s,
        "<polyline fill=\"none\" stroke=\"#1f6fb2\" stroke-width=\"2\" points=\"{points}\"/>"
    );
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">percentile</text></svg>",
        left + pw / 2.0,
        ht - 8.0
    );
    s
}

/// A chart of two byte series over time (`(t_secs, a, b)`: the server's RSS and the kernel's
/// TCP memory), in MiB, with a mark where the load stopped and the budget when there is one.
pub fn series_svg(
    points: &[(f64, u64, u64)],
    title: &str,
    stop: f64,
    budget: Option<u64>,
) -> String {
    let (w, ht, left, bottom, top, right) = (760.0, 420.0, 70.0, 50.0, 40.0, 20.0);
    let (pw, ph) = (w - left - right, ht - top - bottom);
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let t_max = points.iter().map(|p| p.0).fold(stop, f64::max).max(1.0);
    let top_v =
        points.iter().map(|p| mib(p.1.max(p.2))).fold(budget.map_or(0.0, mib), f64::max).max(1.0)
            * 1.1;
    let x_of = |t: f64| left + pw * t / t_max;
    let y_of = |v: f64| top + ph * (1.0 - v / top_v);
    let mut s = svg_open(w, ht, title);
    for i in 0..=5 {
        let v = top_v * f64::from(i) / 5.0;
        let y = y_of(v);
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>",
            left + pw,
            left - 6.0,
            y + 4.0
        );
        let tx = t_max * f64::from(i) / 5.0;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{tx:.0} s</text>",
            x_of(tx),
            top + ph + 18.0
        );
    }
    let x = x_of(stop);
    let _ = writeln!(
        s,
        "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#888\" stroke-dasharray=\"4 3\"/><text x=\"{:.1}\" y=\"{:.1}\">load stops</text>",
        top + ph,
        x + 4.0,
        top + 14.0
    );
    if let Some(b) = budget {
        let y = y_of(mib(b));
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#c22\" stroke-dasharray=\"6 3\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#c22\">budget</text>",
            left + pw,
            left + 4.0,
            y - 4.0
        );
    }
    for (pick, color, name, row) in
        [(0usize, "#1f6fb2", "server RSS", 0.0), (1, "#e08a1e", "kernel TCP memory", 16.0)]
    {
        let mut line = String::new();
        for p in points {
            let v = if pick == 0 { p.1 } else { p.2 };
            let _ = write!(line, "{:.1},{:.1} ", x_of(p.0), y_of(mib(v)));
        }
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{line}\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"{color}\" text-anchor=\"end\">{name}</text>",
            left + pw - 4.0,
            top + 14.0 + row
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">seconds since the storm began</text></svg>",
        left + pw / 2.0,
        ht - 8.0
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_distribution_and_chart() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for v in 1..=1000u64 {
            h.record(v * 10).unwrap();
        }
        let text = hgrm(&h, 1000.0);
        assert!(text.starts_with("       Value     Percentile"));
        assert!(text.contains("Total count    =         1000"));
        let last = text.lines().rfind(|l| !l.starts_with('#') && !l.trim().is_empty()).unwrap();
        assert!(last.trim_start().starts_with("10.0"), "{last}");
        let svg = svg(&h, "latency <test>", 1000.0, "ms");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("latency &lt;test>"));
        assert!(svg.contains("<polyline"));
    }

    #[test]
    fn draws_memory_over_time_with_the_stop_and_the_budget() {
        let pts = [(0.0, 10 << 20, 1 << 20), (1.0, 40 << 20, 8 << 20), (2.0, 20 << 20, 2 << 20)];
        let svg = series_svg(&pts, "rss", 1.5, Some(64 << 20));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("load stops") && svg.contains("budget"));
    }
}
