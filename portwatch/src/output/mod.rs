//! Everything portwatch prints for people, and JSON for machines. Names, command
//! lines and any other text a process can choose pass through [`esc`] before they
//! reach a terminal: a process must not be able to forge lines or send escape
//! sequences to root's terminal. JSON is encoded by serde, which escapes them.
use std::{borrow::Cow, fmt::Write as _};

use serde::Serialize;

use crate::error::{Error, Result};

pub mod blame;
pub mod cleanup;
pub mod doctor;
pub mod free;
pub mod history;
pub mod lease;
pub mod log;
pub mod progress;
pub mod run;
pub mod timeline;
pub mod watch;
pub mod who;

/// Whether `c` must not reach a terminal as is: C0 controls (newline and tab
/// included), DEL, C1 controls, and the Unicode bidirectional overrides that reorder
/// what is shown.
fn unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Text safe for a terminal: control characters become visible escapes (`\n`,
/// `\t`, `\x1b`, `\u{202e}`); everything else is unchanged.
pub fn esc(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push('\\'),
            c if (c as u32) < 0x80 && unsafe_char(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Pretty JSON of a model value.
pub fn to_json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string_pretty(v).map_err(|e| Error::Internal(format!("encoding JSON: {e}")))
}

/// Cuts `s` to `n` characters, marking the cut.
pub fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// `5s`, `10m`, `2h`, `3d`.
pub fn age(secs: Option<u64>) -> String {
    match secs {
        None => "-".into(),
        Some(s) if s < 120 => format!("{s}s"),
        Some(s) if s < 7200 => format!("{}m", s / 60),
        Some(s) if s < 172_800 => format!("{}h", s / 3600),
        Some(s) => format!("{}d", s / 86400),
    }
}

/// `12 ms` below a second, `1.25 s` above.
pub fn fmt_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.2} s", ms as f64 / 1000.0)
    }
}

/// A duration as people read it, to the millisecond.
pub fn fmt_duration(d: std::time::Duration) -> String {
    crate::model::time::human(d)
}

/// The house table: no borders, columns aligned, every cell escaped, each line
/// indented by two spaces.
pub struct Table(comfy_table::Table);

impl Table {
    pub fn new<const N: usize>(header: [&str; N]) -> Self {
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::NOTHING).set_content_arrangement(comfy_table::ContentArrangement::Disabled);
        t.set_header(header);
        Self(t)
    }

    pub fn row<I: IntoIterator<Item = S>, S: AsRef<str>>(&mut self, cells: I) {
        self.0.add_row(cells.into_iter().map(|c| esc(c.as_ref()).into_owned()));
    }

    /// The table, indented, trailing spaces trimmed.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in self.0.to_string().lines() {
            out.push_str("  ");
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_could_forge_lines_or_drive_a_terminal() {
        assert_eq!(esc("gunicorn"), "gunicorn");
        assert_eq!(esc("python3 -m http.server"), "python3 -m http.server");
        assert_eq!(esc("\x1b]0;pwned\x07\x1b[2J"), "\\x1b]0;pwned\\x07\\x1b[2J");
        assert_eq!(esc("a\nport 5050: free\n"), "a\\nport 5050: free\\n");
        assert_eq!(esc("x\u{7f}y\u{85}z\u{9b}"), "x\\x7fy\\u{0085}z\\u{009b}");
        assert_eq!(esc("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(esc("naïve 名前"), "naïve 名前");
        let mut t = Table::new(["A", "B"]);
        t.row(["1", "two\nlines"]);
        let text = t.render();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("two\\nlines"));
    }

    #[test]
    fn formats_ages_and_cuts() {
        assert_eq!(age(Some(5)), "5s");
        assert_eq!(age(Some(600)), "10m");
        assert_eq!(age(Some(7200)), "2h");
        assert_eq!(age(None), "-");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(fmt_duration(std::time::Duration::from_nanos(3_999_999_740)), "3s 999ms");
    }
}
