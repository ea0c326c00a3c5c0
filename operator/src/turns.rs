//! Turns to reconcile: at most so many at once, handed out in the order asked, those a user
//! waits on (a new or changed spec, a deletion) before the periodic resyncs. After a restart of
//! a thousand pipelines every one is due at once; a pipeline created meanwhile is then next, not
//! somewhere in a queue of resyncs, and no resync waits behind others for ever.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

#[derive(Debug)]
pub struct Turns {
    limit: usize,
    queue: Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    taken: usize,
    /// Shutting down: no more turns.
    closed: bool,
    urgent: VecDeque<oneshot::Sender<()>>,
    routine: VecDeque<oneshot::Sender<()>>,
}

/// A turn held: the next waiting reconcile gets it when this is dropped.
#[derive(Debug)]
pub struct Turn(Arc<Turns>);

impl Turns {
    /// At most `limit` turns at once (at least one).
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { limit: limit.max(1), queue: Mutex::default() })
    }

    /// Waits for a turn: after the urgent ones asked before, and, unless `urgent`, after every
    /// urgent one waiting. `None` once closed.
    pub async fn take(self: &Arc<Self>, urgent: bool) -> Option<Turn> {
        let receiver = {
            let mut queue = self.lock();
            if queue.closed {
                return None;
            }
            if queue.taken < self.limit {
                queue.taken += 1;
                return Some(Turn(self.clone()));
            }
            let (sender, receiver) = oneshot::channel();
            if urgent {
                queue.urgent.push_back(sender)
            } else {
                queue.routine.push_back(sender)
            }
            receiver
        };
        let mut waiting = Waiting { turns: self.clone(), receiver, served: false };
        // A turn handed over is counted as taken already; a sender dropped unsent is the close.
        (&mut waiting.receiver).await.ok()?;
        waiting.served = true;
        Some(Turn(self.clone()))
    }

    /// Hands out no more turns, and sends every reconcile still waiting for one away: a shutdown
    /// waits for the reconciles under way, not for the whole queue behind them.
    pub fn close(&self) {
        let mut queue = self.lock();
        queue.closed = true;
        queue.urgent.clear();
        queue.routine.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().expect("no panics while holding the lock")
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut queue = self.0.lock();
        while let Some(next) = queue.urgent.pop_front().or_else(|| queue.routine.pop_front()) {
            // A waiter that gave up (its reconcile was dropped) refuses; the next one gets it.
            if next.send(()).is_ok() {
                return;
            }
        }
        queue.taken -= 1;
    }
}

/// A reconcile waiting for its turn; dropped before it got one, it gives up its place, and
/// passes on a turn handed to it in the meantime.
struct Waiting {
    turns: Arc<Turns>,
    receiver: oneshot::Receiver<()>,
    served: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.served {
            return;
        }
        self.receiver.close();
        if self.receiver.try_recv().is_ok() {
            drop(Turn(self.turns.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;
    use std::time::Duration;

    use super::*;

    /// Starts a task that takes a turn, notes its name, and holds the turn until `release`.
    fn queue_up(
        turns: &Arc<Turns>,
        name: &'static str,
        urgent: bool,
        order: &Arc<StdMutex<Vec<&'static str>>>,
    ) -> (tokio::task::JoinHandle<()>, oneshot::Sender<()>) {
        let (release, released) = oneshot::channel::<()>();
        let (turns, order) = (turns.clone(), order.clone());
        let task = tokio::spawn(async move {
            let _turn = turns.take(urgent).await.expect("open");
            order.lock().unwrap().push(name);
            let _ = released.await;
        });
        (task, release)
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_reconciles_go_in_order_asked_with_users_changes_first() {
        let turns = Turns::new(2);
        let order = Arc::new(StdMutex::new(Vec::new()));
        let mut releases = Vec::new();
        for (name, urgent) in [("a", false), ("b", false), ("resync 1", false), ("resync 2", false), ("new", true), ("resync 3", false)] {
            let (_, release) = queue_up(&turns, name, urgent, &order);
            releases.push(release);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(*order.lock().unwrap(), ["a", "b"], "two at once");
        for release in releases {
            let _ = release.send(());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(*order.lock().unwrap(), ["a", "b", "new", "resync 1", "resync 2", "resync 3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconcile_dropped_while_waiting_leaves_no_turn_behind() {
        let turns = Turns::new(1);
        let order = Arc::new(StdMutex::new(Vec::new()));
        let (_, release_first) = queue_up(&turns, "first", false, &order);
        tokio::time::sleep(Duration::from_millis(1)).await;
        let (dropped, _keep) = queue_up(&turns, "dropped", true, &order);
        let (_, release_last) = queue_up(&turns, "last", false, &order);
        tokio::time::sleep(Duration::from_millis(1)).await;
        dropped.abort();
        let _ = release_first.send(());
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(*order.lock().unwrap(), ["first", "last"]);
        let _ = release_last.send(());
        tokio::time::sleep(Duration::from_millis(1)).await;
        let again = tokio::time::timeout(Duration::from_secs(1), turns.take(false)).await;
        let _again = again.expect("every turn came back").expect("open");
        assert_eq!(turns.lock().taken, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_waits_for_the_reconciles_under_way_not_for_the_queue() {
        let turns = Turns::new(1);
        let running = turns.take(false).await.expect("open");
        let queued = tokio::spawn({
            let turns = turns.clone();
            async move { turns.take(true).await.is_some() }
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        turns.close();
        assert!(!queued.await.unwrap(), "sent away without a turn");
        assert!(turns.take(true).await.is_none(), "no turn after the close");
        drop(running);
        assert_eq!(turns.lock().taken, 0);
    }
}
