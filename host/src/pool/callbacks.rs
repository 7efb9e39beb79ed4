//! The queue between the supervisor and the callback thread. The
//! supervisor hands over the callbacks of one turn of its event loop
//! together (`then` callbacks of results, progress hooks), so the callback
//! thread wakes once per turn, not once per job (issue 26: a wake-up per
//! job, and the spinning a channel's blocking receive does before it
//! sleeps, were a tenth of a Celery worker's CPU). The thread sleeps on a
//! condition variable, woken only when it waits.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// A callback to run off the supervisor thread.
pub type CallbackJob = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct State {
    jobs: Vec<CallbackJob>,
    /// The callback thread sleeps (or is about to): a hand-over wakes it.
    waiting: bool,
    /// The sender is gone: the thread ends once the queue is empty.
    closed: bool,
}

#[derive(Default)]
struct Queue {
    state: Mutex<State>,
    cv: Condvar,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The supervisor's end; dropping it ends the callback thread (after the
/// callbacks handed over).
pub struct CallbackSender(Arc<Queue>);

/// The callback thread's end.
pub struct CallbackReceiver(Arc<Queue>);

/// A connected pair.
pub fn queue() -> (CallbackSender, CallbackReceiver) {
    let q = Arc::new(Queue::default());
    (CallbackSender(q.clone()), CallbackReceiver(q))
}

impl CallbackSender {
    /// Hands `jobs` over in order (and leaves `jobs` empty, its capacity
    /// kept); wakes the thread only if it sleeps.
    pub fn send_all(&self, jobs: &mut Vec<CallbackJob>) {
        if jobs.is_empty() {
            return;
        }
        let mut st = self.0.lock();
        if st.jobs.is_empty() {
            std::mem::swap(&mut st.jobs, jobs);
        } else {
            st.jobs.append(jobs);
        }
        let wake = std::mem::take(&mut st.waiting);
        drop(st);
        if wake {
            self.0.cv.notify_one();
        }
    }
}

impl Drop for CallbackSender {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.cv.notify_one();
    }
}

impl CallbackReceiver {
    /// Waits for callbacks and moves every one handed over into `into`
    /// (empty on the call); false once the sender is gone and nothing is
    /// left.
    pub fn recv_all(&self, into: &mut Vec<CallbackJob>) -> bool {
        let mut st = self.0.lock();
        loop {
            if !st.jobs.is_empty() {
                std::mem::swap(&mut st.jobs, into);
                return true;
            }
            if st.closed {
                return false;
            }
            st.waiting = true;
            st = self.0.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Runs every callback handed over until the sender is gone; a
    /// callback that panics is logged and the rest run.
    pub fn run(self) {
        let mut batch: Vec<CallbackJob> = Vec::new();
        while self.recv_all(&mut batch) {
            for job in batch.drain(..) {
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                    tracing::error!("a result callback panicked; the pool carries on");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counting(n: usize, seen: &Arc<Mutex<Vec<usize>>>) -> Vec<CallbackJob> {
        (0..n)
            .map(|i| {
                let seen = seen.clone();
                Box::new(move || seen.lock().unwrap_or_else(|e| e.into_inner()).push(i))
                    as CallbackJob
            })
            .collect()
    }

    #[test]
    fn a_turn_s_callbacks_arrive_together_and_in_order() {
        let (tx, rx) = queue();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut a = counting(3, &seen);
        tx.send_all(&mut a);
        assert!(a.is_empty());
        let mut b = counting(2, &seen);
        tx.send_all(&mut b);
        let mut got = Vec::new();
        assert!(rx.recv_all(&mut got));
        assert_eq!(
            got.len(),
            5,
            "two hand-overs before the thread looked: one batch"
        );
        for job in got.drain(..) {
            job();
        }
        assert_eq!(
            *seen.lock().unwrap_or_else(|e| e.into_inner()),
            [0, 1, 2, 0, 1]
        );
        drop(tx);
        assert!(
            !rx.recv_all(&mut got),
            "the sender is gone and nothing is left"
        );
    }

    #[test]
    fn callbacks_handed_over_before_the_sender_goes_still_run() {
        let (tx, rx) = queue();
        let ran = Arc::new(AtomicUsize::new(0));
        let thread = { std::thread::spawn(move || rx.run()) };
        for _ in 0..100 {
            let r = ran.clone();
            let mut jobs: Vec<CallbackJob> = vec![
                Box::new(move || {
                    r.fetch_add(1, Ordering::SeqCst);
                }),
                Box::new(|| panic!("a callback that panics")),
            ];
            tx.send_all(&mut jobs);
        }
        drop(tx);
        thread
            .join()
            .expect("the callback thread ends without panicking");
        assert_eq!(ran.load(Ordering::SeqCst), 100);
    }
}
