//! `check`'s answer when a port is held: a line per holder saying who is in the
//! way and who left it (see `model::blame`).
use crate::{
    model::blame::Blame,
    output::{esc, who::render_check},
    service::holders::PortStatus,
};

/// Free ports and holders nobody can be blamed for as `check` says them; each
/// blamed holder on a line of its own.
pub fn render(st: &[PortStatus], blames: &[Blame]) -> String {
    let mut out = String::new();
    for s in st {
        let mine: Vec<&Blame> = blames.iter().filter(|b| b.port == s.port).collect();
        if s.free || mine.is_empty() {
            out.push_str(&render_check(std::slice::from_ref(s)));
            continue;
        }
        for b in mine {
            out.push_str(&b.line(&esc(&b.comm), b.job.as_deref().map(esc).as_deref()));
            out.push('\n');
        }
        for n in &s.notes {
            out.push_str(&format!("  note: {}\n", esc(n)));
        }
    }
    out
}
