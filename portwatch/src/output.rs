//! Rendering `watch` records: an aligned table or JSON lines.
use crate::{
    model::Record,
    sys::clock::{hms_ms, rfc3339_ms, WallClock},
};

pub const HEADER: &str = "TIME          EVENT   PID      COMM             PROTO  ADDRESS                                          RESULT";

fn endpoint(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// One line of the human table.
pub fn human_line(r: &Record, clock: &WallClock) -> String {
    let proto = format!("{}{}", r.proto, if r.family == "ipv6" { "6" } else { "4" });
    let result = match (&r.error, r.event) {
        (Some(e), _) => {
            let mut s = e.clone();
            if let Some(h) = &r.held_by {
                s.push_str(&format!(" (held by {} socket {} inode {}", h.state, endpoint(&h.addr, r.port), h.inode));
                if !h.pids.is_empty() {
                    let pids: Vec<String> = h.pids.iter().map(ToString::to_string).collect();
                    s.push_str(&format!(" pid {}", pids.join(",")));
                }
                s.push(')');
            }
            s
        }
        (None, "bind") if r.requested_port == Some(0) => "ok (port chosen by kernel)".to_string(),
        (None, "accept") => format!("queued from {}", endpoint(r.peer_addr.as_deref().unwrap_or("?"), r.peer_port.unwrap_or(0))),
        (None, _) => "ok".to_string(),
    };
    format!(
        "{:<13} {:<7} {:<8} {:<16} {:<6} {:<48} {}",
        hms_ms(clock.wall(r.ts_ns)),
        r.event,
        r.pid.map_or("-".to_string(), |p| p.to_string()),
        r.comm.as_deref().unwrap_or("-"),
        proto,
        endpoint(&r.addr, r.port),
        result
    )
}

/// One JSON object (one line), written straight to `out`.
pub fn write_json<W: std::io::Write>(out: &mut W, r: &mut Record, clock: &WallClock) -> std::io::Result<()> {
    r.time = Some(rfc3339_ms(clock.wall(r.ts_ns)));
    serde_json::to_writer(&mut *out, &*r).map_err(std::io::Error::other)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        ebpf::events::{from_raw, tests::raw},
        model::Record,
    };
    use portwatch_common::EventKind;

    #[test]
    fn renders_table_and_json() {
        let clock = WallClock::with_offset_ns(1_700_000_000_000_000_000);
        let mut r = Record::from_event(&from_raw(&raw(EventKind::Bind, 42, 5050)).unwrap());
        r.requested_port = Some(5050);
        let line = human_line(&r, &clock);
        assert!(line.starts_with("22:13:20.000"), "{line}");
        assert!(line.contains("bind") && line.contains("42") && line.contains("python3"));
        assert!(line.contains("tcp4") && line.contains("127.0.0.1:5050") && line.ends_with("ok"));
        let header_cols: Vec<&str> = HEADER.split_whitespace().collect();
        assert_eq!(header_cols, ["TIME", "EVENT", "PID", "COMM", "PROTO", "ADDRESS", "RESULT"]);

        r.error = Some("EADDRINUSE".into());
        let mut buf = Vec::new();
        write_json(&mut buf, &mut r, &clock).unwrap();
        assert_eq!(buf.last(), Some(&b'\n'));
        let j: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        for key in ["time", "event", "pid", "tid", "uid", "comm", "proto", "family", "addr", "port", "error"] {
            assert!(j.get(key).is_some(), "missing {key}");
        }
        assert_eq!(j["error"], "EADDRINUSE");
        assert_eq!(j["family"], "ipv4");
        assert_eq!(j["time"], "2023-11-14T22:13:20.000Z");
    }
}
