//! The agent's log lines: JSON objects with typed fields (`--log-json`), and the
//! systemd journal's conventions when stderr is the journal (`$JOURNAL_STREAM`):
//! a `<N>` syslog priority prefix on every line, which journald strips and keeps
//! as the entry's priority, and no timestamp or colour in text lines (journald
//! stamps each entry itself).
//!
//! tracing hands a formatter numbers, booleans and strings as such, and anything
//! logged with `?` as its `Debug` text: that text is kept as a JSON array or
//! object when it is one (a `Vec<i32>` or [`list`] of numbers or strings), a
//! `Some(x)` is logged as `x`, and anything else stays a string.
use std::fmt;

use serde_json::{Map, Value};
use tracing::{
    field::{Field, Visit},
    Event, Level, Subscriber,
};
use tracing_subscriber::{
    fmt::{format::Writer, FmtContext, FormatEvent, FormatFields},
    registry::LookupSpan,
};

/// A list logged as a JSON array: `ports = ?list(&ports)`; in text lines it reads
/// `[5050,5051]`.
pub fn list<T: serde::Serialize>(items: &[T]) -> impl fmt::Debug + '_ {
    struct L<'a, T>(&'a [T]);
    impl<T: serde::Serialize> fmt::Debug for L<'_, T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&serde_json::to_string(self.0).map_err(|_| fmt::Error)?)
        }
    }
    L(items)
}

/// The typed value of a field logged through `Debug`.
pub fn debug_value(text: &str) -> Value {
    let t = text.trim();
    if let Some(inner) = t.strip_prefix("Some(").and_then(|r| r.strip_suffix(')')) {
        return debug_value(inner);
    }
    if t == "None" {
        return Value::Null;
    }
    if t.starts_with('[') || t.starts_with('{') || t.starts_with('"') {
        if let Ok(v) = serde_json::from_str::<Value>(t) {
            return v;
        }
    }
    if let Ok(n) = t.parse::<i64>() {
        return Value::from(n);
    }
    Value::String(text.to_string())
}

/// The fields of one event, typed.
#[derive(Default)]
pub struct JsonFields(pub Map<String, Value>);

impl Visit for JsonFields {
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_i128(&mut self, f: &Field, v: i128) {
        self.0.insert(f.name().into(), i64::try_from(v).map_or_else(|_| Value::String(v.to_string()), Value::from));
    }
    fn record_u128(&mut self, f: &Field, v: u128) {
        self.0.insert(f.name().into(), u64::try_from(v).map_or_else(|_| Value::String(v.to_string()), Value::from));
    }
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.0.insert(f.name().into(), serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number));
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_str(&mut self, f: &Field, v: &str) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_error(&mut self, f: &Field, v: &(dyn std::error::Error + 'static)) {
        self.0.insert(f.name().into(), v.to_string().into());
    }
    fn record_debug(&mut self, f: &Field, v: &dyn fmt::Debug) {
        let text = format!("{v:?}");
        // The message is text, whatever it looks like.
        let value = if f.name() == "message" { Value::String(text) } else { debug_value(&text) };
        self.0.insert(f.name().into(), value);
    }
}

/// The syslog priority journald reads from a `<N>` prefix.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Whether stderr is the journal: `$JOURNAL_STREAM` (`DEV:INODE`, set by systemd
/// for a service whose output goes to the journal) names stderr's file.
pub fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else { return false };
    let Ok(m) = std::fs::metadata("/proc/self/fd/2") else { return false };
    dev.parse::<u64>().is_ok_and(|d| d == m.dev()) && ino.parse::<u64>().is_ok_and(|i| i == m.ino())
}

/// One JSON object per line: `timestamp` (RFC 3339, UTC), `level`, `target`,
/// `message` and the event's fields, typed; `<N>` first for the journal.
pub struct JsonFormat {
    pub journal: bool,
}

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = JsonFields::default();
        event.record(&mut fields);
        let mut obj = Map::new();
        obj.insert("timestamp".into(), humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string().into());
        obj.insert("level".into(), meta.level().as_str().into());
        obj.insert("target".into(), meta.target().into());
        for (k, v) in fields.0 {
            obj.insert(k, v);
        }
        if self.journal {
            write!(w, "<{}>", priority(meta.level()))?;
        }
        writeln!(w, "{}", serde_json::to_string(&Value::Object(obj)).map_err(|_| fmt::Error)?)
    }
}

/// Text for the journal: `<N>message key=value ...`, no timestamp, no colour.
pub struct JournalText;

impl<S, N> FormatEvent<S, N> for JournalText
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        write!(w, "<{}>", priority(event.metadata().level()))?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_text_becomes_typed() {
        assert_eq!(debug_value("[48002, 48003]"), serde_json::json!([48002, 48003]));
        assert_eq!(debug_value("Some(24414)"), serde_json::json!(24414));
        assert_eq!(debug_value("Some(\"python3\")"), serde_json::json!("python3"));
        assert_eq!(debug_value("[\"SIGTERM:12\"]"), serde_json::json!(["SIGTERM:12"]));
        assert_eq!(debug_value("None"), Value::Null);
        assert_eq!(debug_value("[Term, Wait(5s)]"), serde_json::json!("[Term, Wait(5s)]"));
        assert_eq!(debug_value("Accept"), serde_json::json!("Accept"));
        assert_eq!(format!("{:?}", list(&[5050u16, 5051])), "[5050,5051]");
        assert_eq!(debug_value(&format!("{:?}", list(&["a\"b"]))), serde_json::json!(["a\"b"]));
    }

    #[test]
    fn priorities() {
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
    }
}
