//! `doctor`'s report as text.
use crate::service::doctor::Report;

pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let mark = |ok: bool| if ok { "ok " } else { "NO " };
    s.push_str("HOST\n");
    for c in &r.checks {
        s.push_str(&format!("  {} {:<12} {}\n", mark(c.ok), c.name, c.detail));
    }
    if !r.hooks.is_empty() {
        s.push_str("HOOKS (loaded and attached for real, then detached)\n");
        for h in &r.hooks {
            let detail = h.error.as_deref().map_or_else(|| h.used_for.to_string(), |e| format!("{} [{e}]", h.used_for));
            s.push_str(&format!("  {} {:<40} {}\n", mark(h.supported), h.hook, detail));
        }
    }
    s.push_str("BTF OFFSETS (resolved at load time)\n");
    for (f, v) in &r.btf_offsets {
        s.push_str(&format!("  {:<32} {}\n", f, v.map_or("missing".to_string(), |v| v.to_string())));
    }
    if !r.kernel_errors.is_empty() {
        let errs: Vec<String> = r.kernel_errors.iter().map(|(n, c)| format!("{n} {c}")).collect();
        s.push_str(&format!("KERNEL READ ERRORS (self-test)\n  {}\n", errs.join(", ")));
    }
    s.push_str(&format!(
        "VERDICT\n  observer (watch, agent): {}\n  who/check: {}\n",
        if r.observer_ready { "ready" } else { "unavailable" },
        match (r.holders_ready, r.iterator_ready) {
            (true, true) => "BPF holders pass (iter/task), iter/task_file when it cannot answer",
            (false, true) => "BPF iterator (iter/task_file)",
            (true, false) => "BPF holders pass (iter/task), /proc walk when it cannot answer",
            (false, false) => "/proc walk (slower; may miss other users' processes when not root)",
        }
    ));
    s.push_str(&format!("  run --isolate-ports: {}\n", if r.remap_ready { "ready" } else { "unavailable" }));
    s
}
