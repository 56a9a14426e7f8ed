//! Transactions of controller operations.
//!
//! Contract: an operation is a sequence of steps. After each step that changed
//! something outside the operation (IPAM, the data plane, the OS, files), the
//! operation records that step's compensation with [`Txn::on_undo`]. The store commit
//! is the last step. [`Txn::finish`] ends the transaction: on success the
//! compensations are forgotten ([`Txn::commit`]); on failure they run in reverse
//! order ([`Txn::rollback`]) on a blocking thread, each one logged if it fails and
//! never stopping the others, so a rollback always runs to its end. A transaction
//! dropped without either (a panic in a step) runs its compensations on a thread of
//! its own. Controller operations run on a task of their own, so a client that goes
//! away never stops one half-way: it ends committed or completely rolled back.

use crate::error::{Error, Result};
use std::sync::{Mutex, MutexGuard};

/// Undo one completed step.
type Compensation = Box<dyn FnOnce() -> Result<()> + Send + 'static>;

/// A transaction (see the module doc).
pub struct Txn {
    op: String,
    /// A mutex only so that `&Txn` may be held across an await on any thread.
    undo: Mutex<Vec<(String, Compensation)>>,
}

impl std::fmt::Debug for Txn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Txn")
            .field("op", &self.op)
            .field("undo", &self.pending())
            .finish()
    }
}

impl Txn {
    /// A transaction for the operation `op` (used in messages: "connect sb to net").
    pub fn new(op: impl Into<String>) -> Txn {
        Txn {
            op: op.into(),
            undo: Mutex::new(Vec::new()),
        }
    }

    /// The operation.
    pub fn op(&self) -> &str {
        &self.op
    }

    /// Record how to undo the step that just completed (`what` names it in logs).
    pub fn on_undo(
        &mut self,
        what: impl Into<String>,
        f: impl FnOnce() -> Result<()> + Send + 'static,
    ) {
        self.steps().push((what.into(), Box::new(f)));
    }

    /// The compensations recorded so far, oldest first.
    pub fn pending(&self) -> Vec<String> {
        self.steps().iter().map(|(w, _)| w.clone()).collect()
    }

    fn steps(&self) -> MutexGuard<'_, Vec<(String, Compensation)>> {
        self.undo.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The operation succeeded: forget every compensation.
    pub fn commit(self) {
        self.steps().clear();
    }

    /// The operation failed: run every compensation, newest first.
    pub async fn rollback(self) {
        let steps = std::mem::take(&mut *self.steps());
        if steps.is_empty() {
            return;
        }
        let op = self.op.clone();
        let ran = tokio::task::spawn_blocking(move || unwind(&op, steps)).await;
        if let Err(e) = ran {
            tracing::error!(op = %self.op, error = %e, "rollback did not run to its end");
        }
    }

    /// Commit if `result` is `Ok`, else roll back; returns `result`.
    pub async fn finish<T>(self, result: Result<T>) -> Result<T> {
        match result {
            Ok(v) => {
                self.commit();
                Ok(v)
            }
            Err(e) => {
                tracing::debug!(op = %self.op, error = %e, steps = ?self.pending(), "rolling back");
                self.rollback().await;
                Err(e)
            }
        }
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        let steps = std::mem::take(&mut *self.steps());
        if steps.is_empty() {
            return;
        }
        let op = self.op.clone();
        tracing::error!(op = %op, "transaction dropped without commit or rollback; rolling back");
        let spawned = std::thread::Builder::new()
            .name("tapnet-rollback".into())
            .spawn(move || unwind(&op, steps));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the rollback thread");
        }
    }
}

/// Run `steps` newest first; log (and go past) the ones that fail.
fn unwind(op: &str, steps: Vec<(String, Compensation)>) {
    for (what, f) in steps.into_iter().rev() {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(Ok(())) => tracing::debug!(op, step = %what, "undone"),
            Ok(Err(e)) => tracing::warn!(op, step = %what, error = %e, "undo failed"),
            Err(_) => tracing::error!(op, step = %what, "undo panicked"),
        }
    }
}

/// Run blocking work off the async runtime (OS calls, driver calls, the store).
pub async fn blocking<T: Send + 'static>(
    op: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Task {
            op: op.to_string(),
            message: e.to_string(),
        })?
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn recorder() -> (Arc<Mutex<Vec<String>>>, impl Fn(&str) -> Compensation) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = Arc::clone(&log);
        let make = move |name: &str| -> Compensation {
            let (l, name) = (Arc::clone(&l), name.to_string());
            Box::new(move || {
                l.lock().unwrap().push(name.clone());
                if name.starts_with("fail") {
                    Err(Error::InvalidRequest(name))
                } else {
                    Ok(())
                }
            })
        };
        (log, make)
    }

    #[tokio::test]
    async fn rollback_runs_every_compensation_newest_first() {
        let (log, make) = recorder();
        let mut txn = Txn::new("op");
        txn.on_undo("a", make("a"));
        txn.on_undo("fail-b", make("fail-b"));
        txn.on_undo("c", make("c"));
        assert_eq!(txn.pending(), vec!["a", "fail-b", "c"]);
        let r: Result<()> = txn.finish(Err(Error::InvalidRequest("boom".into()))).await;
        assert!(r.is_err());
        // A failing compensation does not stop the ones before it.
        assert_eq!(*log.lock().unwrap(), vec!["c", "fail-b", "a"]);
    }

    #[tokio::test]
    async fn commit_forgets_compensations() {
        let (log, make) = recorder();
        let mut txn = Txn::new("op");
        txn.on_undo("a", make("a"));
        assert_eq!(txn.finish(Ok(7)).await.unwrap(), 7);
        assert!(log.lock().unwrap().is_empty());
    }

    #[test]
    fn dropped_transaction_rolls_back() {
        let (log, make) = recorder();
        {
            let mut txn = Txn::new("op");
            txn.on_undo("a", make("a"));
            txn.on_undo("b", make("b"));
        }
        for _ in 0..200 {
            if log.lock().unwrap().len() == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(*log.lock().unwrap(), vec!["b", "a"]);
    }
}
