//! What the commands and the agent do, one layer above the kernel and the OS:
//! finding holders, reaping by plan, readiness, health probes, the event pipeline,
//! sampling for verdicts, supervising a service, probing the host. Services call
//! `model`, `sys` and `ebpf`; they never call commands, and never print.
pub mod blame;
pub mod doctor;
pub mod events;
pub mod hints;
pub mod holders;
pub mod judge;
pub mod lease;
pub mod probe;
pub mod readiness;
pub mod reaper;
pub mod remap;
pub mod supervisor;

/// Polls all futures together (probes have their own timeouts; running them one
/// after another would add those up).
pub async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    use std::{pin::Pin, task::Poll};
    let mut futs: Vec<Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut outs: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(outs.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *o = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outs.into_iter().flatten().collect()
}
