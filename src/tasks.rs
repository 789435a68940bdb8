//! One lifecycle for background tasks (mini-redis' `Shutdown`, tokio-util's `TaskTracker`):
//! every task the daemon spawns belongs to a [`TaskGroup`], gets its stop token, and is awaited
//! when the group stops, in the shutdown order the daemon sets. Nothing that writes to the
//! store is ever aborted: a task stops at its next `stop.cancelled()`, between two writes.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Tasks that stop together.
#[derive(Default)]
pub(crate) struct TaskGroup {
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl TaskGroup {
    pub(crate) fn new() -> TaskGroup {
        TaskGroup::default()
    }

    /// Spawns `task`, handing it the group's stop token.
    pub(crate) fn spawn<F>(&self, task: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task(self.stop.clone()));
    }

    /// Asks every task to stop without waiting (see [`TaskGroup::drain`] for that).
    pub(crate) fn cancel(&self) {
        self.stop.cancel();
    }

    /// Asks every task to stop and waits for all of them, at most `within`. False when some
    /// did not finish in time (they go on, and end with the runtime).
    pub(crate) async fn stop(&self, within: Duration) -> bool {
        self.stop.cancel();
        self.drain(within).await
    }

    /// Waits for tasks that end by themselves (a channel closing), without asking them to stop.
    pub(crate) async fn drain(&self, within: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(within, self.tracker.wait()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn stop_waits_for_every_task_to_finish_its_step() {
        let group = TaskGroup::new();
        let finished = Arc::new(AtomicBool::new(false));
        let seen = finished.clone();
        group.spawn(|stop| async move {
            stop.cancelled().await;
            // A step that must complete after the stop is asked for (a write in flight).
            tokio::time::sleep(Duration::from_millis(50)).await;
            seen.store(true, Ordering::SeqCst);
        });
        assert!(group.stop(Duration::from_secs(5)).await);
        assert!(finished.load(Ordering::SeqCst), "stop returned before the task ended");
    }

    #[tokio::test]
    async fn a_task_that_ignores_the_stop_is_reported_not_waited_for_forever() {
        let group = TaskGroup::new();
        group.spawn(|_stop| std::future::pending());
        assert!(!group.stop(Duration::from_millis(50)).await);
    }

    #[tokio::test]
    async fn drain_does_not_cancel() {
        let group = TaskGroup::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let cancelled = Arc::new(AtomicBool::new(false));
        let seen = cancelled.clone();
        group.spawn(|stop| async move {
            while rx.recv().await.is_some() {}
            seen.store(stop.is_cancelled(), Ordering::SeqCst);
        });
        drop(tx);
        assert!(group.drain(Duration::from_secs(5)).await);
        assert!(!cancelled.load(Ordering::SeqCst));
    }
}
