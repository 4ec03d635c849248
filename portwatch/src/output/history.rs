//! The history's timeline as text.
use crate::{model::history::Row, output::esc};

/// One line per row; a row of a network namespace other than `home` says which.
pub fn render(rows: &[Row], home: Option<u64>) -> String {
    let mut out = String::new();
    for r in rows {
        let port = r.port.map_or(String::new(), |p| format!("{p}/{}", r.proto.map_or("?", |p| p.name())));
        let who = match (r.pid, &r.comm) {
            (Some(p), Some(c)) => format!("pid {p} ({})", esc(c)),
            (Some(p), None) => format!("pid {p}"),
            _ => String::new(),
        };
        let mut tail = Vec::new();
        if let Some(e) = &r.error {
            tail.push(esc(e).into_owned());
        }
        if let Some(d) = &r.detail {
            tail.push(esc(d).into_owned());
        }
        if let Some(j) = &r.job {
            tail.push(format!("job {}", esc(j)));
        }
        if let Some(n) = r.netns.filter(|&n| Some(n) != home) {
            tail.push(format!("netns {n}"));
        }
        out.push_str(&format!(
            "{}  {:<11} {:<10} {:<16} {:<24} {}\n",
            r.time,
            r.event.name(),
            port,
            r.addr.map(|a| a.to_string()).unwrap_or_default(),
            who,
            tail.join("; ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::history::{test_row, RowKind};

    #[test]
    fn one_line_per_row_whatever_the_names() {
        let mut r = test_row(0, RowKind::BindFailed, 5050, 7, 1);
        r.comm = Some("x\ny".into());
        r.detail = Some("held by pid 8 (\x1b[31mred)".into());
        let text = render(&[r], None);
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("bind_failed") && text.contains("5050/tcp") && text.contains("pid 7 (x\\ny)"));
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn names_a_foreign_network_namespace() {
        let mut r = test_row(0, RowKind::Listen, 5050, 7, 1);
        r.netns = Some(9);
        assert!(render(&[r.clone()], Some(9)).lines().all(|l| !l.contains("netns")));
        assert!(render(&[r], Some(4)).contains("netns 9"));
    }
}
