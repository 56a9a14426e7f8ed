//! Table and chart of `benches/compare.sh`.
//!
//! `chart RESULTS.tsv --markdown OUT.md --svg OUT.svg` reads the per-run results the
//! script wrote and writes (a) a markdown table of medians, ratios and CPU cost and (b) an
//! SVG bar chart of the ratios (drawn with `plotters`, SVG backend only).
//!
//! Input: one tab-separated record per line; `#` starts a comment line.
//!
//! ```text
//! group  metric  unit  better  setup  ref1  ref2  value  cpu
//! ```
//!
//! * `unit` is `Gbit/s`, `Mpps` or `us`; `better` is `higher` or `lower`;
//! * `ref1`/`ref2` name the setups of the same group and metric this one is compared
//!   with (`-` for none); the ratio is `median(this) / median(ref)`;
//! * `value` is one run's figure, or `skip` for a setup that could not run (then `cpu`
//!   holds the reason, shown in the table);
//! * `cpu` is that run's CPU seconds per Gbit (for `Gbit/s`) or per million packets (for
//!   `Mpps`), or `-`.
//!
//! Rows are grouped by group, then metric, in the order these first appear; within a
//! metric, setups keep the order in which they first appear. Medians are
//! over the runs of a row (the mean of the middle two for an even count). A malformed
//! line is refused with its line number; nothing is written then.
#![forbid(unsafe_code)]
#![allow(missing_docs)]

use plotters::prelude::*;
use std::fmt::Write as _;
use std::process::ExitCode;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

/// One (group, metric, setup) with all its runs.
#[derive(Clone, Debug, PartialEq)]
struct Row {
    group: String,
    metric: String,
    unit: String,
    better: Better,
    setup: String,
    ref1: Option<String>,
    ref2: Option<String>,
    values: Vec<f64>,
    cpu: Vec<f64>,
    skip: Option<String>,
}

fn parse(text: &str) -> Result<Vec<Row>, String> {
    let mut rows: Vec<Row> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let lineno = n + 1;
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let [group, metric, unit, better, setup, ref1, ref2, value, cpu] = f[..] else {
            return Err(format!(
                "line {lineno}: expected 9 tab-separated fields, got {}",
                f.len()
            ));
        };
        let better = match better {
            "higher" => Better::Higher,
            "lower" => Better::Lower,
            b => {
                return Err(format!(
                    "line {lineno}: better must be higher or lower, not {b:?}"
                ))
            }
        };
        if !matches!(unit, "Gbit/s" | "Mpps" | "us") {
            return Err(format!("line {lineno}: unknown unit {unit:?}"));
        }
        let opt = |s: &str| (s != "-").then(|| s.to_string());
        let idx = match rows
            .iter()
            .position(|r| r.group == group && r.metric == metric && r.setup == setup)
        {
            Some(i) => i,
            None => {
                rows.push(Row {
                    group: group.into(),
                    metric: metric.into(),
                    unit: unit.into(),
                    better,
                    setup: setup.into(),
                    ref1: opt(ref1),
                    ref2: opt(ref2),
                    values: Vec::new(),
                    cpu: Vec::new(),
                    skip: None,
                });
                rows.len() - 1
            }
        };
        let row = &mut rows[idx];
        if value == "skip" {
            row.skip = Some(cpu.to_string());
            continue;
        }
        let v: f64 = value
            .parse()
            .map_err(|e| format!("line {lineno}: value {value:?}: {e}"))?;
        if !v.is_finite() || v < 0.0 {
            return Err(format!("line {lineno}: value {value:?} is not a figure"));
        }
        row.values.push(v);
        if cpu != "-" {
            let c: f64 = cpu
                .parse()
                .map_err(|e| format!("line {lineno}: cpu {cpu:?}: {e}"))?;
            if c.is_finite() {
                row.cpu.push(c);
            }
        }
    }
    // Group by (group, metric), in order of first appearance; the sort is stable.
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in &rows {
        let k = (r.group.clone(), r.metric.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let groups: Vec<&String> = keys.iter().map(|k| &k.0).fold(Vec::new(), |mut v, g| {
        if !v.contains(&g) {
            v.push(g);
        }
        v
    });
    let rank = |r: &Row| {
        let g = groups.iter().position(|g| **g == r.group).unwrap_or(0);
        let m = keys
            .iter()
            .position(|k| k.0 == r.group && k.1 == r.metric)
            .unwrap_or(0);
        (g, m)
    };
    rows.sort_by_key(|r| rank(r));
    Ok(rows)
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    Some(if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    })
}

/// median(row) / median(the row's reference `which`), if both ran.
fn ratio(rows: &[Row], row: &Row, which: Option<&String>) -> Option<f64> {
    let name = which?;
    let r = rows
        .iter()
        .find(|r| r.group == row.group && r.metric == row.metric && &r.setup == name)?;
    let (a, b) = (median(&row.values)?, median(&r.values)?);
    (b > 0.0).then(|| a / b)
}

fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "Mpps" => format!("{v:.3}"),
        "us" => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

fn cpu_unit(unit: &str) -> &'static str {
    match unit {
        "Gbit/s" => "s/Gbit",
        "Mpps" => "s/Mpkt",
        _ => "",
    }
}

fn markdown(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str("| group | metric | setup | median | runs | × ref | × ref 2 | CPU |\n");
    out.push_str("|---|---|---|---:|---|---:|---:|---:|\n");
    for row in rows {
        if let Some(why) = &row.skip {
            if row.values.is_empty() {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | — | {} | | | |",
                    row.group, row.metric, row.setup, why
                );
                continue;
            }
        }
        let Some(m) = median(&row.values) else {
            continue;
        };
        let runs: Vec<String> = row
            .values
            .iter()
            .map(|v| fmt_value(*v, &row.unit))
            .collect();
        let r = |which: Option<&String>| match (ratio(rows, row, which), which) {
            (Some(x), Some(name)) => format!("{x:.2} ({name})"),
            _ => String::new(),
        };
        let cpu = match median(&row.cpu) {
            Some(c) => format!("{c:.3} {}", cpu_unit(&row.unit)),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} {} | {} | {} | {} | {} |",
            row.group,
            row.metric,
            row.setup,
            fmt_value(m, &row.unit),
            row.unit,
            runs.join(" "),
            r(row.ref1.as_ref()),
            r(row.ref2.as_ref()),
            cpu
        );
    }
    out
}

/// The bars: every row with a first reference, as (label, ratio, setup).
fn bars(rows: &[Row]) -> Vec<(String, f64, String)> {
    rows.iter()
        .filter_map(|row| {
            let x = ratio(rows, row, row.ref1.as_ref())?;
            let hint = match row.better {
                Better::Higher => "",
                Better::Lower => ", lower is better",
            };
            let reference = row.ref1.as_deref().unwrap_or_default();
            Some((
                format!(
                    "{} {} — {} (÷ {reference}{hint})",
                    row.group, row.metric, row.setup
                ),
                x,
                row.setup.clone(),
            ))
        })
        .collect()
}

/// Where the chart's ratio axis ends.
const AXIS_CAP: f64 = 3.0;

fn svg(rows: &[Row], title: &str) -> Result<String, String> {
    let bars = bars(rows);
    if bars.is_empty() {
        return Err("no row has a reference that ran: nothing to draw".into());
    }
    let mut setups: Vec<&str> = Vec::new();
    for (_, _, s) in &bars {
        if !setups.contains(&s.as_str()) {
            setups.push(s);
        }
    }
    // Ratios far above 1 (a peer's p99 several times the kernel's) would squash every
    // other bar: the axis stops at AXIS_CAP, longer bars end there and keep their label.
    let xmax = bars
        .iter()
        .map(|b| b.1)
        .fold(1.0f64, f64::max)
        .min(AXIS_CAP)
        * 1.15;
    let n = bars.len();
    let height = 90 + 22 * n as u32;
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (1100, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(520)
            .build_cartesian_2d(0f64..xmax, (0..n).into_segmented())
            .map_err(|e| e.to_string())?;
        let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .label_style(("sans-serif", 12))
            .axis_desc_style(("sans-serif", 13))
            .y_label_formatter(&|v| match v {
                // Segment 0 is at the bottom: the first row is drawn at the top.
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => labels
                    .get(n.wrapping_sub(1).wrapping_sub(*i))
                    .cloned()
                    .unwrap_or_default(),
                SegmentValue::Last => String::new(),
            })
            .x_desc("ratio (1.0 = the reference setup)")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, (_, x, setup))| {
                let i = n - 1 - i;
                let k = setups.iter().position(|s| s == setup).unwrap_or(0);
                let color = Palette99::pick(k).filled();
                let mut r = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(i)),
                        (*x, SegmentValue::Exact(i + 1)),
                    ],
                    color,
                );
                r.set_margin(3, 3, 0, 0);
                r
            }))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, (_, x, _))| {
                Text::new(
                    format!("{x:.2}"),
                    (
                        x.min(AXIS_CAP) + xmax * 0.005,
                        SegmentValue::Exact(n - 1 - i),
                    ),
                    ("sans-serif", 12),
                )
            }))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Last)],
                BLACK,
            )))
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(buf)
}

fn run(args: &[String]) -> Result<(), String> {
    let usage = "usage: chart RESULTS.tsv [--markdown OUT.md] [--svg OUT.svg] [--title TEXT]";
    let (input, rest) = args.split_first().ok_or(usage)?;
    let (mut md, mut out_svg, mut title) = (None, None, "tapnet: benches/compare.sh".to_string());
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let val = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value; {usage}"))?;
        match flag.as_str() {
            "--markdown" => md = Some(val.clone()),
            "--svg" => out_svg = Some(val.clone()),
            "--title" => title = val.clone(),
            f => return Err(format!("unknown option {f}; {usage}")),
        }
    }
    let text = std::fs::read_to_string(input).map_err(|e| format!("{input}: {e}"))?;
    let rows = parse(&text).map_err(|e| format!("{input}: {e}"))?;
    let table = markdown(&rows);
    let picture = match &out_svg {
        Some(_) => Some(svg(&rows, &title)?),
        None => None,
    };
    match md {
        Some(p) => std::fs::write(&p, &table).map_err(|e| format!("{p}: {e}"))?,
        None => print!("{table}"),
    }
    if let (Some(p), Some(s)) = (out_svg, picture) {
        std::fs::write(&p, s).map_err(|e| format!("{p}: {e}"))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chart: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# a comment\n\
bridge\tTCP 1 stream\tGbit/s\thigher\tkernel\t-\t-\t10\t0.5\n\
bridge\tTCP 1 stream\tGbit/s\thigher\ttapnet\tkernel\trwfwd\t6\t0.9\n\
bridge\tTCP 1 stream\tGbit/s\thigher\trwfwd\tkernel\t-\t4\t-\n\
bridge\tTCP 1 stream\tGbit/s\thigher\tkernel\t-\t-\t30\t0.7\n\
bridge\tTCP 1 stream\tGbit/s\thigher\ttapnet\tkernel\trwfwd\t8\t1.1\n\
bridge\tTCP 1 stream\tGbit/s\thigher\tkernel\t-\t-\t20\t0.6\n\
bridge\tTCP 1 stream\tGbit/s\thigher\ttapnet\tkernel\trwfwd\t10\t1.0\n\
bridge\tTCP 1 stream\tGbit/s\thigher\tvde\tkernel\t-\tskip\tnot installed\n\
bridge\tRR 64 B p50\tus\tlower\tkernel\t-\t-\t10\t-\n\
bridge\tRR 64 B p50\tus\tlower\ttapnet\tkernel\t-\t15\t-\n";

    #[test]
    fn medians_and_ratios_over_runs() {
        let rows = parse(SAMPLE).unwrap();
        assert_eq!(rows.len(), 6);
        let tapnet = &rows[1];
        assert_eq!(tapnet.setup, "tapnet");
        assert_eq!(tapnet.values, vec![6.0, 8.0, 10.0]);
        assert_eq!(median(&tapnet.values), Some(8.0));
        assert_eq!(median(&tapnet.cpu), Some(1.0));
        // kernel median 20, rwfwd 4.
        assert_eq!(ratio(&rows, tapnet, tapnet.ref1.as_ref()), Some(0.4));
        assert_eq!(ratio(&rows, tapnet, tapnet.ref2.as_ref()), Some(2.0));
        assert_eq!(median(&[1.0, 3.0, 2.0, 10.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn skipped_setup_is_a_row_with_its_reason() {
        let rows = parse(SAMPLE).unwrap();
        let vde = rows.iter().find(|r| r.setup == "vde").unwrap();
        assert!(vde.values.is_empty());
        assert_eq!(vde.skip.as_deref(), Some("not installed"));
        let md = markdown(&rows);
        assert!(md.contains("| bridge | TCP 1 stream | vde | — | not installed |"));
        assert!(md.contains(
            "| bridge | TCP 1 stream | tapnet | 8.00 Gbit/s | 6.00 8.00 10.00 | 0.40 (kernel) | 2.00 (rwfwd) | 1.000 s/Gbit |"
        ));
        assert!(md.contains("| bridge | RR 64 B p50 | tapnet | 15.0 us |"));
    }

    #[test]
    fn malformed_lines_are_refused_with_their_number() {
        let e = parse("bridge\tTCP\tGbit/s\thigher\tkernel\t-\t-\t10\n").unwrap_err();
        assert!(e.starts_with("line 1: expected 9"), "{e}");
        let e = parse("# x\nb\tm\tGbit/s\thigher\ts\t-\t-\tfast\t-\n").unwrap_err();
        assert!(e.starts_with("line 2: value \"fast\""), "{e}");
        let e = parse("b\tm\tfurlongs\thigher\ts\t-\t-\t1\t-\n").unwrap_err();
        assert!(e.contains("unknown unit"), "{e}");
        let e = parse("b\tm\tMpps\tsideways\ts\t-\t-\t1\t-\n").unwrap_err();
        assert!(e.contains("higher or lower"), "{e}");
        let e = parse("b\tm\tMpps\thigher\ts\t-\t-\t-1\t-\n").unwrap_err();
        assert!(e.contains("not a figure"), "{e}");
    }

    #[test]
    fn svg_has_one_bar_per_compared_row() {
        let rows = parse(SAMPLE).unwrap();
        // tapnet and rwfwd TCP, tapnet RR; the references and the skipped row draw none.
        let b = bars(&rows);
        assert_eq!(b.len(), 3);
        assert!(b[0].0.contains("tapnet"));
        let s = svg(&rows, "test").unwrap();
        assert!(s.starts_with("<svg"));
        assert!(s.contains("bridge RR 64 B p50 — tapnet (÷ kernel, lower is better)"));
        assert!(s.contains("\n0.40\n"));
        assert!(svg(&parse("").unwrap(), "x").is_err());
    }

    #[test]
    fn rows_are_grouped_by_metric_in_order_of_first_appearance() {
        // The script loops setup by setup; the table lists metric by metric.
        let text = "g\tA\tGbit/s\thigher\tk\t-\t-\t1\t-\n\
g\tB\tGbit/s\thigher\tk\t-\t-\t1\t-\n\
g\tA\tGbit/s\thigher\tt\tk\t-\t1\t-\n\
g\tB\tGbit/s\thigher\tt\tk\t-\t1\t-\n\
h\tA\tGbit/s\thigher\tk\t-\t-\t1\t-\n";
        let rows = parse(text).unwrap();
        let order: Vec<(&str, &str, &str)> = rows
            .iter()
            .map(|r| (r.group.as_str(), r.metric.as_str(), r.setup.as_str()))
            .collect();
        assert_eq!(
            order,
            vec![
                ("g", "A", "k"),
                ("g", "A", "t"),
                ("g", "B", "k"),
                ("g", "B", "t"),
                ("h", "A", "k")
            ]
        );
    }

    /// The bench scripts parse (`bash -n`).
    #[test]
    fn compare_scripts_parse() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for f in [
            "compare.sh",
            "lib/measure.sh",
            "lib/overlay_pair.sh",
            "lib/inner.sh",
        ] {
            let st = std::process::Command::new("bash")
                .arg("-n")
                .arg(root.join(f))
                .status()
                .unwrap();
            assert!(st.success(), "bash -n {f}");
        }
    }

    /// What benches/lib/measure.sh records from iperf3's and sockperf's output is what
    /// this parser reads: run its m_tcp/m_udp/m_rr against stand-ins that print known
    /// output, then check the figures.
    #[test]
    fn measure_sh_records_what_the_chart_reads() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = std::env::temp_dir().join(format!("tapnet-chart-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let iperf3 = r#"#!/bin/sh
case "$*" in
*9999*) echo '{"error": "unable to connect"}'; exit 1 ;;
*" -u "*) echo '{"end":{"sum":{"packets":1000000,"lost_packets":200000,"seconds":2.0}}}' ;;
*) echo '{"end":{"sum_received":{"bytes":1000000000,"bits_per_second":8.0e9}}}' ;;
esac
"#;
        let sockperf = "#!/bin/sh\n\
echo 'sockperf: ---> percentile 99.000 =    8.807'\n\
echo 'sockperf: ---> percentile 90.000 =    5.673'\n\
echo 'sockperf: ---> percentile 50.000 =    3.479'\n";
        for (name, body) in [("iperf3", iperf3), ("sockperf", sockperf)] {
            let p = dir.join(name);
            std::fs::write(&p, body).unwrap();
            let st = std::process::Command::new("chmod")
                .arg("+x")
                .arg(&p)
                .status()
                .unwrap();
            assert!(st.success());
        }
        let res = dir.join("res.tsv");
        let path = format!(
            "{}:{}",
            dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let script = r#". benches/lib/measure.sh
m_tcp bridge "TCP 1 stream" tapnet kernel rwfwd 1 "" 10.0.0.2 5201
m_udp bridge "UDP 64 B delivered" tapnet kernel - "" 10.0.0.2 5201
m_rr bridge tapnet kernel - "" 10.0.0.2 11111
m_tcp egress "TCP out" pasta direct - 1 "" 10.0.0.2 9999
"#;
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(script)
            .current_dir(root.parent().unwrap())
            .env("PATH", path)
            .env("PY", "python3")
            .env("SECS", "1")
            .env("RES", &res)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&res).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let rows = parse(&text).unwrap();
        let get = |m: &str| rows.iter().find(|r| r.metric == m).unwrap();
        let tcp = get("TCP 1 stream");
        assert_eq!(
            (tcp.setup.as_str(), tcp.values.as_slice()),
            ("tapnet", &[8.0][..])
        );
        assert_eq!(tcp.ref2.as_deref(), Some("rwfwd"));
        assert_eq!(tcp.cpu.len(), 1, "CPU per Gbit recorded: {text}");
        // (1,000,000 sent - 200,000 lost) / 2 s = 0.4 Mpps.
        assert_eq!(get("UDP 64 B delivered").values, vec![0.4]);
        assert_eq!(get("RR 64 B p50").values, vec![3.479]);
        assert_eq!(get("RR 64 B p99").values, vec![8.807]);
        assert_eq!(get("RR 64 B p99").better, Better::Lower);
        let failed = get("TCP out");
        assert!(failed.values.is_empty());
        assert_eq!(failed.skip.as_deref(), Some("iperf3 failed"));
    }
}
