//! One worker per subject ([`BySubject`]): the consumed messages of a subject are handled one at a
//! time, in delivery order, while different subjects run side by side. The uplink (one user's
//! UpMessages) and the Tencent link (one user's sends) both keep their order this way.
//!
//! A worker ends as soon as its queue is empty, so an idle subject holds nothing; the next
//! message of that subject starts a new one. Emptiness is checked under the map's lock, so a
//! message is never queued to a worker that has just ended.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use async_nats::jetstream::Message;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

type Queues = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Message>>>>;

/// The queues of the subjects that have a worker running, and the tracker the workers run on.
/// Cheap to clone.
#[derive(Clone)]
pub struct BySubject {
    queues: Queues,
    tracker: TaskTracker,
}

/// A worker's messages, in delivery order ([`Queue::pop`]).
pub struct Queue {
    subject: String,
    rx: mpsc::UnboundedReceiver<Message>,
    queues: Queues,
}

impl BySubject {
    pub fn new(tracker: TaskTracker) -> Self {
        BySubject {
            queues: Arc::new(Mutex::new(HashMap::new())),
            tracker,
        }
    }

    /// Queues `msg` behind the earlier messages of its subject; when the subject has no worker,
    /// starts one on the tracker: `work(queue)`, which should handle [`Queue::pop`] until `None`.
    pub fn dispatch<F, Fut>(&self, msg: Message, work: F)
    where
        F: FnOnce(Queue) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let subject = msg.subject.to_string();
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let msg = match queues.get(&subject) {
            Some(tx) => match tx.send(msg) {
                Ok(()) => return,
                // The worker ended (it found its queue empty, or stopped): start another.
                Err(mpsc::error::SendError(msg)) => msg,
            },
            None => msg,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        // The receiver is alive: it goes to the worker below.
        let _ = tx.send(msg);
        queues.insert(subject.clone(), tx);
        let queue = Queue {
            subject,
            rx,
            queues: self.queues.clone(),
        };
        self.tracker.spawn(work(queue));
    }
}

impl Queue {
    /// The subject this worker serves.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The next message of the subject; `None` once the queue is empty, and the worker is then
    /// forgotten (the subject's next message starts a new one).
    pub fn pop(&mut self) -> Option<Message> {
        loop {
            match self.rx.try_recv() {
                Ok(m) => return Some(m),
                Err(mpsc::error::TryRecvError::Disconnected) => return None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
                    if self.rx.is_empty() {
                        queues.remove(&self.subject);
                        return None;
                    }
                }
            }
        }
    }
}
