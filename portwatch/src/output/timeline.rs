//! The timeline as a picture: SVG (one lane per port, a bar per holder coloured by
//! its CI job or process, marks for failed binds, verdicts, signals and reaps;
//! hovering shows the details through SVG `<title>`s) and a self-contained HTML
//! page around it (no script, no network), with a legend and the marks as a table.
use std::fmt::Write as _;

use crate::{
    model::{
        history::RowKind,
        time::{fmt_time, WallNs},
        timeline::{Bar, Mark, Timeline},
    },
    output::esc,
};

const WIDTH: f64 = 1200.0;
const LABEL: f64 = 110.0;
const LANE: f64 = 34.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 24.0;

/// Text for SVG/HTML: controls made visible (as on a terminal), then markup
/// characters escaped.
pub fn xml(s: &str) -> String {
    let s = esc(s);
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A colour per owner, stable across renders (FNV-1a of the name → hue).
pub fn colour(owner: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in owner.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("hsl({}, 62%, 52%)", h % 360)
}

fn x_of(t: &Timeline, at: WallNs) -> f64 {
    let span = (t.to - t.from).max(1) as f64;
    LABEL + (WIDTH - LABEL - 10.0) * ((at - t.from) as f64 / span)
}

fn bar_title(b: &Bar) -> String {
    let mut s = format!("{} on {}", b.owner(), b.addr.map(|a| a.to_string()).unwrap_or_default());
    let _ = write!(s, "\nfrom {}{}", fmt_time(b.from), if b.observed { " (found there; not seen binding)" } else { "" });
    let _ = write!(s, "\n{}", if b.open { "still held".to_owned() } else { format!("to {}", fmt_time(b.to)) });
    if let (Some(p), Some(c)) = (b.pid, &b.comm) {
        let _ = write!(s, "\npid {p} ({c}){}", if b.listening { ", listening" } else { ", bound" });
    }
    if let Some(c) = &b.cmdline {
        let _ = write!(s, "\n{}", c.chars().take(300).collect::<String>());
    }
    s
}

fn mark_title(m: &Mark) -> String {
    let mut s = format!("{} at {}", m.kind.name(), fmt_time(m.at));
    if let (Some(p), Some(c)) = (m.pid, &m.comm) {
        let _ = write!(s, "\npid {p} ({c})");
    }
    if let Some(e) = &m.error {
        let _ = write!(s, "\n{e}");
    }
    if let Some(d) = &m.detail {
        let _ = write!(s, "\n{d}");
    }
    s
}

fn mark_colour(k: RowKind) -> &'static str {
    match k {
        RowKind::BindFailed => "#d62728",
        RowKind::Stuck => "#9467bd",
        RowKind::Signal => "#ff7f0e",
        RowKind::Reaped => "#111111",
        RowKind::LeaseRefused => "#17becf",
        _ => "#7f7f7f",
    }
}

/// The timeline as a standalone SVG document.
pub fn svg(t: &Timeline) -> String {
    let height = TOP + LANE * t.lanes.len().max(1) as f64 + BOTTOM;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    // Time axis: six ticks.
    for i in 0..=5 {
        let at = t.from + (t.to - t.from) * i / 5;
        let x = x_of(t, at);
        let label = fmt_time(at);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{y1:.1}" stroke="#dddddd"/><text x="{x:.1}" y="{ty}" text-anchor="{anchor}" fill="#555555">{}</text>"##,
            xml(label.get(11..23).unwrap_or(&label)),
            anchor = if i == 5 { "end" } else { "middle" },
            y0 = TOP - 6.0,
            y1 = height - BOTTOM,
            ty = TOP - 12.0,
        );
    }
    for (i, lane) in t.lanes.iter().enumerate() {
        let y = TOP + LANE * i as f64;
        let proto = lane.proto.map_or("?", |p| p.name());
        let _ = writeln!(
            s,
            r##"<text x="8" y="{:.1}" font-weight="bold">{}/{}</text><line x1="{LABEL}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="#eeeeee"/>"##,
            y + LANE / 2.0 + 4.0,
            lane.port,
            proto,
            y + LANE,
            WIDTH - 10.0,
            y + LANE
        );
        for b in &lane.bars {
            let (x0, x1) = (x_of(t, b.from), x_of(t, b.to));
            let _ = writeln!(
                s,
                r##"<rect class="bar" x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" rx="3" fill="{}" fill-opacity="{}" stroke="{}"{}><title>{}</title></rect>"##,
                y + 6.0,
                (x1 - x0).max(2.0),
                LANE - 12.0,
                colour(&b.owner()),
                if b.listening { "0.9" } else { "0.45" },
                colour(&b.owner()),
                if b.observed { r#" stroke-dasharray="4 2""# } else { "" },
                xml(&bar_title(b))
            );
        }
        for m in &lane.marks {
            let x = x_of(t, m.at);
            let (top, bottom) = (y + 2.0, y + LANE - 2.0);
            let _ = writeln!(
                s,
                r##"<path class="mark {}" d="M{x:.1} {top:.1} l-5 -0 l5 8 l5 -8 z M{x:.1} {top:.1} L{x:.1} {bottom:.1}" fill="{c}" stroke="{c}" stroke-width="2"><title>{}</title></path>"##,
                m.kind.name(),
                xml(&mark_title(m)),
                c = mark_colour(m.kind)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// The timeline in a self-contained HTML page: heading, the SVG, a legend of
/// owners and mark kinds, and the marks as a table.
pub fn html(t: &Timeline, title: &str) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\n<style>\
         body{{font-family:sans-serif;margin:16px;color:#222}} table{{border-collapse:collapse;font-size:12px}}\
         td,th{{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}} .sw{{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}}\
         .bar:hover{{stroke-width:3}}</style></head><body>\n<h1>{t}</h1>\n",
        t = xml(title)
    );
    let _ = writeln!(
        s,
        "<p>{} to {} (UTC). One lane per port; a bar per socket from its bind to its close (dashed: found there, not seen binding; pale: bound, not listening); hover for details.{}</p>",
        xml(&fmt_time(t.from)),
        xml(&fmt_time(t.to)),
        if t.left_out > 0 { format!(" {} more bars and marks were not drawn; narrow the range with --since/--until or a port.", t.left_out) } else { String::new() }
    );
    s.push_str(&svg(t));
    // Legend: owners, then mark kinds.
    let mut owners: Vec<String> = t.lanes.iter().flat_map(|l| l.bars.iter().map(Bar::owner)).collect();
    owners.sort();
    owners.dedup();
    s.push_str("<p>");
    for o in owners.iter().take(60) {
        let _ = write!(s, "<span class=\"sw\" style=\"background:{}\"></span>{}", colour(o), xml(o));
    }
    for k in [RowKind::BindFailed, RowKind::LeaseRefused, RowKind::Stuck, RowKind::Signal, RowKind::Reaped] {
        let _ = write!(s, "<span class=\"sw\" style=\"background:{}\"></span>{}", mark_colour(k), k.name());
    }
    s.push_str("</p>\n");
    let marks: Vec<(u16, &Mark)> = t.lanes.iter().flat_map(|l| l.marks.iter().map(move |m| (l.port, m))).collect();
    if !marks.is_empty() {
        s.push_str("<table><tr><th>time</th><th>port</th><th>event</th><th>process</th><th>detail</th></tr>\n");
        for (port, m) in marks.iter().take(1000) {
            let who = match (m.pid, &m.comm) {
                (Some(p), Some(c)) => format!("pid {p} ({c})"),
                (Some(p), None) => format!("pid {p}"),
                _ => String::new(),
            };
            let detail = [m.error.as_deref(), m.detail.as_deref()].into_iter().flatten().collect::<Vec<_>>().join("; ");
            let _ = writeln!(
                s,
                "<tr><td>{}</td><td>{port}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                xml(&fmt_time(m.at)),
                m.kind.name(),
                xml(&who),
                xml(&detail)
            );
        }
        s.push_str("</table>\n");
    }
    s.push_str("</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        history::{test_row as row, RowKind::*},
        timeline::build,
    };

    #[test]
    fn names_cannot_break_out_of_the_markup() {
        let mut a = row(100, Listen, 5050, 10, 1);
        a.comm = Some("</title><script>alert(1)</script>\x1b[2J".into());
        let mut f = row(150, BindFailed, 5050, 20, 2);
        f.detail = Some("held by pid 10 (\"x\" & <y>)".into());
        let t = build(&[a, f], None, 400);
        let page = html(&t, "port 5050 <b>");
        assert!(!page.contains("<script>") && !page.contains('\x1b'), "{page}");
        assert!(page.contains("&lt;/title&gt;&lt;script&gt;") && page.contains("\\x1b[2J"));
        assert!(page.contains("&quot;x&quot; &amp; &lt;y&gt;"));
        assert_eq!(page.matches("class=\"bar\"").count(), 1);
        assert_eq!(page.matches("class=\"mark bind_failed\"").count(), 1);
        assert!(!page.contains("http://") || page.matches("http://").count() == 1, "only the SVG namespace: {page}");
        assert!(svg(&t).starts_with("<svg xmlns"));
    }

    #[test]
    fn one_owner_one_colour() {
        assert_eq!(colour("job GITHUB_JOB=a"), colour("job GITHUB_JOB=a"));
        assert_ne!(colour("job GITHUB_JOB=a"), colour("job GITHUB_JOB=b"));
    }
}
