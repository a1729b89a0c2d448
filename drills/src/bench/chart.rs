//! A drill's timeline as a plain SVG file (no chart crate: a few rectangles, lines and labels).
//! Time runs left to right in seconds from the kill; every event is a labelled vertical line,
//! every row (a client's writes, a member's writability) a band of marks.

use std::fmt::Write as _;

/// One mark in a row: a single attempt (a thin tick) or a period (a bar).
#[derive(Debug, Clone, PartialEq)]
pub enum Mark {
    /// An attempt at `t_ms`: green when acknowledged, red when it failed.
    Attempt { t_ms: u64, ok: bool },
    /// A period with a colour class (`writable` blue, `failed` red, `ok` green).
    Bar { from_ms: u64, to_ms: u64, class: &'static str },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub label: String,
    pub marks: Vec<Mark>,
}

/// Everything one chart shows; all times are Unix epoch milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    pub title: String,
    /// The kill: time 0 of the axis.
    pub kill_ms: u64,
    pub start_ms: u64,
    pub end_ms: u64,
    /// Labelled instants (kill, lease expiry, fenced, promoted, first write...).
    pub events: Vec<(String, u64)>,
    pub rows: Vec<Row>,
    /// Lines of small print under the chart (settings, figures).
    pub notes: Vec<String>,
}

const LEFT: f64 = 190.0;
const PLOT_W: f64 = 880.0;
const TOP: f64 = 60.0;
const ROW_H: f64 = 34.0;
const EVENT_LABEL_H: f64 = 14.0;

fn colour(class: &str) -> &'static str {
    match class {
        "ok" => "#2e9e44",
        "failed" => "#d43c3c",
        "writable" => "#3b6fd6",
        _ => "#888888",
    }
}

/// XML text escaping for labels.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Renders `t` as a standalone SVG document.
pub fn render(t: &Timeline) -> String {
    let start = t.start_ms.min(t.kill_ms);
    let end = t.end_ms.max(start + 1000);
    let span = (end - start) as f64;
    let x = |ms: u64| LEFT + (ms.clamp(start, end) - start) as f64 / span * PLOT_W;
    let events_h = EVENT_LABEL_H * t.events.len().max(1) as f64;
    let rows_top = TOP + events_h + 10.0;
    let axis_y = rows_top + ROW_H * t.rows.len() as f64 + 6.0;
    let height = axis_y + 40.0 + 16.0 * t.notes.len() as f64 + 10.0;
    let width = LEFT + PLOT_W + 30.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let _ = writeln!(s, r##"<text x="10" y="24" font-size="16" font-weight="bold">{}</text>"##, escape(&t.title));
    let _ = writeln!(
        s,
        r##"<text x="10" y="44" fill="#555">green: acknowledged write, red: failed attempt, blue: member accepts writes; seconds from the kill</text>"##
    );
    // Rows: a light band each, its label on the left.
    for (i, row) in t.rows.iter().enumerate() {
        let y = rows_top + ROW_H * i as f64;
        let fill = if i % 2 == 0 { "#f4f4f4" } else { "#fbfbfb" };
        let _ = writeln!(s, r##"<rect x="{LEFT}" y="{y:.1}" width="{PLOT_W}" height="{ROW_H}" fill="{fill}"/>"##);
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT - 8.0,
            y + ROW_H / 2.0 + 4.0,
            escape(&row.label)
        );
        for m in &row.marks {
            match *m {
                Mark::Attempt { t_ms, ok } => {
                    let (c, y0, h) = if ok {
                        ("ok", y + 5.0, ROW_H / 2.0 - 6.0)
                    } else {
                        ("failed", y + ROW_H / 2.0 + 1.0, ROW_H / 2.0 - 6.0)
                    };
                    let _ = writeln!(
                        s,
                        r##"<rect x="{:.1}" y="{y0:.1}" width="1.6" height="{h:.1}" fill="{}"/>"##,
                        x(t_ms),
                        colour(c)
                    );
                }
                Mark::Bar { from_ms, to_ms, class } => {
                    let (x0, x1) = (x(from_ms), x(to_ms.max(from_ms)));
                    let _ = writeln!(
                        s,
                        r##"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}" opacity="0.8"/>"##,
                        y + 8.0,
                        (x1 - x0).max(1.0),
                        ROW_H - 16.0,
                        colour(class)
                    );
                }
            }
        }
    }
    // Events: one vertical line through every row, labels stacked above so none overlaps.
    let mut events = t.events.clone();
    events.sort_by_key(|(_, ms)| *ms);
    for (i, (label, ms)) in events.iter().enumerate() {
        let ex = x(*ms);
        let ly = TOP + EVENT_LABEL_H * (i as f64 + 1.0) - 3.0;
        let secs = (*ms as f64 - t.kill_ms as f64) / 1000.0;
        let anchor = if ex > LEFT + PLOT_W * 0.7 { "end" } else { "start" };
        let dx = if anchor == "end" { -3.0 } else { 3.0 };
        let _ = writeln!(
            s,
            r##"<line x1="{ex:.1}" y1="{:.1}" x2="{ex:.1}" y2="{axis_y:.1}" stroke="#333" stroke-dasharray="3,2" stroke-width="1"/>"##,
            ly - 9.0
        );
        let _ =
            writeln!(s, r##"<text x="{:.1}" y="{ly:.1}" text-anchor="{anchor}">{} {secs:+.2} s</text>"##, ex + dx, escape(label));
    }
    // Axis: a tick every second (every 5 s on long spans), labelled in seconds from the kill.
    let _ = writeln!(s, r##"<line x1="{LEFT}" y1="{axis_y:.1}" x2="{:.1}" y2="{axis_y:.1}" stroke="black"/>"##, LEFT + PLOT_W);
    let step_ms: i64 = if span > 40_000.0 {
        5000
    } else if span > 12_000.0 {
        2000
    } else {
        1000
    };
    let first = ((start as i64 - t.kill_ms as i64) as f64 / step_ms as f64).ceil() as i64 * step_ms;
    let mut tick = first;
    for _ in 0..200 {
        let ms = t.kill_ms as i64 + tick;
        if ms > end as i64 {
            break;
        }
        let tx = x(ms.max(0) as u64);
        let _ = writeln!(s, r##"<line x1="{tx:.1}" y1="{axis_y:.1}" x2="{tx:.1}" y2="{:.1}" stroke="black"/>"##, axis_y + 4.0);
        let _ = writeln!(s, r##"<text x="{tx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##, axis_y + 17.0, tick / 1000);
        tick += step_ms;
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds after the kill</text>"##,
        LEFT + PLOT_W / 2.0,
        axis_y + 32.0
    );
    for (i, note) in t.notes.iter().enumerate() {
        let _ = writeln!(s, r##"<text x="10" y="{:.1}" fill="#444">{}</text>"##, axis_y + 52.0 + 16.0 * i as f64, escape(note));
    }
    s.push_str("</svg>\n");
    s
}

/// Merges `(t_ms, flag)` samples into bars over the periods where the flag held; a period runs
/// from its first `true` sample to the next sample (or `end_ms`).
pub fn periods(samples: &[(u64, bool)], end_ms: u64, class: &'static str) -> Vec<Mark> {
    let mut out = Vec::new();
    let mut open: Option<u64> = None;
    for &(t, on) in samples {
        match (open, on) {
            (None, true) => open = Some(t),
            (Some(from), false) => {
                out.push(Mark::Bar { from_ms: from, to_ms: t, class });
                open = None;
            }
            _ => {}
        }
    }
    if let Some(from) = open {
        out.push(Mark::Bar { from_ms: from, to_ms: end_ms.max(from), class });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Timeline {
        Timeline {
            title: "whole node <etcd> & co".into(),
            kill_ms: 10_000,
            start_ms: 8_000,
            end_ms: 25_000,
            events: vec![("kill".into(), 10_000), ("promoted".into(), 21_500), ("fenced".into(), 20_000)],
            rows: vec![
                Row {
                    label: "direct".into(),
                    marks: vec![Mark::Attempt { t_ms: 9_000, ok: true }, Mark::Attempt { t_ms: 11_000, ok: false }],
                },
                Row { label: "pg-1 writable".into(), marks: periods(&[(8_000, true), (10_100, false)], 25_000, "writable") },
            ],
            notes: vec!["lease 10 s".into()],
        }
    }

    #[test]
    fn renders_a_well_formed_document_with_every_event_and_mark() {
        let svg = render(&sample());
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("whole node &lt;etcd&gt; &amp; co"), "title escaped");
        assert!(svg.contains(">kill +0.00 s<") && svg.contains(">fenced +10.00 s<") && svg.contains(">promoted +11.50 s<"));
        assert_eq!(svg.matches("stroke-dasharray").count(), 3, "one line per event");
        assert_eq!(svg.matches("#2e9e44").count(), 1, "one acknowledged write");
        assert_eq!(svg.matches("#d43c3c").count(), 1, "one failed attempt");
        assert_eq!(svg.matches("#3b6fd6").count(), 1, "one writable period");
        // Every element is closed: as many opening tags as self-closed or closed ones.
        let opened = svg.matches('<').count();
        let closed = svg.matches("/>").count() + svg.matches("</").count() * 2;
        assert_eq!(opened, closed, "{svg}");
    }

    #[test]
    fn periods_merge_samples_and_close_at_the_end() {
        let marks = periods(&[(0, false), (100, true), (200, true), (300, false), (400, true)], 900, "writable");
        assert_eq!(
            marks,
            vec![
                Mark::Bar { from_ms: 100, to_ms: 300, class: "writable" },
                Mark::Bar { from_ms: 400, to_ms: 900, class: "writable" }
            ]
        );
        assert!(periods(&[], 10, "writable").is_empty());
    }

    #[test]
    fn escape_handles_markup_and_control_characters() {
        assert_eq!(escape("a<b>&\"'\u{1}"), "a&lt;b&gt;&amp;&quot;&apos; ");
    }
}
