//! The handle each per-network service (DHCP, DNS, router advertisements, TFTP) keeps on
//! its tokio task: [`ServiceTask::stop`] asks the task to finish and waits for it, so a
//! stopped network's sockets are closed when the stop returns; dropping the handle (the
//! daemon exiting while networks keep running) aborts the task.

use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running service task of one network.
#[derive(Debug)]
pub struct ServiceTask {
    network: String,
    /// What runs, for logs: "DHCP server", "router advertisements", ...
    service: &'static str,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ServiceTask {
    /// Spawns `serve` on `runtime`, handing it the receiver that says when to stop.
    pub fn spawn<F>(
        runtime: &Handle,
        network: String,
        service: &'static str,
        serve: impl FnOnce(oneshot::Receiver<()>) -> F,
    ) -> ServiceTask
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (shutdown, shutdown_rx) = oneshot::channel();
        let task = runtime.spawn(serve(shutdown_rx));
        ServiceTask {
            network,
            service,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// The network the service belongs to.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// Asks the task to finish and waits until it has.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::error!(network = %self.network, error = %e, "{} task failed", self.service);
        }
        tracing::info!(network = %self.network, "{} stopped", self.service);
    }
}

impl Drop for ServiceTask {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// How long a network service pauses after its socket fails: an error that stays (out
/// of descriptors) would otherwise be polled again at once, for ever.
pub const SOCKET_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The wall clock as Unix seconds, the time base of leases.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Locks the state a service shares with the daemon. A panic while it was held is
/// not a reason to stop serving: every change to it is made whole or not at all.
pub fn lock<T>(state: &Mutex<T>) -> MutexGuard<'_, T> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_waits_for_the_task_and_drop_aborts_it() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let handle = runtime.handle().clone();
        runtime.block_on(async {
            let (done_tx, done_rx) = oneshot::channel();
            let service = ServiceTask::spawn(&handle, "n".into(), "test service", |stop| async {
                let _ = stop.await;
                let _ = done_tx.send(());
            });
            service.stop().await;
            assert!(done_rx.await.is_ok(), "the task did not run to its end");

            let (never_tx, never_rx) = oneshot::channel::<()>();
            let service = ServiceTask::spawn(&handle, "n".into(), "test service", |_stop| async {
                std::future::pending::<()>().await;
                let _ = never_tx.send(());
            });
            drop(service);
            assert!(never_rx.await.is_err(), "the aborted task kept running");
        });
    }
}
