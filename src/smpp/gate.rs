//! The submit gate: whether this process may put a submit_sm on the wire now. A single node's is
//! always open. In a cluster it closes the instant this node's term as dispatch leader ends, and
//! it is checked right before each submit_sm is written: a leader that stalled (SIGSTOP, a long
//! pause) past its term and wakes up sends nothing more, whatever its other tasks still believe.

use std::fmt;
use std::sync::Arc;

#[derive(Clone, Default)]
pub struct SubmitGate(Option<Arc<dyn Fn() -> bool + Send + Sync>>);

impl SubmitGate {
    /// A gate open while `allows` says so.
    pub fn new(allows: impl Fn() -> bool + Send + Sync + 'static) -> SubmitGate {
        SubmitGate(Some(Arc::new(allows)))
    }

    pub fn allows(&self) -> bool {
        self.0.as_ref().is_none_or(|allows| allows())
    }
}

impl fmt::Debug for SubmitGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "SubmitGate(fenced)" } else { "SubmitGate(open)" })
    }
}
